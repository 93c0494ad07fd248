"""Evaluation: greedy captions for an eval split, scored and written out.

`Evaluator.evaluate(params, split, step)` decodes every clip of the split
data-parallel (front end, encoder and greedy search inside one
`jax.jit(jax.shard_map(...))`), detokenizes on the host, computes BLEU-1..4,
ROUGE-L and CIDEr-D (`aac_jax.metrics`) plus the event diagnostics when the
dataset is `synthetic_aac`, and writes `<workdir>/predictions/
<split>_step<step>.json` (clip id, prediction, references).
"""

import functools
import json
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from aac_jax import decoding, metrics
from aac_jax.data import pipeline, sources
from aac_jax.data.tokenizer import Tokenizer
from aac_jax.train import parallel, steps
from aac_jax.train.metric_writers import MetricWriter

SYNTHETIC_DATASET = 'synthetic_aac'


def predict_step(
  params: Any,
  batch: dict[str, jax.Array],
  repeat_ban_mask: jax.Array,
  *,
  model: nn.Module,
  settings: decoding.DecodeSettings,
  frontend_cfg: ml_collections.ConfigDict,
  sample_rate: int,
) -> dict[str, jax.Array]:
  """Greedy captions for one device's share of an eval batch (pmap body).

  Args:
    params: replicated model parameters.
    batch: `audio`, `audio_paddings` float32 `[b, samples]`, `index` int32
      `[b]` (clip position, -1 for fillers).
    repeat_ban_mask: bool `[vocab]`, content words that may not repeat (used
      with `settings.ban_repeated_content_words`).
    model: the `Captioner`.
    settings: decoding settings (greedy).
    frontend_cfg: `config.frontend`.
    sample_rate: `config.dataset.sample_rate`.

  Returns:
    `tokens` int32 `[b, max_len]` and `index` `[b]` (passed through so the
    host can match captions to clips after gathering).
  """
  features, paddings = steps.compute_features(batch, None, frontend_cfg, sample_rate)
  output = decoding.generate(
    model, params, features, paddings, settings, repeat_ban_mask=repeat_ban_mask
  )
  return {'tokens': output.tokens, 'index': batch['index']}


def make_predict_step(mesh: Mesh, **static: Any):
  """`predict_step` mapped over the data mesh and jitted: `fn(params, batch, mask)`."""
  body = functools.partial(predict_step, **static)
  # The search loops start from device-invariant buffers and carry
  # per-device values; no collective runs inside, so the varying-manual-axes
  # check is off (as in aac_jax.decoding.make_sharded_generate_fn).
  mapped = jax.shard_map(
    body,
    mesh=mesh,
    in_specs=(P(), P(parallel.AXIS), P()),
    out_specs=P(parallel.AXIS),
    check_vma=False,
  )
  return jax.jit(mapped)


def make_repeat_ban_mask(
  tokenizer: Tokenizer, settings: decoding.DecodeSettings | None = None
) -> np.ndarray:
  """bool `[vocab]`: the words `ban_repeated_content_words` stops repeating."""
  return decoding.repeat_ban_mask_for(tokenizer.tokens, settings or decoding.DecodeSettings())


def _text(value: Any) -> str:
  return value.decode('utf-8') if isinstance(value, bytes) else str(value)


def read_events(dataset_cfg: ml_collections.ConfigDict, split: pipeline.EvalSplit) -> list[str]:
  """Ground-truth event JSON of the clips of a `synthetic_aac` eval split."""
  source = sources.open_source(dataset_cfg, split.name)
  events = []
  for index, clip_id in enumerate(split.ids):
    record = source[index]
    if _text(record['id']) != clip_id:
      raise ValueError(f'{split.name}: record {index} is not clip {clip_id}')
    events.append(_text(record['events']))
  return events


def score(
  predictions: Sequence[str],
  split: pipeline.EvalSplit,
  events: Sequence[str] | None,
  eval_cfg: ml_collections.ConfigDict,
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
  """Caption metrics, plus the synthetic event diagnostics when `events` is given.

  Args:
    predictions: `[n]` predicted captions, in clip order.
    split: the evaluated clips (references).
    events: `[n]` ground-truth event JSON (`synthetic_aac`), or None.
    eval_cfg: `config.eval` (`meteor`, `spice` switches).

  Returns:
    `(corpus scores, per-clip scores [n] by metric)`.
  """
  result = metrics.compute_caption_metrics(
    list(predictions),
    split.references,
    meteor=bool(eval_cfg.get('meteor', False)),
    spice=bool(eval_cfg.get('spice', False)),
  )
  for name, why in result.unavailable.items():
    if 'not requested' not in why:
      logging.log_first_n(logging.WARNING, 'Metric %s unavailable: %s', 5, name, why)
  corpus = {k: float(v) for k, v in result.corpus.items()}
  if events is not None:
    from aac_jax.data.synthetic import diagnostics

    corpus.update(diagnostics.score_captions(list(predictions), list(events)))
  return corpus, dict(result.per_clip)


def write_predictions(
  path: epath.Path,
  split: pipeline.EvalSplit,
  predictions: Sequence[str],
  per_clip: dict[str, np.ndarray],
) -> None:
  """Writes `[{id, prediction, references, scores}, ...]` as JSON (process 0)."""
  if jax.process_index() > 0:
    return
  rows = [
    {
      'id': clip_id,
      'prediction': pred,
      'references': refs,
      'scores': {k: float(v[i]) for k, v in per_clip.items()},
    }
    for i, (clip_id, pred, refs) in enumerate(
      zip(split.ids, predictions, split.references, strict=True)
    )
  ]
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(rows, indent=1, ensure_ascii=False))


def sample_captions_text(split: pipeline.EvalSplit, predictions: Sequence[str], count: int) -> str:
  """Markdown lines `id: prediction (ref: first reference)` for TensorBoard."""
  lines = [
    f'`{split.ids[i]}`: **{predictions[i]}**  (ref: {split.references[i][0] if split.references[i] else ""})'
    for i in range(min(count, len(split)))
  ]
  return '  \n'.join(lines)


class Evaluator:
  """Decodes and scores eval splits for a run; eval datasets are built once."""

  def __init__(
    self,
    config: ml_collections.ConfigDict,
    mesh: Mesh,
    model: nn.Module,
    tokenizer: Tokenizer,
    workdir: epath.Path,
    writer: MetricWriter,
  ):
    self._config = config
    self._mesh = mesh
    self._tokenizer = tokenizer
    self._workdir = epath.Path(workdir)
    self._writer = writer
    self._splits: dict[str, tuple[pipeline.EvalSplit, Any, list[str] | None]] = {}
    settings = decoding.make_decode_settings(config.decode, method='greedy')
    sample_rate = int(config.dataset.sample_rate)
    key = (
      predict_step,
      model.config,
      settings,
      config.frontend.to_json(sort_keys=True),
      sample_rate,
      tuple(d.id for d in mesh.devices.flat),
    )
    self._predict = steps.cached_step(
      key,
      lambda: make_predict_step(
        mesh, model=model, settings=settings, frontend_cfg=config.frontend, sample_rate=sample_rate
      ),
    )

    self._repeat_ban_mask = jax.device_put(
      make_repeat_ban_mask(tokenizer, settings), parallel.replicated(mesh)
    )

  def _get_split(self, name: str):
    if name not in self._splits:
      split, batches = pipeline.make_eval_batches(
        self._config.dataset,
        name,
        self._config.eval.batch_size,
        max_examples=int(self._config.eval.max_examples),
      )
      events = None
      if self._config.dataset.name == SYNTHETIC_DATASET:
        events = read_events(self._config.dataset, split)
      self._splits[name] = (split, batches, events)
    return self._splits[name]

  def predict(self, params: Any, name: str) -> tuple[pipeline.EvalSplit, list[str]]:
    """Greedy captions of every clip of split `name`, in clip order."""
    split, batches, _ = self._get_split(name)
    outputs = []
    for batch in batches:  # Dispatch everything first: reading overlaps decoding.
      local = {k: batch[k] for k in ('audio', 'audio_paddings', 'index')}
      global_batch = parallel.shard_batch(local, self._mesh)
      outputs.append(self._predict(params, global_batch, self._repeat_ban_mask))
    captions = [''] * len(split)
    for out in map(parallel.gather_to_host, outputs):
      for index, tokens in zip(out['index'], out['tokens'], strict=True):
        if index >= 0:
          captions[int(index)] = self._tokenizer.decode(np.asarray(tokens).tolist())
    return split, captions

  def evaluate(self, params: Any, name: str, step: int) -> dict[str, float]:
    """Decodes, scores and writes predictions; returns the metrics."""
    split, predictions = self.predict(params, name)
    scores, per_clip = score(predictions, split, self._get_split(name)[2], self._config.eval)
    path = self._workdir / 'predictions' / f'{name}_step{step}.json'
    write_predictions(path, split, predictions, per_clip)
    count = int(self._config.train.num_sample_captions)
    self._writer.write_texts(
      step, {f'{name}/samples': sample_captions_text(split, predictions, count)}
    )
    return scores

  def evaluate_and_report(self, params: Any, name: str, step: int) -> dict[str, float]:
    """`evaluate`, then writes the scores as `<split>/<metric>` scalars."""
    scores = self.evaluate(params, name, step)
    self._writer.write_scalars(step, {f'{name}/{k}': v for k, v in scores.items()})
    self._writer.flush()
    logging.info('Evaluated %s at step %d on %d clips', name, step, len(self._get_split(name)[0]))
    return scores
