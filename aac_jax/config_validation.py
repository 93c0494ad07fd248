"""Checks a whole config before any data is read or anything is compiled.

`validate(config, stage, num_devices)` collects every bad value of the
config (`configs/base.py` is the schema) and raises one `ConfigError` whose
message has one line per problem, each naming the field, the value and the
fix. The entry points call it first, so a typo costs a second, not a
compilation.
"""

import math
from collections.abc import Callable

import ml_collections

from aac_jax.data import mixture, registry
from aac_jax.decoding import settings as decode_settings
from aac_jax.metrics import eval_config, fense_models
from aac_jax.models.config import LLM_TRAIN
from aac_jax.models.llm import LORA_TARGETS
from aac_jax.models.llm_bridge import PROJECTORS

STAGES = ('train', 'scst')
FEATURE_STATS_MODES = ('measure', 'fixed')
BEST_MODES = ('max', 'min')
SCST_BASELINES = ('greedy', 'mean_others')
SCST_REWARDS = ('cider_d', 'spider', 'mix')
SCST_NORMALIZERS = ('samples', 'tokens')
SCST_FLUENCY = ('off', 'hard', 'soft')
SCST_FLUENCY = ('off', 'hard', 'soft')


class ConfigError(ValueError):
  """The config has bad values; the message holds one line per value."""


def _finite(value) -> bool:
  try:
    return math.isfinite(float(value))
  except (TypeError, ValueError):
    return False


class _Problems:
  """Collects `field=value: what is wrong; the fix` lines."""

  def __init__(self):
    self.lines: list[str] = []

  def check(self, ok: bool, field: str, value, rule: str) -> None:
    if not ok:
      self.lines.append(f'{field}={value!r}: {rule}')

  def positive(self, cfg, section: str, name: str) -> None:
    value = cfg[name]
    self.check(_finite(value) and float(value) > 0, f'{section}.{name}', value, 'must be > 0')

  def non_negative(self, cfg, section: str, name: str) -> None:
    value = cfg[name]
    self.check(_finite(value) and float(value) >= 0, f'{section}.{name}', value, 'must be >= 0')

  def splits_over_devices(self, cfg, section: str, num_shards: int) -> None:
    self.check(
      cfg.batch_size % num_shards == 0,
      f'{section}.batch_size',
      cfg.batch_size,
      f'must be divisible by the {num_shards} batch shards (mesh data x fsdp); '
      f'use a multiple of {num_shards}',
    )

  def one_of(self, cfg, section: str, name: str, allowed) -> None:
    value = cfg[name]
    self.check(value in allowed, f'{section}.{name}', value, f'must be one of {list(allowed)}')


def _dataset(c: ml_collections.ConfigDict, p: _Problems) -> None:
  d = c.dataset
  known = sorted(registry.BUILDER_MODULES)
  p.check(
    registry.is_known(d),
    'dataset.name',
    d.name,
    f'unknown dataset; use one of {known} (build real data with tools/build_dataset.py)',
  )
  for name in ('sample_rate', 'max_audio_seconds', 'max_caption_tokens', 'captions_per_clip'):
    p.positive(d, 'dataset', name)
  p.check(
    _finite(d.max_eval_audio_seconds),
    'dataset.max_eval_audio_seconds',
    d.max_eval_audio_seconds,
    'must be a number (<= 0: same as max_audio_seconds)',
  )
  p.non_negative(d, 'dataset', 'num_workers')
  p.positive(d, 'dataset', 'vocab_min_count')
  _mixture(d, c.train, p)


def _mixture(d: ml_collections.ConfigDict, t: ml_collections.ConfigDict, p: _Problems) -> None:
  """`dataset.mixture`: well formed, known datasets, audio (not stored embeddings).

  `train.best_source`: one of the sources the run evaluates.
  """
  try:
    entries = mixture.parse(d)
  except mixture.MixtureError as error:
    p.check(False, 'dataset.mixture', d.mixture, str(error))
    return
  try:
    mixture.best_source(d, t.get('best_source', ''))
  except mixture.MixtureError as error:
    p.check(False, 'train.best_source', t.get('best_source', ''), str(error))
  for i, entry in enumerate(entries):
    entry_cfg = mixture.entry_config(d, entry)
    p.check(
      registry.is_known(entry_cfg),
      f'dataset.mixture[{i}]',
      entry.dataset,
      f'unknown dataset; use one of {sorted(registry.BUILDER_MODULES)}',
    )
  p.check(
    not (entries and d.embeddings),
    'dataset.embeddings',
    d.embeddings,
    "a mixture reads audio: set dataset.embeddings='' or drop dataset.mixture",
  )


def _frontend(c: ml_collections.ConfigDict, p: _Problems) -> None:
  f = c.frontend
  for name in ('n_fft', 'win_length', 'hop_length', 'n_mels', 'log_floor', 'feature_stats_clips'):
    p.positive(f, 'frontend', name)
  p.check(f.win_length <= f.n_fft, 'frontend.win_length', f.win_length, 'must be <= frontend.n_fft')
  p.check(
    0 <= f.fmin < f.fmax <= c.dataset.sample_rate / 2,
    'frontend.fmax',
    f.fmax,
    f'need 0 <= fmin ({f.fmin}) < fmax <= sample_rate / 2 ({c.dataset.sample_rate / 2:g})',
  )
  p.one_of(f, 'frontend', 'feature_stats', FEATURE_STATS_MODES)
  if f.feature_stats == 'fixed':
    p.positive(f, 'frontend', 'feature_std')
    p.check(_finite(f.feature_mean), 'frontend.feature_mean', f.feature_mean, 'must be finite')


def _model(c: ml_collections.ConfigDict, p: _Problems) -> None:
  m = c.model
  for name in ('encoder_dim', 'encoder_heads', 'decoder_dim', 'decoder_heads', 'max_decode_len'):
    p.positive(m, 'model', name)
  p.check(
    m.encoder_dim % max(m.encoder_heads, 1) == 0,
    'model.encoder_dim',
    m.encoder_dim,
    f'must be divisible by model.encoder_heads ({m.encoder_heads})',
  )
  p.check(
    m.decoder_dim % max(m.decoder_heads, 1) == 0,
    'model.decoder_dim',
    m.decoder_dim,
    f'must be divisible by model.decoder_heads ({m.decoder_heads})',
  )
  p.check(
    m.max_decode_len >= c.dataset.max_caption_tokens + 1,
    'model.max_decode_len',
    m.max_decode_len,
    f'must be >= dataset.max_caption_tokens + 1 ({c.dataset.max_caption_tokens + 1})',
  )
  for name in ('dropout', 'attention_dropout'):
    p.check(0 <= m[name] < 1, f'model.{name}', m[name], 'must be in [0, 1)')
  p.one_of(m, 'model', 'compute_dtype', ('float32', 'bfloat16'))
  if m.decoder_style == 'llm':
    _llm(m.llm, p)


def _llm(llm: ml_collections.ConfigDict, p: _Problems) -> None:
  """`model.llm` of a `decoder_style='llm'` run (the sizes only matter without `init`)."""
  p.one_of(llm, 'model.llm', 'train', LLM_TRAIN)
  p.one_of(llm, 'model.llm', 'projector', PROJECTORS)
  for name in ('frame_stack', 'projector_dim'):
    p.positive(llm, 'model.llm', name)
  p.non_negative(llm, 'model.llm', 'lora_rank')
  p.check(
    llm.train != 'lora' or llm.lora_rank > 0,
    'model.llm.lora_rank',
    llm.lora_rank,
    "must be > 0 with model.llm.train='lora' (or train='full')",
  )
  p.check(
    0 <= llm.lora_dropout < 1, 'model.llm.lora_dropout', llm.lora_dropout, 'must be in [0, 1)'
  )
  unknown = sorted(set(llm.lora_targets) - set(LORA_TARGETS))
  p.check(not unknown, 'model.llm.lora_targets', unknown, f'must be among {list(LORA_TARGETS)}')
  p.one_of(llm, 'model.llm', 'base_dtype', ('float32', 'bfloat16'))
  p.check(
    llm.base_dtype == 'float32' or llm.train == 'lora',
    'model.llm.base_dtype',
    llm.base_dtype,
    "needs model.llm.train='lora' (a frozen base; full training keeps float32 weights)",
  )
  if llm.init:
    return
  for name in ('hidden_size', 'num_layers', 'num_heads', 'num_kv_heads', 'intermediate_size'):
    p.positive(llm, 'model.llm', name)
  p.check(
    llm.num_heads % max(llm.num_kv_heads, 1) == 0,
    'model.llm.num_heads',
    llm.num_heads,
    f'must be a multiple of model.llm.num_kv_heads ({llm.num_kv_heads})',
  )
  p.check(
    llm.head_dim > 0 and llm.head_dim % 2 == 0,
    'model.llm.head_dim',
    llm.head_dim,
    'must be even and > 0 (rotary positions)',
  )


def _optim(c: ml_collections.ConfigDict, p: _Problems) -> None:
  o = c.optim
  p.positive(o, 'optim', 'lr')
  for name in ('warmup_steps', 'weight_decay', 'clip_norm', 'keyword_loss_weight'):
    p.non_negative(o, 'optim', name)
  p.check(
    _finite(o.end_lr_ratio) and 0 <= o.end_lr_ratio <= 1,
    'optim.end_lr_ratio',
    o.end_lr_ratio,
    'must be in [0, 1]',
  )
  for name in ('b1', 'b2'):
    p.check(_finite(o[name]) and 0 <= o[name] < 1, f'optim.{name}', o[name], 'must be in [0, 1)')
  p.check(
    _finite(o.label_smoothing) and 0 <= o.label_smoothing < 1,
    'optim.label_smoothing',
    o.label_smoothing,
    'must be in [0, 1)',
  )
  p.positive(o, 'optim', 'grad_accum_steps')
  p.check(
    not o.keyword_loss_weight or c.model.keyword_head,
    'optim.keyword_loss_weight',
    o.keyword_loss_weight,
    'needs the keyword head: set --config.model.keyword_head=True (or the weight to 0)',
  )


def _train(c: ml_collections.ConfigDict, p: _Problems, num_shards: int) -> None:
  t = c.train
  p.positive(t, 'train', 'batch_size')
  p.positive(t, 'train', 'num_steps')
  p.splits_over_devices(t, 'train', num_shards)
  per_shard = t.batch_size // max(num_shards, 1)
  p.check(
    per_shard % max(c.optim.grad_accum_steps, 1) == 0,
    'optim.grad_accum_steps',
    c.optim.grad_accum_steps,
    f'must divide the batch of each of the {num_shards} batch shards ({per_shard})',
  )
  for name in ('log_every', 'eval_every', 'checkpoint_every', 'num_sample_captions'):
    p.non_negative(t, 'train', name)
  p.positive(t, 'train', 'keep_checkpoints')
  p.one_of(t, 'train', 'best_mode', BEST_MODES)


def _decode(d: ml_collections.ConfigDict, section: str, c, p: _Problems) -> None:
  p.one_of(d, section, 'method', decode_settings.METHODS)
  limit = c.model.max_decode_len
  p.check(
    1 <= d.max_len <= limit,
    f'{section}.max_len',
    d.max_len,
    f'must be in [1, model.max_decode_len={limit}]',
  )
  p.check(0 <= d.min_len < d.max_len, f'{section}.min_len', d.min_len, 'must be in [0, max_len)')
  p.positive(d, section, 'beam_size')
  p.non_negative(d, section, 'top_k')
  p.check(_finite(d.top_p) and 0 < d.top_p <= 1, f'{section}.top_p', d.top_p, 'must be in (0, 1]')
  p.check(
    0 <= d.no_repeat_ngram_size < d.max_len,
    f'{section}.no_repeat_ngram_size',
    d.no_repeat_ngram_size,
    'must be in [0, max_len)',
  )
  p.check(_finite(d.temperature), f'{section}.temperature', d.temperature, 'must be finite')
  subwords = c.model.decoder_style == 'llm' and bool(c.model.llm.init)
  p.check(
    not (d.ban_repeated_content_words and subwords),
    f'{section}.ban_repeated_content_words',
    True,
    "bans repeated tokens of a word vocabulary; model.llm.init's subword tokenizer would ban "
    'word pieces ("ing", "s") after their first use: set it False',
  )
  rerank = d.rerank
  p.check(rerank in decode_settings.RERANKERS, f'{section}.rerank', rerank,
          f'must be one of {list(decode_settings.RERANKERS)}')  # fmt: skip


def _eval(c: ml_collections.ConfigDict, p: _Problems, num_shards: int) -> None:
  e = c.eval
  p.positive(e, 'eval', 'batch_size')
  p.splits_over_devices(e, 'eval', num_shards)
  _decode(e.decode, 'eval.decode', c, p)
  if e.decode.rerank == 'clap':  # Validation re-ranks as aac-caption (docs/clap.md).
    p.check(e.decode.method in ('beam', 'sample'), 'eval.decode.method', e.decode.method,
            "rerank='clap' needs 'beam' or 'sample' (the candidates)")  # fmt: skip
    p.check(bool(e.decode.rerank_clap_dir), 'eval.decode.rerank_clap_dir', '',
            "rerank='clap' needs a CLAP folder (tools/convert_checkpoint.py clap)")  # fmt: skip


def _scst(c: ml_collections.ConfigDict, p: _Problems) -> None:
  s = c.scst
  p.one_of(s, 'scst', 'baseline', SCST_BASELINES)
  p.one_of(s, 'scst', 'reward', SCST_REWARDS)
  p.one_of(s, 'scst', 'loss_normalizer', SCST_NORMALIZERS)
  p.positive(s, 'scst', 'num_samples')
  p.check(
    s.baseline != 'mean_others' or s.num_samples >= 2,
    'scst.num_samples',
    s.num_samples,
    "scst.baseline='mean_others' needs scst.num_samples >= 2",
  )
  p.check(_finite(s.temperature), 'scst.temperature', s.temperature, 'must be finite')
  p.check(_finite(s.top_p) and 0 < s.top_p <= 1, 'scst.top_p', s.top_p, 'must be in (0, 1]')
  p.non_negative(s, 'scst', 'top_k')
  _scst_fluency(s, p)
  p.check(
    s.reward != 'mix' or float(s.reward_weights.clap) == 0.0 or bool(s.clap_dir),
    'scst.clap_dir',
    s.clap_dir,
    'a clap reward weight needs a CLAP folder (tools/convert_checkpoint.py clap, docs/clap.md)',
  )
  p.check(
    bool(c.train.init_from),
    'train.init_from',
    c.train.init_from,
    'SCST starts from a cross-entropy run: set --config.train.init_from=CE_WORKDIR',
  )


def _scst_fluency(s: ml_collections.ConfigDict, p: _Problems) -> None:
  p.one_of(s, 'scst', 'fluency', SCST_FLUENCY)
  for name in ('fluency_threshold', 'fluency_penalty', 'repetition_penalty'):
    value = s[name]
    p.check(_finite(value) and 0 <= value <= 1, f'scst.{name}', value, 'must be in [0, 1]')
  p.non_negative(s, 'scst', 'ce_weight')
  p.non_negative(s, 'scst', 'kl_weight')
  p.check(
    not (_finite(s.kl_weight) and s.kl_weight > 0 and s.baseline == 'greedy'),
    'scst.kl_weight',
    s.kl_weight,
    "a KL-shaped reward needs scst.baseline='mean_others' (the greedy caption has no sample log p)",
  )
  if s.fluency in ('hard', 'soft'):
    try:
      folder = fense_models.resolve_model_dir(
        s.fluency_dir or None, fense_models.ECHECKER_NAME, fense_models.CONVERT_HINT
      )
      missing = [n for n in ('echecker.json', 'config.json') if not (folder / n).is_file()]
      if missing:
        raise fense_models.ModelUnavailable(f'{folder} has no {" or ".join(missing)}')
    except fense_models.ModelUnavailable as error:
      p.check(
        False,
        'scst.fluency_dir',
        s.fluency_dir,
        f'{error}; train a detector with python tools/train_fluency.py --output DIR, or '
        "convert FENSE's with python tools/convert_checkpoint.py fense",
      )


_SECTION_CHECKS: tuple[Callable, ...] = (_dataset, _frontend, _model, _optim)


MESH_AXES = ('data', 'fsdp', 'tensor')
# Model sizes the tensor axis splits (heads and hidden widths of the built-in
# encoder and decoder); every other split dimension, the vocabulary
# included, is checked on the parameters (`parallel.tensor_split_problems`).
_TENSOR_SPLIT_FIELDS = ('encoder_heads', 'encoder_ff_dim', 'decoder_heads', 'decoder_ff_dim')


def _mesh(c: ml_collections.ConfigDict, p: _Problems, num_devices: int, local_devices: int) -> int:
  """Checks `config.mesh`; returns the batch shards (data x fsdp; all devices if unusable)."""
  m = c.mesh
  sizes = {}
  for name in MESH_AXES:
    value = m[name]
    ok = isinstance(value, int) and (value >= 1 or value == -1)
    p.check(ok, f'mesh.{name}', value, 'must be a size >= 1, or -1 for the devices left')
    sizes[name] = value if ok else 1
  free = [n for n, v in sizes.items() if v == -1]
  p.check(len(free) <= 1, 'mesh', dict(sizes), 'at most one axis may be -1')
  fixed = math.prod(v for v in sizes.values() if v != -1)
  if len(free) == 1 and num_devices % fixed == 0:
    sizes[free[0]] = num_devices // fixed
  covered = math.prod(sizes.values()) == num_devices and -1 not in sizes.values()
  if not covered and len(free) <= 1:
    named = [n for n in MESH_AXES if m[n] not in (1, -1)] or list(MESH_AXES)
    shape = ' x '.join(str(m[n]) for n in MESH_AXES)
    p.check(
      False,
      ', '.join(f'mesh.{n}' for n in named),
      m[named[0]] if len(named) == 1 else [m[n] for n in named],
      f'data x fsdp x tensor = {shape} cannot cover the {num_devices} devices; use sizes '
      f'whose product is {num_devices} (one of them -1 takes the devices the others leave)',
    )
  tensor = sizes['tensor']
  p.check(
    local_devices % tensor == 0,
    'mesh.tensor',
    m.tensor,
    f'must divide the {local_devices} devices of one process (tensor parallelism stays '
    'within a host); use fsdp across hosts',
  )
  _mesh_rules(m, p)
  model = c.model
  for field in _TENSOR_SPLIT_FIELDS:
    size = model.get(field)
    if isinstance(size, int) and size > 0:
      p.check(
        size % tensor == 0,
        f'model.{field}',
        size,
        f'must be divisible by mesh.tensor={tensor}; change one of them',
      )
  return sizes['data'] * sizes['fsdp'] if covered else num_devices


def _mesh_rules(m: ml_collections.ConfigDict, p: _Problems) -> None:
  from aac_jax.models import partitioning  # noqa: PLC0415 - models import jax.

  try:
    pairs = [(name, target) for name, target in m.rules]
  except (TypeError, ValueError):
    p.check(False, 'mesh.rules', m.rules, 'must be (logical axis, mesh axis) pairs')
    return
  for name, target in pairs:
    p.check(
      name in partitioning.LOGICAL_AXES,
      'mesh.rules',
      name,
      f'unknown logical axis; use one of {list(partitioning.LOGICAL_AXES)}',
    )
    targets = target if isinstance(target, list | tuple) else [target]
    p.check(
      all(t is None or t in MESH_AXES for t in targets),
      f'mesh.rules[{name!r}]',
      target,
      f'must name mesh axes among {list(MESH_AXES)} (or None)',
    )


def problems(
  config: ml_collections.ConfigDict,
  stage: str,
  num_devices: int,
  local_devices: int | None = None,
) -> list[str]:
  """Every problem of `config` for `stage` ('train' or 'scst'), one line each.

  Args:
    config: the whole config.
    stage: 'train' or 'scst'.
    num_devices: devices of all processes.
    local_devices: devices of this process (default: all of them).
  """
  if stage not in STAGES:
    raise ValueError(f'stage must be one of {STAGES}, got {stage!r}')
  p = _Problems()
  for check in _SECTION_CHECKS:
    check(config, p)
  num_shards = _mesh(config, p, num_devices, local_devices or num_devices)
  _train(config, p, num_shards)
  _eval(config, p, num_shards)
  _decode(config.decode, 'decode', config, p)
  if stage == 'scst':
    _scst(config, p)
  try:
    eval_config.check_metrics_config(config)
  except ValueError as error:
    p.lines.append(str(error))
  return p.lines


def validate(config: ml_collections.ConfigDict, stage: str, num_devices: int) -> None:
  """Raises `ConfigError` listing every bad value of `config` (see `problems`).

  With several processes, first checks that all were started with the same
  resolved config (`multihost.config_differences`; every process calls
  this, so all stop, each naming the fields it differs in).
  """
  import jax  # noqa: PLC0415 - the distributed runtime: entry points only.

  from aac_jax import multihost  # noqa: PLC0415

  differences = multihost.config_differences(config.to_json_best_effort(sort_keys=True))
  if differences:
    raise ConfigError(
      f'process {jax.process_index()} was started with another config than the others: '
      + '; '.join(differences)
      + '. Start every process with the same flags.'
    )
  lines = problems(config, stage, num_devices, jax.local_device_count())
  if lines:
    raise ConfigError('bad config values:\n  ' + '\n  '.join(lines))
