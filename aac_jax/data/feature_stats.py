"""Log-mel normalisation statistics of a training split.

The front end feeds the model `(log-mel - feature_mean) / feature_std`
(`aac_jax.audio.frontend.normalize_features`). With
`config.frontend.feature_stats = 'measure'` a run measures both numbers on
its training split before it builds anything else, saves them as
`<workdir>/feature_stats.json` and writes them into the config it saves, so
evaluation, captioning, export and SCST use exactly the training numbers.
A restart reads the saved file; a run with `train.init_from` starts with a
copy of that run's file (`aac_jax.train.prepare`: its parameters were
trained on those features).
A mixture run (`config.dataset.mixture`) measures its entries' clips in
the proportions of their weights (`measure_mixture`), not `dataset.name`'s.
`'fixed'` uses `feature_mean` / `feature_std` as configured.

  python tools/feature_stats.py --config configs/clotho.py   # prints them
"""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from aac_jax import files
from aac_jax.audio import frontend
from aac_jax.data import clips, mixture, sources

STATS_FILENAME = 'feature_stats.json'
MODES = ('measure', 'fixed')
DEFAULT_NUM_CLIPS = 256
_BATCH = 16


def clip_indices(num_records: int, num_clips: int) -> np.ndarray:
  """`num_clips` record indices spread evenly over the split (all if fewer)."""
  if num_records <= 0:
    raise ValueError('the training split is empty: no clips to measure features on')
  count = min(num_clips, num_records)
  return np.unique(np.linspace(0, num_records - 1, count).round().astype(np.int64))


def measure(
  source,
  dataset_cfg: ml_collections.ConfigDict,
  frontend_cfg: ml_collections.ConfigDict,
  num_clips: int = DEFAULT_NUM_CLIPS,
) -> dict[str, float]:
  """Mean and standard deviation of the raw log-mel over real frames and bins.

  Args:
    source: the open split to measure (`aac_jax.data.sources.open_source`).
    dataset_cfg: `config.dataset` (the clips are cut to `max_audio_seconds`).
    frontend_cfg: `config.frontend` (its own mean/std are ignored).
    num_clips: clips read, spread evenly over the split.

  Returns:
    `{'mean', 'std', 'num_clips', 'num_frames'}`.
  """
  clips_read = [(source, int(i)) for i in clip_indices(len(source), num_clips)]
  return _measure_clips(clips_read, dataset_cfg, frontend_cfg)


def mixture_clip_counts(entry_weights: list[float], num_clips: int) -> list[int]:
  """Clips to read per mixture entry: `num_clips` split in proportion to the weights.

  Largest remainders round the shares; every entry gets at least one clip.
  """
  shares = np.asarray(entry_weights, np.float64) * num_clips
  counts = np.floor(shares).astype(np.int64)
  for i in np.argsort(-(shares - counts), kind='stable')[: num_clips - int(counts.sum())]:
    counts[i] += 1
  return [max(int(c), 1) for c in counts]


def measure_mixture(
  dataset_cfg: ml_collections.ConfigDict,
  frontend_cfg: ml_collections.ConfigDict,
  num_clips: int = DEFAULT_NUM_CLIPS,
) -> dict[str, float]:
  """`measure` over a mixture's entries, weighted as training reads them.

  Entry `i` gives `mixture_clip_counts` clips (spread evenly over its
  split), so the clips measured come from the entries in the proportions of
  their weights, as the mixture's batches do; every real frame then counts
  once (an entry with fewer records than its share gives them all).

  Args:
    dataset_cfg: `config.dataset` with a non-empty `mixture`.
    frontend_cfg: `config.frontend`.
    num_clips: clips read over all entries.

  Returns:
    `measure`'s keys, plus `clips_per_entry` (`'<dataset>:<split>'` -> clips).
  """
  entries = mixture.parse(dataset_cfg)
  counts = mixture_clip_counts(mixture.weights(entries), num_clips)
  clips_read, per_entry = [], {}
  for entry, count in zip(entries, counts, strict=True):
    source = sources.open_source(mixture.entry_config(dataset_cfg, entry), entry.split)
    indices = clip_indices(len(source), count)
    clips_read += [(source, int(i)) for i in indices]
    per_entry[f'{entry.dataset}:{entry.split}'] = len(indices)
  stats = _measure_clips(clips_read, dataset_cfg, frontend_cfg)
  return {**stats, 'clips_per_entry': per_entry}


def _measure_clips(
  clips_read: list[tuple], dataset_cfg: ml_collections.ConfigDict, frontend_cfg
) -> dict[str, float]:
  """`measure` over `(source, record index)` pairs."""
  num_samples = int(round(dataset_cfg.max_audio_seconds * dataset_cfg.sample_rate))
  raw_cfg = ml_collections.ConfigDict(frontend_cfg.to_dict())
  raw_cfg.feature_mean, raw_cfg.feature_std = 0.0, 1.0
  sample_rate = int(dataset_cfg.sample_rate)

  @jax.jit
  def sums(waveform, paddings):
    log, frame_paddings = frontend.log_mel(waveform, paddings, raw_cfg, sample_rate)
    real = (1.0 - frame_paddings)[..., None]
    return jnp.sum(real * log), jnp.sum(real * log * log), jnp.sum(real) * log.shape[-1]

  empty = (np.zeros(num_samples, np.float32), np.ones(num_samples, np.float32))
  total = total_sq = count = 0.0
  for start in range(0, len(clips_read), _BATCH):
    fitted = [
      clips.fit_audio(source[index]['audio'], num_samples)
      for source, index in clips_read[start : start + _BATCH]
    ]
    fitted += [empty] * (_BATCH - len(fitted))  # One shape: one compilation.
    s, sq, n = sums(np.stack([w for w, _ in fitted]), np.stack([p for _, p in fitted]))
    total, total_sq, count = total + float(s), total_sq + float(sq), count + float(n)
  if count == 0:
    raise ValueError('the clips measured have no audio frames')
  mean = total / count
  std = float(np.sqrt(max(total_sq / count - mean * mean, 0.0)))
  num_frames = int(count / frontend_cfg.n_mels)
  return {
    'mean': mean,
    'std': max(std, 1e-3),
    'num_clips': len(clips_read),
    'num_frames': num_frames,
  }


def resolve(config: ml_collections.ConfigDict, workdir: epath.Path, source) -> None:
  """Fills `config.frontend.feature_mean/std` in place (see the module docstring).

  Args:
    config: the run's config (front end already resolved for its encoder).
    workdir: the run's folder (its `feature_stats.json` is read or written).
    source: the open training split, measured when the run has no statistics
      (a mixture run measures its entries instead, `measure_mixture`).

  Raises:
    ValueError: `frontend.feature_stats` is not a known mode, or a fixed
      `feature_std` is not positive.
  """
  fe = config.frontend
  mode = fe.feature_stats
  if mode not in MODES:
    raise ValueError(f"frontend.feature_stats must be one of {MODES}, got '{mode}'")
  if mode == 'measure':
    stats = _load_or_measure(config, workdir, source)
    with config.unlocked():
      fe.feature_mean, fe.feature_std = float(stats['mean']), float(stats['std'])
  frontend.normalization(fe)  # Fails here, not at the first trace, on a bad fixed std.


def _load_or_measure(config: ml_collections.ConfigDict, workdir: epath.Path, source) -> dict:
  own = workdir / STATS_FILENAME
  if own.exists():
    stats = json.loads(own.read_text())
    logging.info(
      'Feature normalisation from %s: mean %.4f, std %.4f', own, stats['mean'], stats['std']
    )
    return stats
  num_clips = int(config.frontend.feature_stats_clips)
  if config.dataset.get('mixture'):
    stats = measure_mixture(config.dataset, config.frontend, num_clips)
  else:
    stats = measure(source, config.dataset, config.frontend, num_clips)
  logging.info(
    'Feature normalisation measured on %d training clips%s (%d frames): mean %.4f, std %.4f',
    stats['num_clips'],
    f' (mixture: {stats["clips_per_entry"]})' if 'clips_per_entry' in stats else '',
    stats['num_frames'],
    stats['mean'],
    stats['std'],
  )
  _save(stats, own)
  return stats


def _save(stats: dict, path: epath.Path) -> None:
  if jax.process_index() == 0:
    files.write_text(path, json.dumps(stats, indent=2) + '\n')
