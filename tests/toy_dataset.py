"""A tiny TFDS builder, `toy_aac`, for fast pipeline and trainer tests.

It writes random int16 noise of varied lengths and made-up captions in the
exact record schema of docs/CONTRACTS.md (`id`, `audio`, `captions`), as
`array_record` files, in a second or so. Use `build_toy_dataset(data_dir)`:
every call with a fresh `data_dir` gives a fresh copy; the clip counts,
lengths and captions are fixed by the arguments, so tests can know them.
"""

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from configs import synthetic_demo

NAME = 'toy_aac'
DEFAULT_SPLITS = {'train': 24, 'validation': 11, 'test': 5}

_WORDS = (
  'a dog barks loudly while the wind blows and birds chirp in distance '
  'man speaks woman laughs car engine idles rain falls on roof water flows '
  'people talk crowd cheers bell rings door closes footsteps walk slowly'
).split()
_PUNCTUATION = ('', '', '', ',', '.', '!', "'s", '-')


def make_caption(rng: np.random.Generator, max_words: int = 14) -> str:
  """Returns one random caption with mixed case and punctuation."""
  n = int(rng.integers(2, max_words + 1))
  words = []
  for word in rng.choice(_WORDS, size=n):
    word = str(word)
    if rng.random() < 0.2:
      word = word.capitalize()
    words.append(word + _PUNCTUATION[int(rng.integers(len(_PUNCTUATION)))])
  return ' '.join(words)


def bpe_tokenizer(captions, vocab_size: int = 320, specials=()):
  """A byte-level BPE `tokenizers.Tokenizer` trained on `captions`, as Qwen2's is.

  Args:
    captions: the training text.
    vocab_size: ids of the byte alphabet and the merges (small: words split into pieces).
    specials: special tokens added after the merges (Qwen's sit there).
  """
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
    vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
  )
  tok.train_from_iterator(list(captions), trainer)
  tok.add_special_tokens(list(specials))
  return tok


def make_clip(rng: np.random.Generator, num_samples: int) -> np.ndarray:
  """Returns `[num_samples]` int16 noise that uses most of the int16 range."""
  audio = rng.normal(0.0, 6000.0, size=num_samples)
  return np.clip(audio, -32768, 32767).astype(np.int16)


@dataclasses.dataclass
class ToyAacConfig(tfds.core.BuilderConfig):
  """How the audio Tensor is serialised.

  A config, not an `__init__` argument: readers rebuild the features from the
  builder's code, so anything that changes them must be named in the config.
  'none' is the contract's plain `Tensor` (int64 varints on disk); 'bytes'
  stores raw int16, decodes to the same arrays and reads faster
  (tools/bench_input.py compares them).
  """

  audio_encoding: str = 'none'


class ToyAac(tfds.core.GeneratorBasedBuilder):
  """Random audio and captions; the split sizes and clip lengths are arguments."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Test fixture.'}
  BUILDER_CONFIGS = [
    ToyAacConfig(name='plain', audio_encoding='none'),
    ToyAacConfig(name='bytes', audio_encoding='bytes'),
  ]

  def __init__(
    self,
    *,
    splits: dict[str, int] | None = None,
    min_seconds: float = 0.2,
    max_seconds: float = 1.2,
    sample_rate: int = 16000,
    max_words: int = 14,
    seed: int = 0,
    **kwargs,
  ):
    self._splits = dict(splits or DEFAULT_SPLITS)
    self._min_seconds = min_seconds
    self._max_seconds = max_seconds
    self._sample_rate = sample_rate
    self._max_words = max_words
    self._seed = seed
    kwargs.setdefault('file_format', 'array_record')
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description='Random noise with random captions (test fixture).',
      features=tfds.features.FeaturesDict(
        {
          'id': tfds.features.Text(),
          'audio': tfds.features.Tensor(
            shape=(None,), dtype=np.int16, encoding=self.builder_config.audio_encoding
          ),
          'captions': tfds.features.Sequence(tfds.features.Text()),
        }
      ),
      metadata=tfds.core.MetadataDict(sample_rate=self._sample_rate),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split, n) for split, n in self._splits.items()}

  def _generate_examples(self, split: str, num_clips: int):
    # Per-split streams: the contents of a split do not depend on the others.
    rng = np.random.default_rng([self._seed, sum(map(ord, split))])
    lo = int(self._min_seconds * self._sample_rate)
    hi = int(self._max_seconds * self._sample_rate)
    for i in range(num_clips):
      clip_id = f'{split}_{i:04d}'
      num_captions = int(rng.integers(1, 6)) if split == 'train' else 5
      yield (
        clip_id,
        {
          'id': clip_id,
          'audio': make_clip(rng, int(rng.integers(lo, hi + 1))),
          'captions': [make_caption(rng, self._max_words) for _ in range(num_captions)],
        },
      )


def build_toy_dataset(data_dir: str, config: str = 'plain', **kwargs) -> str:
  """Builds `toy_aac` into `data_dir` (no-op where it is already there).

  Args:
    data_dir: TFDS data directory.
    config: builder config, 'plain' (the default one) or 'bytes'.
    **kwargs: `ToyAac` arguments (`splits`, `min_seconds`, `max_seconds`,
      `sample_rate`, `max_words`, `seed`).

  Returns:
    The full name (`toy_aac/<config>`) for `tfds.data_source`; `toy_aac`
    alone also reads the default 'plain' config.
  """
  builder = ToyAac(data_dir=data_dir, config=config, **kwargs)
  builder.download_and_prepare()
  return f'{NAME}/{config}'


def demo_config(data_dir: str, max_audio_seconds: float = 1.0):
  """The `:runlocal` demo config reading a fresh `toy_aac` built into `data_dir`."""
  config = synthetic_demo.get_config('runlocal')
  config.dataset.name = build_toy_dataset(data_dir)
  config.dataset.builder_config = ''
  config.dataset.data_dir = data_dir
  config.dataset.max_audio_seconds = max_audio_seconds
  return config
