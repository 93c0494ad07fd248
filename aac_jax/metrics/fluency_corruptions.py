"""FENSE's fluency errors made by rule, to train an error detector.

FENSE (Zhou et al., 2022) trained its error checker on training captions
corrupted by five rules, with one output per rule and a sixth for "any
error" (`CLASS_NAMES`, the order of `echecker_clotho_audiocaps_base`'s
outputs; `fense.FenseScorer.error_probs` reads the last):

- `add_tail`: a dangling phrase at the end ("... and a", "... in the").
- `repeat_event`: an event said again after a conjunction ("a dog barks and
  a dog barks"), the SCST failure.
- `repeat_adverb`: the last event's last adverb said again at the end.
- `remove_conjunction`: the last conjunction dropped.
- `remove_verb`: the last verb dropped (never the caption's last word).

A rule must only emit broken text, or the detector learns to flag fluent
captions. Two guards keep it so: a removal must leave a word pair (or a
caption start or end) that no clean training caption has (`Lexicon.pairs`):
'a shrill wailing siren' -> 'a shrill siren', 'twice and then' -> 'twice
then' or 'a clicking sound' -> 'a sound' are fluent where the corpus says
so, and the rule takes an earlier word or does not apply. An adverb is only
repeated within the last event: 'a bell rings twice and a dog barks twice'
is fluent, 'a dog barks twice twice' is not.

Captions are handled as the checker reads them (`fense_models.echecker_text`:
lower case, no punctuation), as lists of words. FENSE tagged verbs and
adverbs with spaCy; here `Lexicon` finds them from the corpus itself (a word
is a verb where its -ing form is in the corpus, an adverb where it ends in
-ly or is a known adverb), so no tagger model is needed. FENSE's published
notebook drops the caption's last word in both removal rules (its loop index
outlives the loop); the rules here remove the word they name.

Each rule is a pure function `(words, rng, lexicon) -> words or None` (None:
the rule does not apply to this caption).
"""

import dataclasses
import itertools
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from aac_jax.metrics import fense_models

ERROR_TYPES = ('add_tail', 'repeat_event', 'repeat_adv', 'remove_conj', 'remove_verb')
CLASS_NAMES = (*ERROR_TYPES, 'error')

# FENSE's dangling tails ('follow by' is FENSE's own ungrammatical form).
TAILS = (
  'in the',
  'of a',
  'and',
  'and a',
  'and a series of',
  'follow by',
  'as',
  'with',
  'a',
  'by a',
  'on the',
  'and then',
)
# Words that join events: a caption is cut into events at these; a repeated
# event is joined by any of them but 'with' (as in FENSE).
EVENT_JOINERS = ('and', 'followed by', 'while', 'before', 'after', 'as', 'with')
CONJUNCTIONS = frozenset(
  'and or but nor while whilst as before after because until when whereas although though'.split()
)
# Adverbs a suffix rule misses; -ly words that are no adverbs.
KNOWN_ADVERBS = frozenset(
  'again then away nearby twice once throughout later afterwards very too still now often '
  'repeatedly constantly continuously'.split()
)
NOT_ADVERBS = frozenset(
  'family fly butterfly dragonfly firefly belly jelly rally ally holy bully curly hilly lily '
  'silly ugly lonely elderly chilly oily daily assembly supply reply italy july likely '
  'friendly lovely'.split()
)
# -ing words that are no verbs.
NOT_VERBS = frozenset(
  'thing something nothing anything everything ceiling building morning evening during '
  'wedding clothing pudding string spring king wing ring sing bring ping sibling'.split()
)

Words = list[str]
START, END = '<s>', '</s>'  # Caption edges in `Lexicon.pairs`.


@dataclasses.dataclass(frozen=True)
class Lexicon:
  """Verbs and adverbs of a caption corpus (see module docstring).

  Attributes:
    verbs: words taken as verbs.
    adverbs: words taken as adverbs.
    pairs: adjacent word pairs of the clean captions, with `START` before
      the first word and `END` after the last (empty: no pair is checked).
  """

  verbs: frozenset[str]
  adverbs: frozenset[str]
  pairs: frozenset[tuple[str, str]] = frozenset()


def caption_words(caption: str) -> Words:
  """A caption as the error checker reads it, split into words."""
  return fense_models.echecker_text(caption).split()


def _ing_forms(word: str) -> set[str]:
  """Candidate -ing forms of a base or third-person verb form ('hums' -> 'humming', ...)."""
  stems = {word}
  if word.endswith('es'):
    stems.add(word[:-2])
  if word.endswith('s'):
    stems.add(word[:-1])
  forms = set()
  for stem in filter(None, stems):
    forms |= {stem + 'ing', stem + stem[-1] + 'ing'}
    if stem.endswith('e'):
      forms.add(stem[:-1] + 'ing')
  return forms


def build_lexicon(captions: Iterable[str]) -> Lexicon:
  """Finds the verbs and adverbs of a caption corpus.

  Args:
    captions: raw captions.

  Returns:
    -ing words (5+ letters, not in `NOT_VERBS`) and words whose -ing form
    is one of them as verbs; -ly words (5+ letters, not in `NOT_ADVERBS`)
    and `KNOWN_ADVERBS` as adverbs; the captions' word pairs.
  """
  texts = [[START, *caption_words(c), END] for c in captions]
  vocab = {w for t in texts for w in t[1:-1]}
  ing = {w for w in vocab if w.endswith('ing') and len(w) >= 5 and w not in NOT_VERBS}
  verbs = ing | {w for w in vocab - NOT_VERBS if _ing_forms(w) & ing}
  adverbs = {w for w in vocab if w.endswith('ly') and len(w) >= 5 and w not in NOT_ADVERBS}
  pairs = {pair for t in texts for pair in itertools.pairwise(t)}
  return Lexicon(frozenset(verbs), frozenset(adverbs | (KNOWN_ADVERBS & vocab)), frozenset(pairs))


def _last_index(words: Words, wanted: Callable[[str], bool]) -> int | None:
  found = [i for i, w in enumerate(words) if wanted(w)]
  return found[-1] if found else None


def _joiner_spans(words: Words) -> list[tuple[int, int]]:
  """(start, end) of each `EVENT_JOINERS` occurrence, left to right, not overlapping."""
  joiners = [j.split() for j in EVENT_JOINERS]
  spans, i = [], 0
  while i < len(words):
    joiner = next((j for j in joiners if words[i : i + len(j)] == j), None)
    if joiner:
      spans.append((i, i + len(joiner)))
    i += len(joiner) if joiner else 1
  return spans


def add_tail(words: Words, rng: np.random.Generator, lexicon: Lexicon) -> Words | None:
  """Appends one of FENSE's dangling `TAILS`."""
  del lexicon
  return [*words, *TAILS[rng.integers(len(TAILS))].split()]


def split_events(words: Words) -> list[Words]:
  """Cuts a caption at `EVENT_JOINERS` (dropping them) into its non-empty event phrases."""
  cuts = [(0, 0), *_joiner_spans(words), (len(words), len(words))]
  events = [words[end:start] for (_, end), (start, _) in itertools.pairwise(cuts)]
  return [e for e in events if e]


def repeat_event(words: Words, rng: np.random.Generator, lexicon: Lexicon) -> Words | None:
  """Appends a joiner and one of the caption's events again, its article sometimes changed.

  As in FENSE, the repeated event keeps its words half of the time, else
  loses its 'a's (or gains a leading 'a' where it has none).
  """
  del lexicon
  events = split_events(words)
  if not events:
    return None
  event = list(events[rng.integers(len(events))])
  if rng.random() < 0.5:
    event = [w for w in event if w != 'a'] if 'a' in event else ['a', *event]
  joiner = EVENT_JOINERS[rng.integers(len(EVENT_JOINERS) - 1)]  # Never 'with'.
  return [*words, *joiner.split(), *event]


def repeat_adverb(words: Words, rng: np.random.Generator, lexicon: Lexicon) -> Words | None:
  """Appends the last event's last adverb again; None without one.

  Only the last event's adverbs: said again at the end, one of an earlier
  event's may be fluent ('twice ... and a dog barks twice').
  """
  del rng
  spans = _joiner_spans(words)
  start = spans[-1][1] if spans else 0
  i = _last_index(words[start:], lexicon.adverbs.__contains__)
  return None if i is None else [*words, words[start + i]]


def _without_last(
  words: Words, kind: frozenset[str], lexicon: Lexicon, spare_end: int = 0
) -> Words | None:
  """Drops the last word of `kind` whose removal leaves a pair unseen in `lexicon.pairs`.

  The last `spare_end` words are never dropped; None where no word qualifies.
  """
  if len(words) < 2:
    return None
  padded = [START, *words, END]
  for i in reversed(range(len(words) - spare_end)):
    if words[i] in kind and (padded[i], padded[i + 2]) not in lexicon.pairs:
      return words[:i] + words[i + 1 :]
  return None


def remove_conjunction(words: Words, rng: np.random.Generator, lexicon: Lexicon) -> Words | None:
  """Drops the caption's last conjunction whose removal leaves an unseen pair; else None."""
  del rng
  return _without_last(words, CONJUNCTIONS, lexicon)


def remove_verb(words: Words, rng: np.random.Generator, lexicon: Lexicon) -> Words | None:
  """Drops the last verb, not the caption's last word, whose removal leaves an unseen pair.

  A caption's final verb is spared: without it most captions still read
  as a fluent noun phrase ("a dog barks" -> "a dog"), so the rule would
  mislabel fluent text. None where no verb qualifies.
  """
  del rng
  return _without_last(words, lexicon.verbs, lexicon, spare_end=1)


CORRUPTIONS: dict[str, Callable[[Words, np.random.Generator, Lexicon], Words | None]] = {
  'add_tail': add_tail,
  'repeat_event': repeat_event,
  'repeat_adv': repeat_adverb,
  'remove_conj': remove_conjunction,
  'remove_verb': remove_verb,
}


def corrupt(
  words: Words, rng: np.random.Generator, lexicon: Lexicon, two_rules_p: float = 0.3
) -> tuple[Words, np.ndarray] | None:
  """Applies one rule (two with probability `two_rules_p`), chosen among those that apply.

  Args:
    words: a clean caption's words.
    rng: source of the choices.
    lexicon: the corpus's verbs and adverbs.
    two_rules_p: probability of a second rule on the first one's output.

  Returns:
    (corrupted words, float32 [len(CLASS_NAMES)] multi-hot labels, the last
    set), or None when no rule changes the caption.
  """
  labels = np.zeros(len(CLASS_NAMES), np.float32)
  out = words
  for _ in range(2 if rng.random() < two_rules_p else 1):
    order = rng.permutation(len(ERROR_TYPES))
    for k in order:
      changed = CORRUPTIONS[ERROR_TYPES[k]](out, rng, lexicon)
      if changed is not None and changed != out:
        out, labels[k] = changed, 1.0
        break
  if out == words:
    return None
  labels[-1] = 1.0
  return out, labels


def single_rule_examples(
  clean: Sequence[str], rng: np.random.Generator, lexicon: Lexicon, seen: set[str]
) -> tuple[list[str], list[np.ndarray]]:
  """Each clean text corrupted by every rule that applies to it, one rule at a time.

  Args:
    clean: texts as the checker reads them.
    rng: source of the choices.
    lexicon: the corpus's verbs and adverbs.
    seen: texts not to emit (the clean captions); emitted texts are added.

  Returns:
    (texts, labels): one text per (caption, applicable rule), labelled with
    that rule and "error".
  """
  texts, labels = [], []
  for text in clean:
    words = text.split()
    for k, name in enumerate(ERROR_TYPES):
      changed = CORRUPTIONS[name](words, rng, lexicon)
      if changed is None or changed == words or ' '.join(changed) in seen:
        continue
      label = np.zeros(len(CLASS_NAMES), np.float32)
      label[k] = label[-1] = 1.0
      seen.add(' '.join(changed))
      texts.append(' '.join(changed))
      labels.append(label)
  return texts, labels


def make_examples(
  captions: Sequence[str],
  rng: np.random.Generator,
  lexicon: Lexicon,
  mixed: bool = True,
  each_rule: bool = False,
) -> tuple[list[str], np.ndarray]:
  """Each distinct caption once clean, plus its corrupted versions.

  A corrupted text that is also one of the clean captions (or already
  emitted) is left out.

  Args:
    captions: raw captions.
    rng: source of the choices.
    lexicon: the corpus's verbs and adverbs.
    mixed: add one `corrupt` version per caption (a random applicable rule,
      sometimes two).
    each_rule: add `single_rule_examples` (one version per applicable rule).

  Returns:
    (texts as the checker reads them, float32 labels [len(texts), 6]).
  """
  clean = list(dict.fromkeys(' '.join(caption_words(c)) for c in captions if c.strip()))
  seen = set(clean)
  texts, labels = list(clean), [np.zeros(len(CLASS_NAMES), np.float32)] * len(clean)
  if mixed:
    for text in clean:
      result = corrupt(text.split(), rng, lexicon)
      if result is not None and ' '.join(result[0]) not in seen:
        seen.add(' '.join(result[0]))
        texts.append(' '.join(result[0]))
        labels.append(result[1])
  if each_rule:
    more_texts, more_labels = single_rule_examples(clean, rng, lexicon, seen)
    texts += more_texts
    labels += more_labels
  return texts, np.stack(labels) if labels else np.zeros((0, len(CLASS_NAMES)), np.float32)


def split_held_out(
  captions: Sequence[str], fraction: float, seed: int
) -> tuple[list[str], list[str]]:
  """Distinct captions (as the checker reads them) split into (training, held-out).

  Args:
    captions: raw captions.
    fraction: share held out, in (0, 1).
    seed: shuffling seed.

  Returns:
    Two disjoint lists of caption texts.
  """
  unique = sorted({' '.join(caption_words(c)) for c in captions} - {''})
  order = np.random.default_rng(seed).permutation(len(unique))
  n_held = max(1, round(fraction * len(unique)))
  return [unique[i] for i in order[n_held:]], [unique[i] for i in order[:n_held]]
