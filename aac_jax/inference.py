"""Loads a trained captioner from its workdir and captions waveforms.

A run's workdir (written by `aac_jax.train.trainer`) holds `config.json`,
`vocab.txt` and orbax `checkpoints/<step>/`. `load_model(path)` accepts the
workdir, its `checkpoints/` folder or one `checkpoints/<step>` folder, and
restores the parameters of the best checkpoint (by the run's validation
metric), else the latest, or the step asked for
(`aac_jax.train.checkpointing.restore_params`).

`AudioCaptioner` turns float waveforms at the model's sample rate into
captions: it cuts long recordings into windows (default: the training clip
length), pads each batch to the shortest of a few fixed lengths that holds
its longest clip (the window, its half, quarter and eighth, none under 2 s:
a 2 s clip of a 30 s CoNeTTE run is encoded as 3.75 s, not 30 s) and to a
fixed number of rows (so a handful of compiled programs serve the whole run;
the real frames, hence the captions, do not depend on the padding), and
decodes with the run's `config.decode` settings, overridable per call.
"""

import dataclasses
import json
import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from aac_jax import decoding, models
from aac_jax.audio import frontend
from aac_jax.data import mixture
from aac_jax.data import tokenizer as tokenizer_lib
from aac_jax.train import checkpointing, prepare

CONFIG_FILENAME = 'config.json'


class ModelLoadError(Exception):
  """The path holds no loadable run (message says what is missing)."""


@dataclasses.dataclass
class LoadedModel:
  """A trained captioner ready for inference.

  Attributes:
    config: the run's resolved config (`config.json`).
    model: the `Captioner` (deterministic: no dropout).
    params: its parameters, on the default device.
    tokenizer: the run's vocabulary.
    workdir: the run's folder ('' for models not loaded from disk).
    step: the checkpoint step (-1 when not loaded from disk).
    step_kind: 'best', 'latest', 'requested' or 'in-memory'.
  """

  config: ml_collections.ConfigDict
  model: models.Captioner
  params: Any
  tokenizer: tokenizer_lib.Tokenizer
  workdir: str = ''
  step: int = -1
  step_kind: str = 'in-memory'

  @property
  def sample_rate(self) -> int:
    """Hz of the audio the model was trained on."""
    return int(self.config.dataset.sample_rate)

  @property
  def train_seconds(self) -> float:
    """Clip length the model was trained on (`dataset.max_audio_seconds`)."""
    return float(self.config.dataset.max_audio_seconds)


def resolve_run(
  path: str | pathlib.Path, step: int | None = None
) -> tuple[pathlib.Path, int | None]:
  """Finds the workdir and requested step from a workdir or checkpoint path.

  Args:
    path: a run's workdir, its `checkpoints/` folder, or `checkpoints/<step>`.
    step: a step asked for explicitly (None = best, else latest).

  Returns:
    `(workdir, step or None)`.

  Raises:
    ModelLoadError: the path is not (inside) a run's workdir, or names a
      step other than `step`.
  """
  p = pathlib.Path(path).expanduser().absolute()
  if not p.exists():
    raise ModelLoadError(f'{path}: no such run directory or checkpoint')
  if p.name.isdigit() and p.parent.name == checkpointing.CHECKPOINT_DIR:
    if step is not None and step != int(p.name):
      raise ModelLoadError(f'{path} is checkpoint step {p.name} but --step {step} was given')
    step, p = int(p.name), p.parent.parent
  elif p.name == checkpointing.CHECKPOINT_DIR:
    p = p.parent
  for name in (CONFIG_FILENAME, tokenizer_lib.VOCAB_FILENAME, checkpointing.CHECKPOINT_DIR):
    if not (p / name).exists():
      raise ModelLoadError(
        f'{path} is not a training run: {p / name} is missing '
        '(expected a workdir written by `python -m aac_jax.main`)'
      )
  return p, step


def load_run_config(workdir: str | pathlib.Path) -> ml_collections.ConfigDict:
  """Reads `<workdir>/config.json` as a ConfigDict."""
  text = (pathlib.Path(workdir) / CONFIG_FILENAME).read_text(encoding='utf-8')
  return ml_collections.ConfigDict(json.loads(text))


def abstract_params(model: models.Captioner, num_mels: int) -> Any:
  """Shapes and dtypes of the model's parameters on the default device (nothing is computed)."""
  shapes = jax.eval_shape(
    lambda rng: models.init_params(model, rng, num_mels=num_mels), jax.random.key(0)
  )
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)


def load_model(path: str | pathlib.Path, step: int | None = None) -> LoadedModel:
  """Loads a trained captioner (parameters through `checkpointing.restore_params`).

  Args:
    path: a run's workdir, its `checkpoints/` folder or `checkpoints/<step>`.
    step: checkpoint step; None = the best by validation, else the latest
      (an unreadable one is skipped, with a warning, for the next newest).

  Returns:
    The model, its parameters, config and tokenizer.

  Raises:
    ModelLoadError: the path holds no loadable run or checkpoint.
  """
  workdir, step = resolve_run(path, step)
  config = load_run_config(workdir)
  tokenizer = prepare.read_run_files(workdir, config).load_tokenizer()
  model_cfg = models.make_captioner_config(
    config.model, tokenizer.vocab_size, deterministic=True, decode=False
  )
  model = models.Captioner(model_cfg)
  target = abstract_params(model, int(config.frontend.n_mels))
  try:
    params, step, kind = checkpointing.restore_params(workdir, config.train, target, step)
  except (FileNotFoundError, checkpointing.CheckpointUnreadableError) as error:
    raise ModelLoadError(str(error)) from error
  except ValueError as error:  # Orbax: stored shapes or structure differ from the model's.
    raise ModelLoadError(
      f'checkpoint step {step} of {workdir} does not fit the model built from its '
      f'config.json (trained with another version of aac_jax?): {error}'
    ) from error
  loaded = LoadedModel(config, model, params, tokenizer, str(workdir), step, kind)
  # A mixture run speaks in the style of the source that picked its best checkpoint unless
  # --task says.
  task = ''
  if config.dataset.get('mixture'):
    task = mixture.best_source(config.dataset, config.train.get('best_source', '')).task
  return with_task(loaded, task) if task else loaded


def task_names(loaded: LoadedModel) -> list[str]:
  """The dataset tasks the vocabulary has tokens for (`<bos_{task}>`, CoNeTTE runs)."""
  return [
    t[len('<bos_') : -1] for t in loaded.tokenizer.tokens if t.startswith('<bos_') and t[-1] == '>'
  ]


def with_task(loaded: LoadedModel, task: str) -> LoadedModel:
  """The same model conditioned on another task token (`--task`).

  CoNeTTE's dataset styles, or the sources of a run trained on a mixture
  (`config.dataset.mixture`): its vocabulary ends with their `<bos_{task}>`.

  Args:
    loaded: a model with `decoder_style` 'aac_jax' or 'conette'.
    task: e.g. 'clotho' or 'audiocaps' (see `task_names`).

  Raises:
    ValueError: the model has no task token for `task` (the message lists those it has).
  """
  token = f'<bos_{task}>'
  tokens = loaded.tokenizer.tokens
  if loaded.model.config.decoder_style not in ('aac_jax', 'conette') or token not in tokens:
    raise ValueError(f'task {task!r}: this model knows the tasks {task_names(loaded) or "(none)"}')
  config = loaded.model.config.replace(task_token_id=tokens.index(token))
  return dataclasses.replace(loaded, model=loaded.model.clone(config=config))


def make_settings(
  loaded: LoadedModel, **overrides: Any
) -> tuple[decoding.DecodeSettings, np.ndarray | None]:
  """Decoding settings: the run's `config.decode`, with non-None `overrides`.

  Args:
    loaded: the model.
    **overrides: `DecodeSettings` fields (None = keep the run's value).

  Returns:
    `(settings, repeat_ban_mask)`; the mask (bool `[vocab]`, True for content
    words) only when `ban_repeated_content_words` is on, else None.

  Raises:
    ValueError: invalid settings, or `max_len` beyond the model's positions.
  """
  if loaded.model.config.task_token_id >= 0:  # The first token searches start from (and ban).
    overrides = {**overrides, 'bos_id': loaded.model.config.task_token_id}
  settings = decoding.model_decode_settings(
    loaded.config.decode, loaded.model.config.max_decode_len, **overrides
  )
  mask = None
  if settings.ban_repeated_content_words:
    mask = decoding.repeat_ban_mask_for(loaded.tokenizer.tokens, settings)
  return settings, mask


def waveform_to_tokens(
  loaded: LoadedModel,
  params: Any,
  waveform: jax.Array,
  paddings: jax.Array,
  settings: decoding.DecodeSettings,
  *,
  rng: jax.Array | None = None,
  repeat_ban_mask: jax.Array | None = None,
) -> jax.Array:
  """The full inference path, traceable: front end, encoder, decoding.

  Args:
    loaded: the model (config and module; its own params are not used).
    params: the parameters to run with.
    waveform: float32 `[batch, samples]` mono at `loaded.sample_rate`.
    paddings: float32 `[batch, samples]`, 1.0 after the end of each clip.
    settings: decoding settings.
    rng: PRNG key for `method='sample'`.
    repeat_ban_mask: bool `[vocab]` for `ban_repeated_content_words`.

  Returns:
    int32 tokens `[batch, settings.max_len]`: words, EOS, then PAD.
  """
  features, frame_paddings = frontend.log_mel(
    waveform, paddings, loaded.config.frontend, loaded.sample_rate
  )
  if repeat_ban_mask is None and settings.ban_repeated_content_words:
    raise ValueError('ban_repeated_content_words needs a repeat_ban_mask')
  output = decoding.generate(
    loaded.model,
    params,
    features,
    frame_paddings,
    settings,
    rng=rng,
    repeat_ban_mask=repeat_ban_mask,
  )
  return output.tokens


def window_bounds(
  num_samples: int, window: int, hop: int, min_samples: int = 1
) -> list[tuple[int, int]]:
  """Cuts a recording into windows `[start, end)` in samples.

  Windows start at multiples of `hop` and are `window` long; the last one
  ends at the end of the recording. A tail shorter than `min_samples`
  (after the first window) is left out: the window before covers all but
  that sliver. A recording no longer than `window` is one window.

  Args:
    num_samples: length of the recording.
    window: window length in samples.
    hop: distance between window starts in samples (<= window leaves no gap).
    min_samples: shortest tail worth its own window.

  Returns:
    `[(start, end), ...]` in order.
  """
  if window <= 0 or hop <= 0:
    raise ValueError(f'window and hop must be positive, got {window}, {hop}')
  bounds = [(0, min(window, num_samples))]
  start = 0
  while start + window < num_samples:
    start += hop
    end = min(start + window, num_samples)
    if end - start < min_samples:
      break
    bounds.append((start, end))
  return bounds


# Padded lengths below this are not used: the taggers' convolution stacks need
# about 1.25 s of input (the ConvNeXt's stem and three stride-2 stages).
MIN_BUCKET_SECONDS = 2.0


def bucket_samples(num_samples: int, window: int, buckets: int = 4, shortest: int = 1) -> int:
  """The padded length of a batch whose longest clip has `num_samples` samples.

  Args:
    num_samples: the longest clip (<= `window`).
    window: the longest padded length (the caption window).
    buckets: how many lengths there are: `ceil(window / 2**i)` for `i <
      buckets` (1 = always `window`).
    shortest: lengths below this are left out.

  Returns:
    The shortest of those lengths that holds `num_samples`.
  """
  if not 0 < num_samples <= window:
    raise ValueError(f'clip of {num_samples} samples: need 1..{window} (the window)')
  for i in range(buckets - 1, 0, -1):
    length = -(-window // (1 << i))
    if num_samples <= length and length >= shortest:
      return length
  return window


def batch_rows(count: int, batch_size: int) -> int:
  """Rows to compile for `count` clips: `batch_size`, or a power of two for a last partial batch."""
  if count >= batch_size:
    return batch_size
  return min(batch_size, 1 << max(count - 1, 0).bit_length())


class AudioCaptioner:
  """Captions float waveforms with a loaded model, in fixed-shape batches."""

  def __init__(
    self,
    loaded: LoadedModel,
    settings: decoding.DecodeSettings,
    *,
    repeat_ban_mask: np.ndarray | None = None,
    batch_size: int = 16,
    window_seconds: float | None = None,
    length_buckets: int = 4,
    seed: int = 0,
  ):
    """Builds the jitted inference function (compiled on first use).

    Args:
      loaded: the model.
      settings: decoding settings (see `make_settings`).
      repeat_ban_mask: bool `[vocab]` when `ban_repeated_content_words`.
      batch_size: clips per call of the compiled function.
      window_seconds: the longest clip, and the longest padded length
        (default: the model's training clip length).
      length_buckets: padded lengths a batch may get (`bucket_samples`);
        1 pads every clip to the window.
      seed: sampling seed (batch i uses `fold_in(key(seed), i)`).
    """
    if batch_size < 1 or length_buckets < 1:
      raise ValueError(
        f'batch_size and length_buckets must be >= 1: {batch_size}, {length_buckets}'
      )
    self.loaded = loaded
    self.settings = settings
    self.batch_size = batch_size
    seconds = window_seconds or loaded.train_seconds
    self.window_samples = max(1, int(round(seconds * loaded.sample_rate)))
    vocab = loaded.model.config.vocab_size
    mask = np.zeros((vocab,), bool) if repeat_ban_mask is None else repeat_ban_mask
    self._mask = jnp.asarray(mask)
    self._key = jax.random.key(seed)
    self._calls = 0
    self.length_buckets = length_buckets
    self.shapes: list[tuple[int, int]] = []  # (rows, samples) of each model call so far.

    def run(params, waveform, paddings, rng, mask):
      return waveform_to_tokens(
        loaded, params, waveform, paddings, settings, rng=rng, repeat_ban_mask=mask
      )

    self._run = jax.jit(run)

  def caption_tokens(self, clips: Sequence[np.ndarray]) -> np.ndarray:
    """Token ids for clips of at most `window_samples` samples each.

    Args:
      clips: float32 waveforms `[n_i]` at the model's sample rate.

    Returns:
      int32 `[len(clips), max_len]`.

    Clips are batched shortest first (so a batch's padded length,
    `bucket_samples` of its longest clip, fits them all closely); rows come
    back in the order given.
    """
    self._check_lengths(clips)
    order = sorted(range(len(clips)), key=lambda i: clips[i].shape[0])
    tokens = np.zeros((len(clips), self.settings.max_len), np.int32)
    for first in range(0, len(order), self.batch_size):
      chunk = order[first : first + self.batch_size]
      tokens[chunk] = self._caption_batch([clips[i] for i in chunk])
    return tokens

  def _check_lengths(self, clips: Sequence[np.ndarray]) -> None:
    for clip in clips:
      if not 0 < clip.shape[0] <= self.window_samples:
        raise ValueError(f'clip of {clip.shape[0]} samples: need 1..{self.window_samples}')

  def _caption_batch(self, chunk: Sequence[np.ndarray]) -> np.ndarray:
    """Tokens `[len(chunk), max_len]` of at most `batch_size` clips, in one model call."""
    return np.asarray(self._padded_call(self._run, chunk))[: len(chunk)]

  def _padded_call(self, fn, chunk: Sequence[np.ndarray]):
    """`fn(params, waveform, paddings, rng, mask)` on `chunk` padded to a bucket shape."""
    rows = batch_rows(len(chunk), self.batch_size)
    longest = max(clip.shape[0] for clip in chunk)
    shortest = int(MIN_BUCKET_SECONDS * self.loaded.sample_rate)
    samples = bucket_samples(longest, self.window_samples, self.length_buckets, shortest)
    waveform = np.zeros((rows, samples), np.float32)
    paddings = np.ones((rows, samples), np.float32)
    for i, clip in enumerate(chunk):
      waveform[i, : clip.shape[0]] = clip
      paddings[i, : clip.shape[0]] = 0.0
    rng = jax.random.fold_in(self._key, self._calls)
    self._calls += 1
    self.shapes.append((rows, samples))
    return fn(self.loaded.params, waveform, paddings, rng, self._mask)

  def caption_clips(self, clips: Sequence[np.ndarray]) -> list[str]:
    """Captions for clips of at most `window_samples` samples each."""
    if self.settings.rerank != 'none':  # N candidates re-ranked by CLAP (decoding/rerank.py).
      return self._reranked_captions(clips)
    return [self.loaded.tokenizer.decode(row.tolist()) for row in self.caption_tokens(clips)]

  def _reranked_captions(self, clips: Sequence[np.ndarray]) -> list[str]:
    """`caption_clips` under `settings.rerank`: candidates in the same batches, then CLAP."""
    from aac_jax.decoding import rerank

    s, loaded = self.settings, self.loaded
    if not hasattr(self, '_rerank'):

      def run(params, waveform, paddings, rng, mask):
        feats, pads = frontend.log_mel(
          waveform, paddings, loaded.config.frontend, loaded.sample_rate
        )
        return rerank.generate_candidates(
          loaded.model, params, feats, pads, s, rng=rng, repeat_ban_mask=mask
        )

      self._rerank = (jax.jit(run), rerank.ClapReranker(s.rerank_clap_dir))
    run, reranker = self._rerank
    self._check_lengths(clips)
    out = []
    for first in range(0, len(clips), self.batch_size):
      chunk = list(clips[first : first + self.batch_size])
      decoded = self._padded_call(run, chunk)
      tokens, scores = np.asarray(decoded.tokens), np.asarray(decoded.scores)[: len(chunk)]
      texts = [[loaded.tokenizer.decode(t.tolist()) for t in row] for row in tokens[: len(chunk)]]
      chosen, _ = rerank.rerank(
        texts, scores, chunk, loaded.sample_rate, reranker.similarity, s.rerank_weight
      )
      out.extend(chosen)
    return out
