"""Caption text normalisation (the DCASE convention).

Captions are lower-cased, punctuation is removed and whitespace collapsed
before a vocabulary is built or a caption tokenized. Apostrophes are dropped
without a space ("dog's" -> "dogs", "it’s" -> "its") so contractions stay one
word; every other punctuation mark becomes a space ("high-pitched" -> "high
pitched"), so words it joined are never glued together.
"""

import re

# Straight and typographic apostrophes: removed, the word stays whole.
_APOSTROPHES = re.compile(r"['’‘`´]")
# Anything that is neither a letter/digit nor whitespace (the underscore counts
# as a word character for `\w`, so it is named explicitly).
_PUNCTUATION = re.compile(r'[^\w\s]|_')
_WHITESPACE = re.compile(r'\s+')


def normalize_caption(caption: str) -> str:
  """Normalises one caption: lower case, no punctuation, single spaces.

  Args:
    caption: raw caption text.

  Returns:
    The normalised caption; words separated by exactly one space, no leading
    or trailing space ('' for a caption with no words).
  """
  text = caption.lower()
  text = _APOSTROPHES.sub('', text)
  text = _PUNCTUATION.sub(' ', text)
  return _WHITESPACE.sub(' ', text).strip()


def caption_words(caption: str) -> list[str]:
  """Returns the words of the normalised caption."""
  normalized = normalize_caption(caption)
  return normalized.split(' ') if normalized else []
