"""The metric set of training evaluation, from `config.eval` (hook for the trainer).

`caption_metrics_from_config` is the one call the evaluation path makes:
the coco metrics, METEOR / SPICE where `eval.meteor` / `eval.spice`, Vocab,
and the FENSE family and bootstrap intervals where `eval.dcase2024` asks
(see `configs/base.py`). `check_metrics_config` runs before training and
fails at once when `train.best_metric` names a metric the evaluation will
not produce (FENSE not switched on, or its models missing).
"""

from collections.abc import Sequence

import ml_collections

from aac_jax.metrics import clap_score, evaluate
from aac_jax.metrics import fense as fense_lib

_FENSE_METRICS = ('sbert_sim', 'fer', 'fense', 'spider_fl')
_SPICE_METRICS = ('spice', 'spider', 'spider_fl')


def fense_options(eval_cfg: ml_collections.ConfigDict) -> fense_lib.FenseOptions:
  """FENSE model folders and run settings from `eval.dcase2024`."""
  d = eval_cfg.dcase2024
  return fense_lib.FenseOptions(
    sbert_dir=d.sbert_dir,
    echecker_dir=d.echecker_dir,
    batch_size=int(d.batch_size),
    precision=d.precision,
  )


def caption_metrics_from_config(
  predictions: Sequence[str],
  references: Sequence[Sequence[str]],
  eval_cfg: ml_collections.ConfigDict,
  with_intervals: bool = False,
) -> evaluate.CaptionMetrics:
  """Scores predictions with the metric set `config.eval` selects.

  Args:
    predictions: [n] predicted captions.
    references: [n] lists of reference captions.
    eval_cfg: `config.eval`.
    with_intervals: add bootstrap intervals (`eval.dcase2024.bootstrap`
      resamples; e.g. for the final test evaluation only).

  Returns:
    The `CaptionMetrics` (missing metrics in `unavailable`, with reasons).
  """
  d = eval_cfg.dcase2024
  return evaluate.compute_caption_metrics(
    list(predictions),
    references,
    meteor=bool(eval_cfg.meteor),
    spice=bool(eval_cfg.spice),
    fense=bool(d.fense),
    fense_options=fense_options(eval_cfg) if d.fense else None,
    bootstrap_samples=int(d.bootstrap) if with_intervals else 0,
  )


def check_metrics_config(config: ml_collections.ConfigDict) -> None:
  """Fails before training when `train.best_metric` will not be computed.

  Raises:
    ValueError: one message naming the metric, why it is missing and the fix.
  """
  best = config.train.best_metric
  if best not in evaluate.METRICS:
    return  # No metric, or one computed beside the caption metrics (diagnostics, fluency).
  if best in clap_score.NAMES:
    raise ValueError(f'train.best_metric={best} is computed by aac-evaluate --clap_dir only')
  eval_cfg = config.eval
  if best == 'meteor' and not eval_cfg.meteor:
    raise ValueError('train.best_metric=meteor needs --config.eval.meteor=True')
  if best in _SPICE_METRICS and not eval_cfg.spice:
    raise ValueError(
      f'train.best_metric={best} needs --config.eval.spice=True (and the CoreNLP jars)'
    )
  if best not in _FENSE_METRICS:
    return
  if not eval_cfg.dcase2024.fense:
    raise ValueError(f'train.best_metric={best} needs --config.eval.dcase2024.fense=True')
  scorer = fense_lib.shared_scorer(fense_options(eval_cfg))
  needs = (
    (scorer.sbert_error, best in ('sbert_sim', 'fense')),
    (scorer.checker_error, best != 'sbert_sim'),
  )
  missing = [error for error, needed in needs if needed and error]
  if missing:
    raise ValueError(f'train.best_metric={best} cannot be computed: {"; ".join(missing)}')
