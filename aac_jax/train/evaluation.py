"""Evaluation: greedy captions for an eval split, scored and written out.

`Evaluator.evaluate(params, split, step)` decodes every clip of the split
over the mesh with `config.eval.decode` (front end, encoder and search
inside one `jax.jit`, `decoding.make_sharded_generate_fn`),
detokenizes on the host, computes BLEU-1..4, ROUGE-L and CIDEr-D
(`aac_jax.metrics`), the event diagnostics when the dataset is
`synthetic_aac` and the fluency proxies, and writes `<workdir>/predictions/
<split>_step<step>.json` (clip id, prediction, references, per-clip scores).
A mixture run scores each of its evaluated sources (`Evaluator`). With
`eval.decode.rerank='clap'` the jitted call returns `beam_size` candidates
per clip (`decoding.rerank.generate_candidates`) and the host keeps the one
`decoding.rerank.rerank` chooses with CLAP, as `aac-caption` does.
"""

import functools
import json
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from aac_jax import decoding, files, metrics
from aac_jax.data import mixture, pipeline, sources
from aac_jax.decoding import rerank
from aac_jax.metrics import eval_config
from aac_jax.train import checkpointing, parallel, steps
from aac_jax.train.metric_writers import MetricWriter

SYNTHETIC_DATASET = 'synthetic_aac'


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
  with_intervals: bool = False,
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
  """The metric set of `config.eval`, plus the synthetic event diagnostics when `events` is given.

  Args:
    predictions: `[n]` predicted captions, in clip order.
    split: the evaluated clips (references).
    events: `[n]` ground-truth event JSON (`synthetic_aac`), or None.
    eval_cfg: `config.eval` (`meteor`, `spice`, `dcase2024`).
    with_intervals: also `<metric>_low` / `<metric>_high`, the 95 % bootstrap
      interval (`eval.dcase2024.bootstrap` resamples; the test pass).

  Returns:
    `(corpus scores, per-clip scores [n] by metric)`.
  """
  result = eval_config.caption_metrics_from_config(
    predictions, split.references, eval_cfg, with_intervals
  )
  for name, why in result.unavailable.items():
    if 'not requested' not in why:
      logging.log_first_n(logging.WARNING, 'Metric %s unavailable: %s', 5, name, why)
  corpus = {k: float(v) for k, v in result.corpus.items()}
  for name, (low, high) in result.intervals.items():
    corpus[f'{name}_low'], corpus[f'{name}_high'] = float(low), float(high)
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
  """Writes `[{id, prediction, references, scores}, ...]` as JSON, atomically (process 0)."""
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
  files.write_text(path, json.dumps(rows, indent=1, ensure_ascii=False))


def sample_captions_text(split: pipeline.EvalSplit, predictions: Sequence[str], count: int) -> str:
  """Markdown lines `id: prediction (ref: first reference)` for TensorBoard."""
  lines = [
    f'`{split.ids[i]}`: **{predictions[i]}**  (ref: {split.references[i][0] if split.references[i] else ""})'
    for i in range(min(count, len(split)))
  ]
  return '  \n'.join(lines)


class Evaluator:
  """Decodes and scores eval splits of a run; eval datasets are read once.

  Captions are decoded with `config.eval.decode` through
  `decoding.make_sharded_generate_fn` (front end inside the jit). Scores are
  the caption metrics, the synthetic event diagnostics (`synthetic_aac`) and
  the fluency proxies (`metrics.diversity_stats`).

  A mixture run (`config.dataset.mixture`) scores each evaluated source
  (`mixture.eval_sources`) on its own validation or test split, decoded with
  its task token: scalars `<split>/<source>/<metric>`, predictions
  `<split>_<source>_step<N>.json`. The source named by
  `config.train.best_source` ('' = `dataset.name`'s) is also reported under
  the single-dataset names (`<split>/<metric>`, `<split>_step<N>.json`) and
  its scores are the ones that rank checkpoints (`train.best_metric`).
  """

  def __init__(self, exp, writer: MetricWriter, training_captions: Sequence[str] | None = None):
    """Builds the jitted decoder of a run.

    Args:
      exp: the run's `trainer.Experiment` (config, mesh, eval model, tokenizer, workdir).
      writer: where scalars and sample captions go.
      training_captions: train references (enables `novel_rate`), or None.
    """
    config = exp.config
    self._config, self._mesh, self._tokenizer = config, exp.mesh, exp.tokenizer
    self._workdir, self._writer = epath.Path(exp.workdir), writer
    self._training_captions = training_captions
    self._splits: dict[tuple[str, str], tuple[pipeline.EvalSplit, Any, list[str] | None]] = {}
    self._sources = mixture.eval_sources(config.dataset)
    self._best = mixture.best_source(config.dataset, config.train.get('best_source', ''))
    self._reranker = _make_reranker(config.eval.decode)
    self._generate = {s.name: self._generate_fn(exp, s.task) for s in self._sources}
    self._rng = jax.random.key(config.seed)

  def _generate_fn(self, exp, task: str):
    """`(generate, repeat-ban mask)` decoding with `task`'s token first."""
    model, overrides = _with_task(exp.eval_model, task, exp.tokenizer.tokens)
    settings = decoding.model_decode_settings(
      self._config.eval.decode, model.config.max_decode_len, **overrides
    )
    features = functools.partial(
      _features,
      frontend_cfg=self._config.frontend,
      sample_rate=int(self._config.dataset.sample_rate),
    )
    search = rerank.generate_candidates if self._reranker else None
    generate = decoding.make_sharded_generate_fn(
      model, settings, exp.mesh, frontend=features, search=search
    )
    mask = decoding.repeat_ban_mask_for(exp.tokenizer.tokens, settings)
    return generate, jax.device_put(mask, parallel.replicated(exp.mesh))

  def _get_split(self, source: mixture.EvalSource, name: str):
    if (source.name, name) not in self._splits:
      split, batches = pipeline.make_eval_batches(
        source.dataset,
        name,
        self._config.eval.batch_size,
        max_examples=int(self._config.eval.max_examples),
      )
      events = None
      if source.dataset.name == SYNTHETIC_DATASET:
        events = read_events(source.dataset, split)
      self._splits[source.name, name] = (split, batches, events)
    return self._splits[source.name, name]

  def predict(
    self, params: Any, name: str, source: mixture.EvalSource | None = None
  ) -> tuple[pipeline.EvalSplit, list[str]]:
    """Captions of every clip of split `name` of `source` (default: the best source)."""
    source = source or self._best
    split, batches, _ = self._get_split(source, name)
    generate, repeat_ban_mask = self._generate[source.name]
    outputs, clips = [], {}
    for i, batch in enumerate(batches):  # Dispatch everything first: reading overlaps decoding.
      audio = parallel.shard_batch({k: batch[k] for k in ('audio', 'audio_paddings')}, self._mesh)
      index = parallel.shard_batch({'index': batch['index']}, self._mesh)
      rng = jax.random.fold_in(self._rng, i)
      out = generate(params, audio['audio'], audio['audio_paddings'], rng, repeat_ban_mask)
      outputs.append({'tokens': out.tokens, 'scores': out.scores, **index})
      if self._reranker:
        clips.update(_real_clips(batch))
    captions = [''] * len(split)
    for out in map(parallel.gather_to_host, outputs):
      real = np.asarray(out['index']) >= 0
      for index, caption in zip(out['index'][real], self._captions(out, real, clips), strict=True):
        captions[int(index)] = caption
    return split, captions

  def _captions(self, out: dict[str, np.ndarray], real: np.ndarray, clips: dict) -> list[str]:
    """The captions of a decoded batch's real rows (chosen among candidates when re-ranking)."""
    tokens = np.asarray(out['tokens'])[real]
    if self._reranker is None:
      return [self._tokenizer.decode(row.tolist()) for row in tokens]
    if not real.any():
      return []
    texts = [[self._tokenizer.decode(t.tolist()) for t in row] for row in tokens]
    audio = [clips[int(i)] for i in out['index'][real]]
    d = self._config.eval.decode
    rate = int(self._config.dataset.sample_rate)
    scores = np.asarray(out['scores'])[real]
    return rerank.rerank(texts, scores, audio, rate, self._reranker.similarity, d.rerank_weight)[0]

  def evaluate(
    self, params: Any, name: str, step: int, tag: str = '', with_intervals: bool = False
  ) -> dict[str, float]:
    """Decodes and scores split `name`; writes predictions, scalars and sample captions.

    In a mixture run, `name` = `dataset.validation_split` or `test_split`
    scores every evaluated source on its own split of that role, reported
    under `name` (see the class docstring); any other split is the best
    source's alone.

    Args:
      params: the parameters to evaluate.
      name: the split.
      step: the step the scores are logged at.
      tag: names the predictions file and the scalars' prefix instead of
        the step (e.g. 'init' for SCST's starting point).
      with_intervals: add bootstrap intervals (see `score`).

    Returns:
      The best source's caption metrics, event diagnostics (synthetic data)
      and fluency proxies; in a mixture run also every source's, as
      `<source>/<metric>`.
    """
    dataset = self._config.dataset
    roles = {dataset.validation_split: 'validation_split', dataset.test_split: 'test_split'}
    if not dataset.mixture or name not in roles:
      return self._evaluate_source(params, self._best, name, (name, ''), step, tag, with_intervals)
    scores = {}
    for source in self._sources:
      best = source.name == self._best.name
      shown = (name, source.name) + (('',) if best else ())
      own = self._evaluate_source(
        params, source, source.dataset[roles[name]], shown, step, tag, with_intervals
      )
      scores.update({f'{source.name}/{k}': v for k, v in own.items()})
      if best:
        scores.update(own)
    return scores

  def _evaluate_source(
    self,
    params: Any,
    source: mixture.EvalSource,
    split_name: str,
    shown: tuple[str, ...],
    step: int,
    tag: str,
    with_intervals: bool,
  ) -> dict[str, float]:
    """Scores `source` on its split `split_name`, reported as `shown`.

    `shown` = `(split, *labels)`: written once per label, '' under the
    single-dataset names, a source name under `<split>/<source>/` scalars
    and `<split>_<source>_` predictions.
    """
    split, predictions = self.predict(params, split_name, source)
    events = self._get_split(source, split_name)[2]
    scores, per_clip = score(predictions, split, events, self._config.eval, with_intervals)
    fluency = metrics.diversity_stats(predictions, self._training_captions)
    scores.update({k: float(v) for k, v in fluency.items()})
    name, *labels = shown
    count = int(self._config.train.num_sample_captions)
    samples = sample_captions_text(split, predictions, count)
    for label in labels:
      stem = f'{name}_{label}' if label else name
      path = self._workdir / 'predictions' / f'{stem}_{tag or f"step{step}"}.json'
      write_predictions(path, split, predictions, per_clip)
      prefix = (f'{name}_{tag}' if tag else name) + (f'/{label}' if label else '')
      self._writer.write_scalars(step, {f'{prefix}/{k}': v for k, v in scores.items()})
      self._writer.write_texts(step, {f'{prefix}/samples': samples})
    self._writer.flush()
    logging.info(
      'Evaluated %s (%s) at step %d on %d clips', split_name, source.name, step, len(split)
    )
    return scores


def _make_reranker(decode_cfg: ml_collections.ConfigDict) -> rerank.ClapReranker | None:
  """The CLAP re-ranker of `eval.decode` (None without `rerank`); loaded before training starts."""
  if decode_cfg.rerank == 'none':
    return None
  if jax.process_count() > 1:
    raise ValueError(
      "eval.decode.rerank='clap' re-ranks on one process (each host needs every clip's audio): "
      "set it to 'none' for multi-process runs and re-rank with aac-caption"
    )
  return rerank.ClapReranker(decode_cfg.rerank_clap_dir)


def _real_clips(batch: dict[str, np.ndarray]) -> dict[int, np.ndarray]:
  """Clip index -> its unpadded float waveform, for the real rows of a host eval batch."""
  return {
    int(i): batch['audio'][row][batch['audio_paddings'][row] < 0.5]
    for row, i in enumerate(batch['index'])
    if i >= 0
  }


def _with_task(model, task: str, tokens: list[str]):
  """`(model, decode overrides)` starting captions with `task`'s token ('' = as trained)."""
  if not task:
    return model, {}
  task_id = tokens.index(mixture.task_token(task))
  return model.clone(config=model.config.replace(task_token_id=task_id)), {'bos_id': task_id}


def _features(audio, audio_paddings, *, frontend_cfg, sample_rate):
  """The eval front end (no SpecAugment) for `make_sharded_generate_fn`."""
  batch = {'audio': audio, 'audio_paddings': audio_paddings}
  return steps.compute_features(batch, None, frontend_cfg, sample_rate)


def evaluate_best_on_test(exp, manager, state, evaluator: Evaluator) -> tuple[dict, int]:
  """After the last step: the best checkpoint (by validation) on the test split.

  Returns:
    `(scores, step)` of the checkpoint evaluated.
  """
  manager.wait_until_finished()
  best = manager.best_step()
  params, step = state.params, int(state.step)
  if best is not None and best != step:
    target = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state.params
    )
    params, step, _ = checkpointing.restore_params(exp.workdir, exp.config.train, target)
  logging.info('Test evaluation with the checkpoint of step %d', step)
  return evaluator.evaluate(params, exp.config.dataset.test_split, step, with_intervals=True), step
