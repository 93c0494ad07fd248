"""PTB tokenization as done by coco-caption before scoring, in pure Python.

pycocoevalcap 1.2 runs ``java -cp stanford-corenlp-3.4.1.jar
edu.stanford.nlp.process.PTBTokenizer -preserveLines -lowerCase`` over all
captions (one per line) and then drops the punctuation tokens listed in
`PUNCTUATION`. This module reproduces that output without Java.

The CoreNLP tokenizer is a JFlex lexer: at each position the rule with the
longest match wins (a rule's trailing context counts towards its length),
ties go to the earlier rule, and some rules give characters back
("pushback"). `_scan` emulates that over the rule table in
`ptb_rules.py`, whose patterns were written from the observed behaviour of
the 3.4.1 jar (checked token for token against the jar on every caption of
AudioCaps and Clotho and on a set of edge cases in
`tests/test_metrics_ptb.py`). Most captions contain only letters, spaces,
hyphens, commas and full stops; `_plain_words` spots those and takes
their words directly.

Two deliberate differences from running the jar over a file:
- Each caption is tokenized on its own, as if the next line were empty.
  Over a file, the jar looks past the end of a line in two cases that
  change the scored words: a caption ending in a single letter and a full
  stop ("... plan B.") loses the stop ("b") when the next caption starts
  with one of some 50 capitalised words ("A", "The", ...), and "no.",
  "fig." and the like keep theirs before a line starting with a digit.
  Both depend on the neighbouring caption; here neither applies ("plan
  B." gives "b.", and "fig." followed by nothing gives "fig").
- Line breaks inside a caption (``\\r``, U+2028, ...) are treated as spaces;
  the jar would emit a line break and shift every later caption by one.
"""

import functools
import itertools
import re
from collections.abc import Iterable, Sequence

import numpy as np

from aac_jax.metrics import ptb_rules

# Tokens removed by pycocoevalcap after tokenization. The bracket names are
# upper case here but the lowered output has "-lrb-", so those never match.
PUNCTUATION = frozenset(
  ["''", "'", '``', '`', '-LRB-', '-RRB-', '-LCB-', '-RCB-']
  + ['.', '?', '!', ',', ':', '-', '--', '...', ';']
)

_LINE_BREAKS = re.compile('\r\n|[\r\n\u2028\u2029\u000b\u000c\u0085]')
# Plain captions: words of letters (inner hyphens allowed), each possibly
# followed by one comma or full stop, and free-standing commas and full
# stops, separated by spaces. Free-standing ones always give punctuation
# tokens, however the jar groups them. Checked as: only these characters,
# then none of the patterns that break the shape.
_PLAIN_CHARS = re.compile(r'[A-Za-z ,.\-]*')
_LOOSE_HYPHEN = re.compile(r'(?:^|[^A-Za-z])-|-(?:[^A-Za-z]|$)')
# Words the lexer splits ("cannot" -> "can" "not"): left to the scanner.
_SPLIT_WORDS = frozenset(['cannot', 'gonna', 'gotta', 'lemme', 'gimme', 'wanna'])
_LETTERS_BEFORE_SPACE = re.compile(r'[A-Za-z]+(?=[ \n])')


def _plain_words(text: str) -> str | None:
  """The tokenized caption where `text` needs no scanner, else None.

  Args:
    text: one caption.

  Returns:
    Its lower-cased words joined by spaces where `text` is plain (see
    above), no word glued to a full stop may be an abbreviation and no word
    is one the lexer splits; None otherwise.
  """
  if not _PLAIN_CHARS.fullmatch(text):
    return None
  # Commas and full stops must end a word or stand alone: followed by a
  # space or the end (a run like "word.," may keep its period in a token).
  core = text.replace(', ', ' ').replace('. ', ' ')
  if core[-1:] in (',', '.'):
    core = core[:-1]
  if ',' in core or '.' in core:
    return None
  if '-' in text and _LOOSE_HYPHEN.search(text):
    return None
  period = text.find('.')
  while period >= 0:
    if period and text[period - 1] not in ' ,.':
      if ptb_rules.may_abbreviate(text[text.rfind(' ', 0, period) + 1 : period]):
        return None
    period = text.find('.', period + 1)
  words = text.lower().replace(',', ' ').replace('.', ' ').split()
  if not _SPLIT_WORDS.isdisjoint(words):
    return None
  return ' '.join(words)


def _scan(text: str) -> list[str]:
  """Runs the emulated lexer over one caption.

  Args:
    text: one caption without line breaks.

  Returns:
    The raw PTB tokens (not lower-cased).
  """
  tokens = []
  pos, end = 0, len(text)
  # Over a file, the jar sees the line break and the next line after a
  # caption: two virtual line breaks stand for them (trailing context only).
  text += '\n\n'
  while pos < end:
    if text[pos] == ' ':
      pos += 1
      continue
    # Shortcut: a run of letters before a space is one token (no rule gives
    # it another unless the lexer splits it, like "cannot").
    word = _LETTERS_BEFORE_SPACE.match(text, pos)
    if word is not None and word.group().lower() not in _SPLIT_WORDS:
      tokens.append(word.group())
      pos = word.end()
      continue
    best_len, best_rule, best_match = 0, None, None
    for rule in ptb_rules.candidates(text[pos]):
      match = rule.pattern.match(text, pos)
      if match is not None and match.end() - pos > best_len:
        best_len, best_rule, best_match = match.end() - pos, rule, match
    if best_rule is None:  # Untokenizable character: the jar deletes it.
      pos += 1
      continue
    token, consumed = best_rule.action(best_match.group('tok'))
    if token is not None:
      tokens.append(token)
    pos += consumed
  return tokens


def ptb_tokens(text: str) -> list[str]:
  """Tokenizes one caption like the CoreNLP 3.4.1 PTBTokenizer.

  Always runs the scanner (`tokenize_caption` skips it for plain captions).

  Args:
    text: a raw caption.

  Returns:
    Lower-cased PTB tokens, punctuation included.
  """
  return [t.lower() for t in _scan(_LINE_BREAKS.sub(' ', text))]


@functools.lru_cache(maxsize=1 << 17)
def tokenize_caption(text: str) -> str:
  """Gives the string pycocoevalcap scores for one caption.

  Args:
    text: a raw caption.

  Returns:
    The lower-cased PTB tokens without punctuation, joined by single spaces
    (tokens may contain U+00A0, as the jar's do).
  """
  words = _plain_words(text)
  if words is not None:
    return words
  tokens = (t.lower() for t in _scan(_LINE_BREAKS.sub(' ', text)))
  return ' '.join(t for t in tokens if t not in PUNCTUATION)


# Batch shortcut over many captions joined by line breaks: lines with only
# letters, spaces, commas and full stops, checked with numpy over the code
# points of all lines at once.
_PLAIN_OR_BREAK = np.zeros(128, bool)  # [A-Za-z ,.\n]
for _c in 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz ,.\n':
  _PLAIN_OR_BREAK[ord(_c)] = True
_SPACE, _BREAK, _COMMA, _STOP = (ord(c) for c in ' \n,.')


def _code_points(text: str) -> np.ndarray:
  """uint32 [len(text)]: index i is `ord(text[i])`."""
  return np.frombuffer(text.encode('utf-32-le', 'surrogatepass'), np.uint32)


def _abbreviation_positions(joined: str, chars: np.ndarray) -> list[int]:
  """Positions of full stops glued to a word that may be an abbreviation."""
  stops = np.flatnonzero(chars == _STOP)
  stops = stops[stops > 0]
  before = chars[stops - 1]
  stops = stops[(before != _SPACE) & (before != _BREAK) & (before != _STOP)]
  if not len(stops):
    return []
  # The word before each: from the last space, line break or full stop on.
  bounds = np.flatnonzero((chars == _SPACE) | (chars == _BREAK) | (chars == _STOP))
  at = np.searchsorted(bounds, stops) - 1
  starts = np.where(at >= 0, bounds[np.maximum(at, 0)] + 1, 0)
  tails = [joined[a:b] for a, b in zip(starts.tolist(), stops.tolist(), strict=True)]
  abbreviating = {t for t in set(tails) if ptb_rules.may_abbreviate(t)}
  if not abbreviating:
    return []
  return [int(s) for t, s in zip(tails, stops, strict=True) if t in abbreviating]


def _split_word_positions(lower: str) -> list[int]:
  """Positions of words the lexer splits (as substrings: may over-report)."""
  out = []
  for word in _SPLIT_WORDS:
    at = lower.find(word)
    while at >= 0:
      out.append(at)
      at = lower.find(word, at + 1)
  return out


def _line_of(text: str, chars: np.ndarray | None, positions) -> np.ndarray:
  """Line index of each position of `text` (`chars`: its code points, if at hand)."""
  chars = _code_points(text) if chars is None else chars
  return np.searchsorted(np.flatnonzero(chars == _BREAK), positions)


def _plain_lines(texts: list[str]) -> list[str | None]:
  """`_plain_words` of many captions at once (None: needs the scanner)."""
  joined = '\n'.join(texts)
  if joined.count('\n') != len(texts) - 1:  # A caption holds a line break.
    return [_plain_words(t) for t in texts]
  chars = _code_points(joined)
  other = (chars > 127) | ~_PLAIN_OR_BREAK[np.minimum(chars, 127)]
  # A comma or full stop followed by anything but a space or the line's end.
  punct = (chars[:-1] == _COMMA) | (chars[:-1] == _STOP)
  glued = punct & (chars[1:] != _SPACE) & (chars[1:] != _BREAK)
  bad = np.concatenate([np.flatnonzero(other), np.flatnonzero(glued)])
  bad = np.append(bad, _abbreviation_positions(joined, chars)).astype(np.int64)
  lines = set(_line_of(joined, chars, bad).tolist())
  lower = joined.lower()
  bad_lower = _split_word_positions(lower)
  if bad_lower:  # Lower-casing may change lengths outside ASCII.
    same = len(lower) == len(joined)
    lines.update(_line_of(lower, chars if same else None, bad_lower).tolist())
  # In plain lines every comma and full stop comes before a space or a line's
  # end: drop them there, then collapse runs of spaces and trim each line.
  words = lower.replace(', ', ' ').replace('. ', ' ').replace(',\n', '\n').replace('.\n', '\n')
  words = words[:-1] if words[-1:] in (',', '.') else words
  while '  ' in words:
    words = words.replace('  ', ' ')
  if ' \n' in words:
    words = words.replace(' \n', '\n')
  if '\n ' in words:
    words = words.replace('\n ', '\n')
  out = words.strip(' ').split('\n')
  for line in lines:
    out[line] = None
  return out


def tokenize_captions(texts: Iterable[str]) -> list[str]:
  """Applies `tokenize_caption` to many captions (faster than one by one).

  Args:
    texts: raw captions.

  Returns:
    One tokenized string per caption.
  """
  texts = list(texts)
  if not texts:
    return []
  plain = _plain_lines(texts)
  return [tokenize_caption(t) if p is None else p for t, p in zip(texts, plain, strict=True)]


def tokenize_references(references: Sequence[Sequence[str]]) -> list[list[str]]:
  """Tokenizes the references of many clips.

  Args:
    references: per clip, its raw reference captions.

  Returns:
    The same nesting with tokenized strings.
  """
  flat = tokenize_captions([r for refs in references for r in refs])
  ends = list(itertools.accumulate(map(len, references)))
  return [flat[end - len(refs) : end] for refs, end in zip(references, ends, strict=True)]
