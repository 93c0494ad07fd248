"""A paraphrasing caption grammar for synthetic sound scenes.

Each clip gets five distinct reference captions. Every reference names every
event with its count and puts the foreground events in temporal order (said
directly, or reversed with 'after' / 'preceded by'); pitch, loudness and
duration are said with some probability, as adjectives or adverbs, so the
references differ the way crowd-sourced ones do. Captions are lower-case
words separated by single spaces, without punctuation.
"""

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from aac_jax.data.synthetic import events as events_lib
from aac_jax.data.synthetic import lexicon as lex

NUM_CAPTIONS = 5
MAX_WORDS = 22  # Fits `max_caption_tokens = 24` with EOS and a spare token.
_ATTR_ORDER = ('loudness', 'duration', 'pitch')  # Adjective order before a noun.

EventDict = Mapping[str, Any]


class _Writer:
  """Random choices of one caption; `attr_p` = P(say an attribute)."""

  def __init__(self, rng: np.random.Generator, attr_p: float):
    self.rng = rng
    self.attr_p = attr_p

  def choice(self, options: Sequence[Any]) -> Any:
    return options[int(self.rng.random() * len(options))]

  def maybe(self, p: float) -> bool:
    return bool(self.rng.random() < p)

  def said_attributes(self, event: EventDict) -> list[tuple[str, str]]:
    """The (attribute, value) pairs this caption expresses, in _ATTR_ORDER."""
    attrs = event['attributes']
    keys = [k for k in _ATTR_ORDER if k in attrs]
    if event['background']:
      keys = [k for k in keys if k != 'duration']  # Always long: not informative.
    return [(k, attrs[k]) for k in keys if self.maybe(self.attr_p)]


def _with_article(words: list[str]) -> str:
  """Joins words, turning a leading 'a' into 'an' before a vowel."""
  words = [w for w in words if w]
  if len(words) > 1 and words[0] == 'a' and words[1][0] in 'aeiou':
    words[0] = 'an'
  return ' '.join(words)


def _countable(event: EventDict) -> bool:
  return events_lib.EVENT_SPECS[event['type']].countable


def _noun_phrase(
  event: EventDict, w: _Writer, extra_adjective: str = '', one: bool = False
) -> tuple[str, bool]:
  """'three loud beeps', 'a long siren', 'faint rain'.

  Args:
    event: The event.
    w: Wording choices.
    extra_adjective: Said first ('constant').
    one: Say a single instance with 'a' whatever the count.

  Returns:
    (text, plural).
  """
  words = lex.TYPE_WORDS[event['type']]
  count = 1 if one else event['count']
  adjectives = [w.choice(lex.ADJECTIVES[a]) for a in w.said_attributes(event)]
  adjectives = [extra_adjective, *adjectives]
  if count > 1:
    det, head = w.choice(lex.COUNT_BEFORE[count]), w.choice(words.nouns)[1]
  elif words.mass and (not words.nouns or w.maybe(0.4)):
    det, head = '', w.choice(words.mass)
  else:
    det = w.choice(lex.COUNT_BEFORE[1]) if _countable(event) and not one else 'a'
    head = w.choice(words.nouns)[0]
  return _with_article([det, *adjectives, head]), count > 1


def _subject_and_adverbs(event: EventDict, w: _Writer) -> tuple[str, list[str]]:
  """A clause subject (maybe with adjectives) and the adverbs after the verb."""
  words = lex.TYPE_WORDS[event['type']]
  subject = w.choice(words.subjects)
  first, _, rest = subject.partition(' ')
  has_article = first in ('a', 'an') and rest
  is_mass = subject in words.mass
  # Only a subject that names the sound takes adjectives ('a loud bell', not
  # 'a loud device'); the others take adverbs.
  named = any(k in words.keywords for k in subject.split())
  adjectives, adverbs = [], []
  for attr, value in w.said_attributes(event):
    if attr != 'duration' and named and (has_article or is_mass) and w.maybe(0.5):
      adjectives.append(w.choice(lex.ADJECTIVES[(attr, value)]))
    elif attr == 'duration' and _countable(event):
      adverbs.append(w.choice(lex.REPETITION_ADVERBS[value]))
    else:
      adverbs.append(w.choice(lex.ADVERBS[(attr, value)]))
  if has_article:
    subject = _with_article(['a', *adjectives, rest])
  elif is_mass:
    subject = ' '.join([*adjectives, subject])
  return subject, adverbs


def _count_adverb(event: EventDict, w: _Writer) -> str:
  if event['count'] > 1:
    return w.choice(lex.COUNT_AFTER[event['count']])
  return 'once' if _countable(event) and w.maybe(0.2) else ''


def _clause(event: EventDict, w: _Writer, participle: bool = False) -> str:
  """'a bell rings loudly twice', or with `participle` 'a bell ringing twice'."""
  subject, adverbs = _subject_and_adverbs(event, w)
  verb = w.choice(lex.TYPE_WORDS[event['type']].verbs)[int(participle)]
  return ' '.join(x for x in (subject, verb, *adverbs, _count_adverb(event, w)) if x)


def _heard(event: EventDict, w: _Writer) -> str:
  """'two beeps are heard', 'a beep is heard three times'."""
  if event['count'] > 1 and w.maybe(0.4):
    text, _ = _noun_phrase(event, w, one=True)
    return f'{text} {w.choice(lex.HEARD_SINGULAR)} {_count_adverb(event, w)}'
  text, plural = _noun_phrase(event, w)
  return f'{text} {w.choice(lex.HEARD_PLURAL if plural else lex.HEARD_SINGULAR)}'


def _repeated(event: EventDict, w: _Writer) -> str:
  """'a short beep repeated three times' (a noun phrase, count > 1 only)."""
  text, _ = _noun_phrase(event, w, one=True)
  return f'{text} repeated {_count_adverb(event, w)}'


def _unit(event: EventDict, w: _Writer) -> tuple[str, str]:
  """One event as ('clause', text) or ('noun', text)."""
  form = w.choice(('clause', 'clause', 'heard', 'noun', 'participle', 'repeated'))
  if form == 'repeated' and event['count'] > 1:
    return 'noun', _repeated(event, w)
  if form in ('noun', 'repeated'):
    return 'noun', _noun_phrase(event, w)[0]
  if form == 'participle':
    return 'noun', _clause(event, w, participle=True)
  if form == 'heard':
    return 'clause', _heard(event, w)
  return 'clause', _clause(event, w)


def _lead_in(text: str, w: _Writer) -> str:
  lead = w.choice(lex.LEAD_INS if len(text.split()) > 2 else lex.LEAD_INS[1:])
  if lead == 'there is' and text.split()[0] in ('two', 'three', 'four', 'a pair'):
    lead = 'there are'
  return f'{lead} {text}'.strip()


def _in_order(fg: Sequence[EventDict], w: _Writer) -> tuple[str, bool]:
  """The foreground events said in temporal order.

  Returns:
    (text, whether it starts with a clause).
  """
  parts, starts_with_clause = [], True
  for i, event in enumerate(fg):
    kind, text = _unit(event, w)
    if i == 0:
      starts_with_clause = kind == 'clause'
      if kind == 'noun':
        text = _lead_in(text, w)
      elif len(fg) > 1 and w.maybe(0.2):
        text = f'{w.choice(lex.FIRST)} {text}'
    elif i == len(fg) - 1 and len(fg) >= 3 and w.maybe(0.4):
      text = f'{w.choice(lex.FINALLY)} {text}'
    else:
      text = (
        f'{w.choice(lex.THEN_BEFORE_NOUN if kind == "noun" else lex.THEN_BEFORE_CLAUSE)} {text}'
      )
    parts.append(text)
  return ' '.join(parts), starts_with_clause


def _reversed(first: EventDict, second: EventDict, w: _Writer) -> str:
  """Two foreground events said second-first: 'a bell rings after a beep'."""
  shape = w.choice(('after', 'after', 'after_first', 'preceded'))
  if shape == 'after':
    _, before = _unit(first, w)
    return f'{_clause(second, w)} after {before}'
  if shape == 'after_first':
    return f'after {_clause(first, w)} {_clause(second, w)}'
  text = f'{_noun_phrase(second, w)[0]} preceded by {_noun_phrase(first, w)[0]}'
  return _lead_in(text, w)


def _background_np(event: EventDict, w: _Writer) -> str:
  return _noun_phrase(event, w, extra_adjective=w.choice(lex.BACKGROUND_ADJECTIVES))[0]


def _with_background(fg_text: str, bg: EventDict, w: _Writer, allow_prefix: bool) -> str:
  """Adds the background event before or after the foreground sentence."""
  suffix = w.choice(lex.BACKGROUND_SUFFIX_CLAUSE)
  if allow_prefix and w.maybe(0.35):
    shape = w.choice(('in_background', 'clause', 'over', 'continues'))
    if shape == 'in_background':
      return f'in the background {_clause(bg, w)} while {fg_text}'
    if shape == 'clause':
      return f'{_clause(bg, w)} {suffix} as {fg_text}'
    if shape == 'over':
      return f'over {_background_np(bg, w)} {fg_text}'
    return f'{_noun_phrase(bg, w)[0]} {w.choice(lex.BACKGROUND_CONTINUES)} while {fg_text}'
  shape = w.choice(('while', 'as', 'over', 'with', 'against', 'continues'))
  if shape in ('while', 'as'):
    return f'{fg_text} {shape} {_clause(bg, w)} {suffix}'
  if shape == 'over':
    return f'{fg_text} over {_background_np(bg, w)}'
  if shape == 'with':
    return f'{fg_text} with {_noun_phrase(bg, w)[0]} in the background'
  if shape == 'against':
    return f'{fg_text} against a background of {_noun_phrase(bg, w)[0]}'
  return f'{fg_text} while {_noun_phrase(bg, w)[0]} {w.choice(lex.BACKGROUND_CONTINUES)}'


def write_caption(events: Sequence[EventDict], rng: np.random.Generator, attr_p: float) -> str:
  """Writes one caption of a scene.

  Args:
    events: Ground-truth event dicts (`type`, `onset`, `count`, `attributes`,
      `background`), as stored in the `events` feature.
    rng: Source of the wording choices.
    attr_p: Probability of saying each applicable attribute.

  Returns:
    A lower-case caption without punctuation.
  """
  w = _Writer(rng, attr_p)
  fg = sorted((e for e in events if not e['background']), key=lambda e: e['onset'])
  bg = [e for e in events if e['background']]
  if len(fg) == 2 and w.maybe(0.25):
    text, allow_prefix = _reversed(fg[0], fg[1], w), False
  else:
    text, allow_prefix = _in_order(fg, w)
  if bg:
    text = _with_background(text, bg[0], w, allow_prefix)
  return ' '.join(text.split())


def make_captions(
  events: Sequence[EventDict],
  rng: np.random.Generator,
  num_captions: int = NUM_CAPTIONS,
  max_words: int = MAX_WORDS,
) -> list[str]:
  """Writes `num_captions` distinct reference captions of a scene.

  The first reference tries to say every attribute, the others each say an
  attribute with probability 0.6; a caption over `max_words` words is
  rewritten with fewer attributes.

  Args:
    events: Ground-truth event dicts (see `write_caption`).
    rng: Source of the wording choices.
    num_captions: How many references.
    max_words: Longest caption (in words) accepted when a shorter one can be
      found.

  Returns:
    `num_captions` captions (distinct unless the grammar runs out of ways).
  """
  captions: list[str] = []
  for attempt in range(50 * num_captions):
    attr_p = (1.0 if not captions else 0.6) * 0.5 ** (attempt // (2 * num_captions))
    best = None
    for _ in range(8):
      caption = write_caption(events, rng, attr_p)
      if best is None or len(caption.split()) < len(best.split()):
        best = caption
      if len(caption.split()) <= max_words:
        break
      attr_p *= 0.5
    if best not in captions:
      captions.append(best)
    if len(captions) == num_captions:
      return captions
  return (captions * num_captions)[:num_captions]
