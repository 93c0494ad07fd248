"""Frozen-encoder fast path: a tagger's frame embeddings of a training split, stored once.

With `model.encoder_freeze = 'all'` the tagger's frames of a clip never
change, so they can be computed once (what the DCASE 2024 baseline does
with HDF files) and training then reads them instead of audio:

  python tools/extract_embeddings.py --config configs/clotho_convnext.py:encoder_init=DIR
  python -m aac_jax.main --config configs/clotho_convnext.py:encoder_init=DIR,embeddings=auto ...

The dataset is TFDS array_record (`aac_embeddings/<name>` under the
dataset's data_dir) with `id`, `frames` (float32 `[frames, dim]`, the first
`max_audio_seconds` of each clip, no random crop) and `captions`. Its
metadata names the encoder, its converted folder and the audio dataset; a
run whose config does not match is refused. Evaluation, captioning and
export still run from audio (the run's parameters include the tagger).
"""

import dataclasses
import os
from typing import Any

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from aac_jax.audio import frontend
from aac_jax.data import clips, sources

NAME = 'aac_embeddings'
DATASET_VERSION = '1.0.0'
_BATCH = 8


def default_name(config: ml_collections.ConfigDict) -> str:
  """`<dataset>_<builder config>_<encoder>` (the name `embeddings='auto'` reads)."""
  ds = config.dataset
  parts = [ds.name, ds.builder_config, config.model.encoder]
  return '_'.join(p.replace('/', '_') for p in parts if p)


def dataset_dir(config: ml_collections.ConfigDict, name: str) -> str:
  """`<data_dir>/aac_embeddings/<name>/1.0.0`."""
  return os.path.join(os.path.expanduser(config.dataset.data_dir), NAME, name, DATASET_VERSION)


def expected_metadata(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """What a stored embeddings dataset must say to feed this run."""
  return {
    'encoder': config.model.encoder,
    'encoder_init': os.path.abspath(config.model.encoder_init) if config.model.encoder_init else '',
    'source': sources.dataset_name(config.dataset),
    'sample_rate': int(config.dataset.sample_rate),
    'max_audio_seconds': float(config.dataset.max_audio_seconds),
  }


class AacEmbeddings(tfds.core.GeneratorBasedBuilder):
  """Frame embeddings of one split, computed by `compute_fn` from the audio source."""

  VERSION = tfds.core.Version(DATASET_VERSION)
  RELEASE_NOTES = {DATASET_VERSION: 'Initial release.'}

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    # TFDS 4.9.10's own look-up needs `importlib_resources` (see the synthetic builder).
    return epath.Path(__file__)

  def __init__(self, *, split: str, records, compute_fn, dim: int, metadata: dict, **kwargs):
    self._split, self._records, self._compute_fn = split, records, compute_fn
    self._dim, self._metadata = dim, metadata
    kwargs.setdefault('file_format', 'array_record')
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description='Frame embeddings of a frozen pretrained tagger.',
      features=tfds.features.FeaturesDict(
        {
          'id': tfds.features.Text(),
          'frames': tfds.features.Tensor(
            shape=(None, self._dim), dtype=np.float32, encoding=tfds.features.Encoding.BYTES
          ),
          'captions': tfds.features.Sequence(tfds.features.Text()),
        }
      ),
      metadata=tfds.core.MetadataDict(**self._metadata),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    return {self._split: self._generate_examples()}

  def _generate_examples(self):
    records = self._records
    for start in range(0, len(records), _BATCH):
      chunk = [records[i] for i in range(start, min(start + _BATCH, len(records)))]
      for record, frames in zip(chunk, self._compute_fn(chunk), strict=True):
        clip_id = record['id'].decode() if isinstance(record['id'], bytes) else record['id']
        yield clip_id, {'id': clip_id, 'frames': frames, 'captions': list(record['captions'])}


def make_compute_fn(config: ml_collections.ConfigDict, tagger, params):
  """`(compute, dim, max_frames)`: `compute(records) -> [frames [n_i, dim]]`.

  Front end + tagger, jitted on one padded shape `[_BATCH, max_samples]`
  (a clip's frames do not depend on the padding of its batch).
  """
  max_samples = int(round(config.dataset.max_audio_seconds * config.dataset.sample_rate))
  sample_rate = int(config.dataset.sample_rate)

  @jax.jit
  def frames_of(waveform, paddings):
    features, feature_paddings = frontend.log_mel(waveform, paddings, config.frontend, sample_rate)
    return tagger.apply({'params': params}, features, feature_paddings)

  def compute(records):
    fitted = [clips.fit_audio(r['audio'], max_samples) for r in records]
    fitted += [fitted[-1]] * (_BATCH - len(fitted))  # One shape: one compilation.
    waveform = np.stack([w for w, _ in fitted])
    paddings = np.stack([p for _, p in fitted])
    frames, frame_paddings = jax.device_get(frames_of(jnp.asarray(waveform), jnp.asarray(paddings)))
    lengths = np.sum(frame_paddings < 0.5, axis=1)
    return [frames[i, : lengths[i]].astype(np.float32) for i in range(len(records))]

  shape = jax.ShapeDtypeStruct((_BATCH, max_samples), jnp.float32)
  frames_shape = jax.eval_shape(frames_of, shape, shape)[0].shape
  return compute, int(frames_shape[2]), int(frames_shape[1])


def extract_train_embeddings(config: ml_collections.ConfigDict, tagger, params) -> tuple[str, int]:
  """Runs the tagger over the training split once and stores the frames.

  Args:
    config: the run's config, front end already resolved for the encoder.
    tagger: the tagger module (`aac_jax.models.pretrained.make_tagger`).
    params: its parameters.

  Returns:
    `(folder, clips)` of the written dataset.
  """
  name = resolve_name(config) or default_name(config)
  split = config.dataset.train_split
  records = sources.open_source(config.dataset, split)
  compute, dim, max_frames = make_compute_fn(config, tagger, params)
  metadata = dict(expected_metadata(config), max_frames=max_frames, dim=dim)
  builder = AacEmbeddings(
    split=split,
    records=records,
    compute_fn=compute,
    dim=dim,
    metadata=metadata,
    data_dir=os.path.expanduser(config.dataset.data_dir),
    config=tfds.core.BuilderConfig(name=name),
  )
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return dataset_dir(config, name), len(records)


def check_stored(config: ml_collections.ConfigDict) -> str:
  """The folder of this run's stored embeddings, checked against its config.

  Raises:
    FileNotFoundError: not extracted yet (the message gives the command).
    ValueError: extracted for another encoder, checkpoint, dataset or length.
  """
  name = resolve_name(config)
  path = dataset_dir(config, name)
  if not os.path.isdir(path):
    raise FileNotFoundError(
      f'no stored embeddings {NAME}/{name} under {config.dataset.data_dir}; extract them with '
      "`python tools/extract_embeddings.py --config <this run's config>`"
    )
  stored = dict(tfds.builder_from_directory(path).info.metadata or {})
  for key, value in expected_metadata(config).items():
    if stored.get(key) != value:
      raise ValueError(
        f'{NAME}/{name} was extracted with {key}={stored.get(key)!r} but this run has {value!r}; '
        're-extract with tools/extract_embeddings.py'
      )
  return path


def train_source(dataset_cfg: ml_collections.ConfigDict) -> tuple[Any, int]:
  """`(source, max_frames)` of the stored training split (`dataset.embeddings_dir`)."""
  builder = tfds.builder_from_directory(dataset_cfg.embeddings_dir)
  max_frames = int(builder.info.metadata['max_frames'])
  return builder.as_data_source(split=dataset_cfg.train_split), max_frames


def resolve_name(config: ml_collections.ConfigDict) -> str:
  """`dataset.embeddings`, with 'auto' meaning `default_name(config)`."""
  name = config.dataset.embeddings
  return default_name(config) if name == 'auto' else name


@dataclasses.dataclass(frozen=True)
class TrainFramesExample(grain.transforms.RandomMap):
  """Stored record -> training example: frames padded to `max_frames`, one reference."""

  tokenizer: Any
  max_frames: int
  max_tokens: int

  def random_map(self, record: dict[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
    captions = record['captions']
    if len(captions) == 0:
      raise ValueError(f'training clip {record["id"]!r} has no caption')
    stored = np.asarray(record['frames'], np.float32)[: self.max_frames]
    frames = np.zeros((self.max_frames, stored.shape[1]), np.float32)
    frames[: len(stored)] = stored
    paddings = np.ones((self.max_frames,), np.float32)
    paddings[: len(stored)] = 0.0
    caption = captions[int(rng.integers(len(captions)))]
    caption = caption.decode('utf-8') if isinstance(caption, bytes) else caption
    targets = self.tokenizer.encode_targets(caption, self.max_tokens)
    return {'frames': frames, 'frame_paddings': paddings, 'targets': targets}
