"""Reads generated captions back into events and scores them.

`parse_caption` turns a caption into event mentions (type, count, attribute
words, background flag) in the temporal order the caption states, using the
words of the grammar (lexicon.py): keywords name types; number words
('three beeps') and count adverbs ('rings twice', 'three times') give counts;
connectives separate mentions; 'after' / 'preceded by' reverse the order;
'in the background', 'over', 'constant', ... mark the background. Unknown
words are skipped, so word salad parses to whatever events it names.

`score_captions` compares the parsed mentions with the ground truth:
- event precision / recall / F1: mentions matched to events by type
  (multiset: the k-th mention of a type matches the k-th event of that type),
  micro-averaged over the corpus;
- order accuracy: over pairs of matched foreground events, the share that
  the caption puts in the right temporal order (1.0 when there are no pairs);
- count accuracy: the share of matched events with the right count (1.0 when
  nothing matched).
"""

import collections
import dataclasses
import functools
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from aac_jax.data.synthetic import lexicon as lex


@dataclasses.dataclass
class Mention:
  """An event as a caption mentions it."""

  type: str
  count: int = 1
  attributes: dict[str, str] = dataclasses.field(default_factory=dict)
  background: bool = False


@functools.cache
def _phrase_table() -> dict[tuple[str, ...], tuple[str, Any]]:
  """Maps word tuples to (kind, value); later entries win on clashes."""
  table: dict[tuple[str, ...], tuple[str, Any]] = {}

  def add(phrases, kind, value=None):
    for p in phrases:
      table[tuple(p.split())] = (kind, value)

  add(lex.DETERMINERS, 'det')
  add(lex.BOUNDARIES, 'boundary')
  add(('after that', 'after this', 'after which'), 'boundary')
  add(lex.REVERSING, 'reverse')
  add(lex.BACKGROUND_PREFIX, 'prefix')
  add(lex.BACKGROUND_MARKERS, 'marker')
  add(('in the background',), 'marker')
  for (attr, value), words in lex.ADJECTIVES.items():
    add(words, 'adjective', (attr, value))
  for (attr, value), words in lex.ADVERBS.items():
    add(words, 'adverb', (attr, value))
  for value, words in lex.REPETITION_ADVERBS.items():
    add(words, 'adverb', ('duration', value))
  numbers = ('one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine')
  for n, word in enumerate(numbers, start=1):
    add((word, str(n)), 'count_before', n)
    add((f'{word} times', f'{n} times'), 'count_after', n)
  add(('a single',), 'count_before', 1)
  add(('a pair of', 'a couple of'), 'count_before', 2)
  add(('once', 'one time'), 'count_after', 1)
  add(('twice',), 'count_after', 2)
  add(('thrice',), 'count_after', 3)
  for name, words in lex.TYPE_WORDS.items():
    add(words.keywords, 'type', name)
  return table


def _tokens(caption: str) -> list[str]:
  return re.sub(r'[^a-z0-9]+', ' ', caption.lower()).split()


def _lex(caption: str) -> list[tuple[str, Any]]:
  """Longest-match lexing into (kind, value) items; unknown words dropped."""
  table, words, items, i = _phrase_table(), _tokens(caption), [], 0
  longest = max(len(phrase) for phrase in table)
  while i < len(words):
    for n in range(min(longest, len(words) - i), 0, -1):
      item = table.get(tuple(words[i : i + n]))
      if item is not None:
        items.append(item)
        i += n
        break
    else:
      i += 1
  return items


class _Reader:
  """State machine over lexed items; see `parse_caption`."""

  def __init__(self):
    self.groups: list[tuple[bool, list[Mention]]] = [(False, [])]  # (reversed, mentions)
    self.current: Mention | None = None
    self.boundary = True  # A connective since `current` started.
    self.detached = True  # A determiner/number since `current`'s last keyword.
    self.pending_count: int | None = None
    self.pending_attrs: dict[str, str] = {}
    self.pending_background = False

  def _new_mention(self, event_type: str):
    m = Mention(event_type, self.pending_count or 1, self.pending_attrs, self.pending_background)
    self.groups[-1][1].append(m)
    self.current = m
    self.boundary = False
    self.pending_count, self.pending_attrs, self.pending_background = None, {}, False

  def _break(self):
    self.boundary = self.detached = True
    self.pending_count, self.pending_attrs = None, {}

  def feed(self, kind: str, value: Any):
    m = self.current
    attached = m is not None and not self.boundary
    if kind == 'type':
      if attached and m.type == value and not self.detached:
        m.attributes.update(self.pending_attrs)
        self.pending_attrs = {}
      else:
        self._new_mention(value)
      self.detached = False
    elif kind in ('det', 'count_before'):
      self.detached = True
      if kind == 'count_before':
        self.pending_count = value
    elif kind == 'count_after':
      if attached:
        m.count = value
      else:
        self.pending_count = value
    elif kind == 'adjective':
      self.pending_attrs[value[0]] = value[1]
    elif kind == 'adverb':
      target = m.attributes if attached else self.pending_attrs
      target[value[0]] = value[1]
    elif kind == 'marker':
      if attached:
        m.background = True
      else:
        self.pending_background = True
    elif kind in ('boundary', 'prefix', 'reverse'):
      self._break()
      self.pending_background = kind == 'prefix'
      if kind == 'reverse':
        self.groups.append((True, []))

  def mentions(self) -> list[Mention]:
    ordered: list[Mention] = []
    for is_reversed, group in self.groups:
      ordered = group + ordered if is_reversed else ordered + group
    return ordered


def parse_caption(caption: str) -> list[Mention]:
  """Parses a caption into event mentions in the temporal order it states.

  A mention starts at a type keyword unless the keyword continues the current
  mention (same type, no connective or determiner in between: 'a bell
  rings'). Number words before a noun and count adverbs after a verb set its
  count (adverbs win); adjectives attach to the next mention, adverbs to the
  current one. 'A after B' and 'A preceded by B' put B before A.

  Args:
    caption: Any text; case and punctuation are ignored.

  Returns:
    The mentions, first-heard first.
  """
  reader = _Reader()
  for kind, value in _lex(caption):
    reader.feed(kind, value)
  return reader.mentions()


@dataclasses.dataclass
class CaptionScore:
  """Counts behind the corpus metrics for one caption."""

  num_mentions: int = 0
  num_events: int = 0
  num_matched: int = 0
  num_count_correct: int = 0
  num_pairs: int = 0
  num_pairs_correct: int = 0

  def __add__(self, other: 'CaptionScore') -> 'CaptionScore':
    return CaptionScore(
      *(a + b for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(other), strict=True))
    )


def _as_events(events: str | bytes | Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
  if isinstance(events, bytes):
    events = events.decode('utf-8')
  if isinstance(events, str):
    events = json.loads(events)
  return sorted(events, key=lambda e: e['onset'])


def score_caption(caption: str, events: str | bytes | Sequence[Mapping[str, Any]]) -> CaptionScore:
  """Scores one caption against its ground truth.

  Args:
    caption: Generated caption.
    events: Ground-truth event dicts, or their JSON (the `events` feature).

  Returns:
    The counts of matches, right counts and right-ordered pairs.
  """
  events = _as_events(events)
  mentions = parse_caption(caption)
  by_type: dict[str, list[int]] = collections.defaultdict(list)
  for position, mention in enumerate(mentions):
    by_type[mention.type].append(position)
  matched: list[tuple[Mapping[str, Any], Mention, int]] = []  # (event, mention, position)
  seen: collections.Counter[str] = collections.Counter()
  for event in events:
    k = seen[event['type']]
    seen[event['type']] += 1
    if k < len(by_type[event['type']]):
      position = by_type[event['type']][k]
      matched.append((event, mentions[position], position))
  fg = [(e, p) for e, _, p in matched if not e['background']]  # Sorted by onset.
  pairs = [(a, b) for i, a in enumerate(fg) for b in fg[i + 1 :] if a[0]['onset'] < b[0]['onset']]
  return CaptionScore(
    num_mentions=len(mentions),
    num_events=len(events),
    num_matched=len(matched),
    num_count_correct=sum(m.count == e['count'] for e, m, _ in matched),
    num_pairs=len(pairs),
    num_pairs_correct=sum(a[1] < b[1] for a, b in pairs),
  )


def metrics_from_score(score: CaptionScore) -> dict[str, float]:
  """Corpus metrics from summed counts (see the module docstring)."""
  precision = score.num_matched / score.num_mentions if score.num_mentions else 0.0
  recall = score.num_matched / score.num_events if score.num_events else 0.0
  f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
  order = score.num_pairs_correct / score.num_pairs if score.num_pairs else 1.0
  count = score.num_count_correct / score.num_matched if score.num_matched else 1.0
  return {
    'event_precision': precision,
    'event_recall': recall,
    'event_f1': f1,
    'order_accuracy': order,
    'count_accuracy': count,
  }


def score_captions(
  captions: Sequence[str], events: Sequence[str | bytes | Sequence[Mapping[str, Any]]]
) -> dict[str, float]:
  """Corpus-level event diagnostics of generated captions.

  Args:
    captions: One generated caption per clip.
    events: The clips' ground-truth events (lists of dicts or the JSON text
      of the `events` feature), aligned with `captions`.

  Returns:
    `event_precision`, `event_recall`, `event_f1`, `order_accuracy`,
    `count_accuracy`, each in [0, 1].
  """
  if len(captions) != len(events):
    raise ValueError(f'{len(captions)} captions but {len(events)} event lists.')
  total = CaptionScore()
  for caption, clip_events in zip(captions, events, strict=True):
    total = total + score_caption(caption, clip_events)
  return metrics_from_score(total)
