"""The Python PTB step against the CoreNLP 3.4.1 jar that pycocoevalcap runs.

The jar tests need Java and pycocoevalcap (the `eval`/`test` extra) and skip
without them; `test_known_tokenizations` needs neither.
"""

import csv
import importlib.util
import pathlib
import shutil
import subprocess

import pytest
from corpora import corpora_dir

from aac_jax.metrics import ptb_tokenizer

CORPUS_FILES = (
  'audiocaps/train.csv',
  'audiocaps/val.csv',
  'audiocaps/test.csv',
  'clotho/clotho_captions_development.csv',
  'clotho/clotho_captions_validation.csv',
  'clotho/clotho_captions_evaluation.csv',
)

# Hard cases, each checked token for token against the jar.
EDGE_CASES = [
  "Don't can't won't I'm you're they've we'll he'd it's dogs' ain't cannot gonna wanna",
  'don’t can’t it’s a dog’s bark ’90s ‘single’ “double” «guillemets» „low”',
  "He said \"hello.\" She said 'bye'. \"Yes,\" he said. 'A dog' 'I'",
  '( a ) (a) a(b) [a] {a} <a> < a > a<b <b>bold</b> <br/> -LRB- -lrb-',
  'well-known state-of-the-art x-ray a-b- -a a--b --- ---- ----- – — pro- anti-',
  '1,000,000 1.5 .5 3.14 -5 +5 10% 1/2 3 1/2 ½ ¾ 12:30 1990s 2nd 9-11 $5 US$5 € £ ¢ #1',
  '555-1234 (555) 555-1234 100 200 3000 1.2.3.4 12-12-2012',
  'wait... wait.. wait. . . wait .... ellipsis…end a...b a..b a....b . . . . . . .',
  'R&B AT&T at&t Tom & Jerry &amp; &lt; &gt; &quot; &nbsp; A+B a+b',
  'and/or a/b/c a / b // http://x.com/a?b www.google.com foo.org a@b.c foo@bar',
  'café naïve Zürich São Paulo ﬁne Ελληνικά ΣΑΣ русский 中文 İstanbul e\u0301x 😀',
  'etc. The U.S. The U.S. army e.g. i.e. Mr. Smith vs. No. 5 fig. 3 a.m. p.a. system Inc.',
  'plan a. plan B. I. the end a. b Jan.X_X So. Africa',
  "o'clock O'Neil y'all rock'n'roll 'em 'til c'mon o`O l'eau",
  ':) :-) ;) :( :D :P ^_^ x_x <3 <<a >> @user #tag #tag1 c++ C# file.wav 1f.txt',
  'hello!? what?! wow!!! huh?? * ** a*b \\ | ~ ^ = == _ __ %',
  'tab\tsep  double  space ',
  '',
  '   ',
  '.',
  '- - -',
]


def _corpus_captions() -> list[str]:
  root = corpora_dir()
  captions = []
  for name in CORPUS_FILES:
    with open(root / name, encoding='utf-8', newline='') as f:
      for row in csv.DictReader(f):
        captions += [v for k, v in row.items() if k.startswith('caption')]
  return captions


def _tokenizer_jar() -> pathlib.Path:
  spec = importlib.util.find_spec('pycocoevalcap')
  if spec is None or shutil.which('java') is None:
    pytest.skip('needs Java and pycocoevalcap (pip install "aac_jax[eval]")')
  folder = pathlib.Path(next(iter(spec.submodule_search_locations)))
  return folder / 'tokenizer' / 'stanford-corenlp-3.4.1.jar'


def _java_raw_tokens(captions: list[str], tmp_path: pathlib.Path) -> list[str]:
  """The jar's raw output lines, one java call, as pycocoevalcap runs it."""
  jar = _tokenizer_jar()
  path = tmp_path / 'captions.txt'
  path.write_bytes('\n'.join(c.replace('\n', ' ') for c in captions).encode())
  command = ['java', '-cp', str(jar), 'edu.stanford.nlp.process.PTBTokenizer']
  out = subprocess.run(
    command + ['-preserveLines', '-lowerCase', str(path)], capture_output=True, check=True
  )
  return out.stdout.decode().split('\n')


def _pycocoevalcap_tokenize(captions: list[str]) -> list[str]:
  """pycocoevalcap's own PTBTokenizer (Java), one image holding every caption."""
  _tokenizer_jar()
  from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

  return PTBTokenizer().tokenize({0: [{'caption': c} for c in captions]})[0]


def test_every_corpus_caption_matches_pycocoevalcap():
  captions = _corpus_captions()
  assert len(captions) == 86833
  expected = _pycocoevalcap_tokenize(captions)
  ptb_tokenizer.tokenize_caption.cache_clear()
  ours = ptb_tokenizer.tokenize_captions(captions)
  bad = [(c, e, o) for c, e, o in zip(captions, expected, ours, strict=True) if e != o]
  assert not bad, f'{len(bad)} captions differ, e.g. {bad[:3]}'


def test_scanner_raw_tokens_match_jar(tmp_path):
  """The scanner itself, punctuation included, on captions it must handle."""
  captions = _corpus_captions()
  unusual = [c for c in captions if ptb_tokenizer._plain_words(c) is None]
  sample = unusual + captions[::40]
  java = _java_raw_tokens(sample, tmp_path)
  bad = [
    (c, j) for c, j in zip(sample, java, strict=False) if ' '.join(ptb_tokenizer.ptb_tokens(c)) != j
  ]
  assert len(unusual) > 300
  assert not bad, f'{len(bad)} of {len(sample)} differ, e.g. {bad[:3]}'


def test_edge_cases_match_pycocoevalcap():
  # Each case is followed by a line starting with a capital, as captions are.
  from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

  _tokenizer_jar()
  lines = [line for case in EDGE_CASES for line in (case, 'A dog.')]
  expected = PTBTokenizer().tokenize({i: [{'caption': c}] for i, c in enumerate(lines)})
  for i, caption in enumerate(EDGE_CASES):
    assert ptb_tokenizer.tokenize_caption(caption) == expected[2 * i][0], caption


def test_edge_cases_raw_tokens_match_jar(tmp_path):
  lines = [line for case in EDGE_CASES for line in (case, 'A dog.')]
  java = _java_raw_tokens(lines, tmp_path)[::2]
  for caption, expected in zip(EDGE_CASES, java, strict=True):
    assert ' '.join(ptb_tokenizer.ptb_tokens(caption)) == expected.rstrip(), caption


@pytest.mark.parametrize(
  'caption, expected',
  [
    ("A dog's bark, it doesn't stop.", "a dog 's bark it does n't stop"),
    ('Birds (maybe crows) chirp -- loudly...', 'birds -lrb- maybe crows -rrb- chirp loudly'),
    ('A "quoted" word; a colon: here!', 'a quoted word a colon here'),
    ('I cannot go; gonna stay etc. The end.', 'i can not go gon na stay etc. the end'),
    ('It is a. Plan B. p.m. U.S. Army', 'it is a. plan b. p.m. u.s. army'),
    ('AT&T and R&B at 3 1/2 o’clock', 'at&t and r&b at 3\u00a01/2 o’clock'),
    ('clip-clop, ----- and -- and ---', 'clip-clop ----- and and'),
    ('', ''),
    ('Line\nbreak', 'line break'),
  ],
)
def test_known_tokenizations(caption, expected):
  assert ptb_tokenizer.tokenize_caption(caption) == expected


def test_plain_path_agrees_with_scanner():
  """The shortcut for plain captions gives what the scanner gives."""
  captions = _corpus_captions()[::5]
  for caption in captions:
    words = ptb_tokenizer._plain_words(caption)
    if words is not None:
      scanned = [t for t in ptb_tokenizer.ptb_tokens(caption) if t not in ptb_tokenizer.PUNCTUATION]
      assert words == ' '.join(scanned), caption


def test_batch_equals_one_by_one():
  """`tokenize_captions` (batch shortcut) equals `tokenize_caption` per caption."""
  captions = EDGE_CASES + _corpus_captions()[::50]
  captions += ['İİİİ x', 'we gonna go', 'Straße cannot. wait', 'no.\nline', 'a,b c', 'x.y z.']
  captions += ['plan a. b', 'etc. the end.', 'Mr. Smith speaks', 'it is vs. them', '.a b. c.']
  ptb_tokenizer.tokenize_caption.cache_clear()
  batch = ptb_tokenizer.tokenize_captions(captions)
  ptb_tokenizer.tokenize_caption.cache_clear()
  assert batch == [ptb_tokenizer.tokenize_caption(c) for c in captions]
  nested = ptb_tokenizer.tokenize_references([captions[:3], [], captions[3:5]])
  assert nested == [batch[:3], [], batch[3:5]]


def test_file_context_difference_is_as_documented():
  """docs/evaluation.md's example: the jar over a file drops "B."'s stop before "The"; we keep it."""
  _tokenizer_jar()
  from pycocoevalcap.cider.cider import Cider
  from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

  from aac_jax.metrics import compute_caption_metrics

  refs = [
    ['a man says the letter B.', 'The man speaks a letter.', 'someone says a letter'],
    ['a dog barks', 'The dog is barking.', 'a dog barks loudly'],
  ]
  preds = ['a man says the letter b', 'a dog barks']
  gts = PTBTokenizer().tokenize({i: [{'caption': r} for r in rs] for i, rs in enumerate(refs)})
  res = PTBTokenizer().tokenize({i: [{'caption': p}] for i, p in enumerate(preds)})
  assert gts[0][0] == 'a man says the letter b'
  assert ptb_tokenizer.tokenize_references(refs)[0][0] == 'a man says the letter b.'
  theirs = Cider().compute_score(gts, res)[0]
  ours = compute_caption_metrics(preds, refs).corpus['cider_d']
  print(f'CIDEr-D pycocoevalcap {theirs:.4f}, ours {ours:.4f}')
  assert ours < theirs
  # Caption by caption the jar agrees with us: only the neighbouring line matters.
  assert _pycocoevalcap_tokenize(['a man says the letter B.']) == ['a man says the letter b.']
