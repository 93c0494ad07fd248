"""Caption normalisation and the word tokenizer (real corpora round trip)."""

import csv

import numpy as np
import pytest
import toy_dataset
from corpora import corpora_dir

from aac_jax.data import sources, text, tokenizer
from aac_jax.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Tokenizer
from configs import base


def _corpus_captions() -> dict[str, list[str]]:
  """Every caption of the six real CSVs, by file."""
  root = corpora_dir()
  captions = {}
  for path in sorted(root.glob('*/*.csv')):
    with open(path, encoding='utf-8', newline='') as f:
      rows = list(csv.DictReader(f))
    columns = [c for c in rows[0] if c == 'caption' or c.startswith('caption_')]
    captions[path.name] = [row[c] for row in rows for c in columns]
  return captions


@pytest.mark.parametrize(
  ('raw', 'expected'),
  [
    ('A dog barks, then  a man SPEAKS.', 'a dog barks then a man speaks'),
    ("A man’s voice and a dog's bark", 'a mans voice and a dogs bark'),
    ('High-pitched "beeps"; (loud)!', 'high pitched beeps loud'),
    ('  \t\r\n ', ''),
    ('Tap_water / 3 drops?', 'tap water 3 drops'),
  ],
)
def test_normalize_caption(raw, expected):
  assert text.normalize_caption(raw) == expected


def test_round_trip_on_every_real_caption():
  by_file = _corpus_captions()
  assert len(by_file) == 6, sorted(by_file)
  captions = [c for caps in by_file.values() for c in caps]
  # 49,838 + 2,475 + 4,875 AudioCaps rows, 3 x 5 x Clotho clips.
  assert len(captions) == 49838 + 2475 + 4875 + 5 * (3839 + 1045 + 1045)
  tok = Tokenizer.build(captions, min_count=1)
  failures = []
  for caption in captions:
    ids = tok.encode(caption)
    if UNK_ID in ids or tok.decode(ids) != text.normalize_caption(caption):
      failures.append(caption)
  assert not failures, f'{len(failures)} captions do not round-trip, e.g. {failures[:3]}'
  # The real vocabulary has no stray punctuation or empty tokens.
  words = tok.tokens[4:]
  assert all(w and w == text.normalize_caption(w) for w in words)


def test_min_count_on_real_corpus():
  captions = _corpus_captions()['train.csv']
  counts = {}
  for caption in captions:
    for word in text.caption_words(caption):
      counts[word] = counts.get(word, 0) + 1
  tok = Tokenizer.build(captions, min_count=5)
  assert tok.vocab_size == 4 + sum(c >= 5 for c in counts.values())
  rare = sorted(w for w, c in counts.items() if c == 4)[0]
  common = max(counts, key=counts.get)
  assert tok.encode(f'{common} {rare}') == [4, UNK_ID]


def test_build_orders_by_count_then_word_and_maps_unknown_to_unk():
  tok = Tokenizer.build(['b a c', 'A b.', 'b d', 'zz'], min_count=2)
  assert tok.tokens == ['<pad>', '<bos>', '<eos>', '<unk>', 'b', 'a']
  assert (PAD_ID, BOS_ID, EOS_ID, UNK_ID) == (0, 1, 2, 3)
  assert tok.encode('B, c a zz!') == [4, UNK_ID, 5, UNK_ID]
  assert tok.decode([4, UNK_ID, 5]) == 'b <unk> a'


def test_decode_stops_at_eos_and_skips_pad_and_bos():
  tok = Tokenizer.build(['one two three'])
  one, two, three = tok.encode('one two three')
  assert tok.decode([BOS_ID, one, PAD_ID, two, EOS_ID, three]) == 'one two'


def test_save_load_round_trip(tmp_path):
  tok = Tokenizer.build(['a dog barks', 'the dog runs', 'dog'])
  path = tmp_path / 'sub' / 'vocab.txt'
  tok.save(path)
  assert path.read_text().splitlines() == tok.tokens
  loaded = Tokenizer.load(path)
  assert loaded.tokens == tok.tokens
  assert loaded.encode('a dog runs') == tok.encode('a dog runs')


def test_load_rejects_a_file_without_specials(tmp_path):
  path = tmp_path / 'vocab.txt'
  path.write_text('dog\ncat\n')
  with pytest.raises(ValueError, match='must start with'):
    Tokenizer.load(path)


def test_encode_targets_truncates_and_keeps_eos():
  tok = Tokenizer.build(['w1 w2 w3 w4 w5'])
  ids = tok.encode('w1 w2 w3 w4 w5')
  np.testing.assert_array_equal(tok.encode_targets('w1 w2', 5), ids[:2] + [EOS_ID, PAD_ID, PAD_ID])
  long = tok.encode_targets('w1 w2 w3 w4 w5', 4)
  np.testing.assert_array_equal(long, ids[:3] + [EOS_ID])
  assert long.dtype == np.int32
  np.testing.assert_array_equal(tok.encode_targets('', 3), [EOS_ID, PAD_ID, PAD_ID])


def test_shift_right():
  targets = np.array([[5, 6, EOS_ID, PAD_ID], [7, 8, 9, EOS_ID]], np.int32)
  expected = [[BOS_ID, 5, 6, EOS_ID], [BOS_ID, 7, 8, 9]]
  np.testing.assert_array_equal(tokenizer.shift_right(targets), expected)


def test_load_or_build_builds_once_and_saves_beside_data_and_run(tmp_path):
  data_dir = tmp_path / 'data'
  toy_dataset.build_toy_dataset(str(data_dir), splits={'train': 6, 'validation': 2})
  cfg = base.get_dataset_config()
  cfg.name, cfg.data_dir, cfg.vocab_min_count = toy_dataset.NAME, str(data_dir), 2
  workdir = tmp_path / 'run'
  source = sources.open_source(cfg, 'train')
  tok = tokenizer.load_or_build(cfg, source, str(workdir))
  captions = sources.load_split_captions(cfg, 'train')
  assert tok.tokens == Tokenizer.build(captions, 2).tokens
  (data_copy,) = data_dir.glob('toy_aac/plain/*/vocab_train_min2.txt')
  assert Tokenizer.load(data_copy).tokens == tok.tokens
  assert Tokenizer.load(workdir / 'vocab.txt').tokens == tok.tokens
  # A run keeps its own vocabulary even if the data-side copy changes.
  Tokenizer.build(['other words']).save(data_copy)
  assert tokenizer.load_or_build(cfg, source, str(workdir)).tokens == tok.tokens
  assert tokenizer.load_or_build(cfg, source).tokens == Tokenizer.build(['other words']).tokens
