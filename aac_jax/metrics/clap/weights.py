"""Hugging Face `ClapModel` state dict -> `model.Clap` variables (a renaming, no torch).

PyTorch Linear weights are `[out, in]` (Flax kernels `[in, out]`), Conv2d
weights `[out, in, h, w]` (Flax `[h, w, in, out]`); BatchNorm running
statistics go to the `batch_stats` collection. Every weight the model needs
must be present and of the right shape; unknown weights of the audio or
text towers are refused by name.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from aac_jax.metrics import bert
from aac_jax.metrics.clap import model as clap_model

_AUDIO = 'audio_model.audio_encoder.'
# Our Swin block's module -> the Hugging Face block's sub-module.
_BLOCK = {
  'norm_before': 'layernorm_before',
  'attention/query': 'attention.self.query',
  'attention/key': 'attention.self.key',
  'attention/value': 'attention.self.value',
  'attention/output': 'attention.output.dense',
  'norm_after': 'layernorm_after',
  'mlp_in': 'intermediate.dense',
  'mlp_out': 'output.dense',
}
# Fusion block: ours -> index in PyTorch's nn.Sequential.
_FUSION = {
  'local_conv1': 'local_att.0',
  'local_bn1': 'local_att.1',
  'local_conv2': 'local_att.3',
  'local_bn2': 'local_att.4',
  'global_conv1': 'global_att.1',
  'global_bn1': 'global_att.2',
  'global_conv2': 'global_att.4',
  'global_bn2': 'global_att.5',
}
# Buffers, not weights.
_IGNORED = ('position_ids', 'token_type_ids', 'num_batches_tracked', 'relative_position_index')


class _Reader:
  """Takes tensors by name, in Flax layout, and remembers which were taken."""

  def __init__(self, tensors: dict[str, np.ndarray]):
    self.t = {k: np.asarray(v, np.float32) for k, v in tensors.items()}
    self.used: set[str] = set()

  def get(self, key: str) -> np.ndarray:
    if key not in self.t:
      raise KeyError(f'missing weight {key}')
    self.used.add(key)
    return self.t[key]

  def has(self, key: str) -> bool:
    return key in self.t

  def linear(self, key: str) -> dict:
    out = {'kernel': self.get(f'{key}.weight').T}
    if self.has(f'{key}.bias'):
      out['bias'] = self.get(f'{key}.bias')
    return out

  def conv(self, key: str) -> dict:
    return {
      'kernel': self.get(f'{key}.weight').transpose(2, 3, 1, 0),
      'bias': self.get(f'{key}.bias'),
    }

  def norm(self, key: str) -> dict:
    return {'scale': self.get(f'{key}.weight'), 'bias': self.get(f'{key}.bias')}

  def batch_norm(self, key: str) -> tuple[dict, dict]:
    stats = {'mean': self.get(f'{key}.running_mean'), 'var': self.get(f'{key}.running_var')}
    return self.norm(key), stats


def _audio(r: _Reader, config: clap_model.ClapConfig) -> tuple[dict, dict]:
  c = config.audio
  params, stats = {}, {}
  params['batch_norm'], stats['batch_norm'] = r.batch_norm(f'{_AUDIO}batch_norm')
  params['patch_proj'] = r.conv(f'{_AUDIO}patch_embed.proj')
  if c.patch_norm:
    params['patch_norm'] = r.norm(f'{_AUDIO}patch_embed.norm')
  if c.enable_fusion:
    params['mel_conv'] = r.conv(f'{_AUDIO}patch_embed.mel_conv2d')
    fusion, fusion_stats = {}, {}
    for ours, theirs in _FUSION.items():
      key = f'{_AUDIO}patch_embed.fusion_model.{theirs}'
      if 'bn' in ours:
        fusion[ours], fusion_stats[ours] = r.batch_norm(key)
      else:
        fusion[ours] = r.conv(key)
    params['fusion'], stats['fusion'] = fusion, fusion_stats
  for i, depth in enumerate(c.depths):
    for j in range(depth):
      block, key = {}, f'{_AUDIO}layers.{i}.blocks.{j}.'
      for ours, theirs in _BLOCK.items():
        read = r.norm if ours.startswith('norm') else r.linear
        block[ours] = read(key + theirs)
      block = traverse_util.unflatten_dict(block, sep='/')
      table = f'{key}attention.self.relative_position_bias_table'
      block['attention']['relative_position_bias_table'] = r.get(table)
      params[f'stage{i}_block{j}'] = block
    if i < len(c.depths) - 1:
      key = f'{_AUDIO}layers.{i}.downsample.'
      params[f'stage{i}_merge'] = {
        'norm': r.norm(key + 'norm'),
        'reduction': r.linear(key + 'reduction'),
      }
  params['norm'] = r.norm(f'{_AUDIO}norm')
  return params, stats


def variables_from_hf(tensors: dict[str, np.ndarray], config: clap_model.ClapConfig) -> dict:
  """`{'params', 'batch_stats'}` of `model.Clap` from a `ClapModel` state dict.

  Args:
    tensors: name -> array, as in `model.safetensors`.
    config: the checkpoint's sizes.

  Returns:
    The variables (float32 numpy arrays).

  Raises:
    KeyError: a weight is missing; ValueError: unknown weights or a shape
    that does not fit `config`.
  """
  r = _Reader(tensors)
  audio, stats = _audio(r, config)
  text = bert.params_from_hf(r.t, config.text, prefix='text_model.')
  r.used.update(k for k in r.t if k.startswith('text_model.') and 'pooler' not in k)
  params = {
    'audio_model': audio,
    'audio_projection': {n: r.linear(f'audio_projection.{n}') for n in ('linear1', 'linear2')},
    'text_model': text,
    'text_pooler': r.linear('text_model.pooler.dense'),
    'text_projection': {n: r.linear(f'text_projection.{n}') for n in ('linear1', 'linear2')},
    'logit_scale_a': r.get('logit_scale_a').reshape(()),
    'logit_scale_t': r.get('logit_scale_t').reshape(()),
  }
  unknown = sorted(k for k in set(r.t) - r.used if not k.endswith(_IGNORED))
  if unknown:
    raise ValueError(f'weights this CLAP config does not use: {unknown[:3]}')
  variables = {'params': params, 'batch_stats': {'audio_model': stats}}
  _check_shapes(variables, config)
  return variables


def _check_shapes(variables: dict, config: clap_model.ClapConfig) -> None:
  a = config.audio
  frames = a.spec_size * a.freq_ratio
  mel = jax.ShapeDtypeStruct((1, 4 if a.enable_fusion else 1, frames, a.num_mel_bins), jnp.float32)
  ids = jax.ShapeDtypeStruct((1, 2), jnp.int32)
  init = clap_model.Clap(config).init
  expected = nn.unbox(jax.eval_shape(init, jax.random.key(0), mel, None, ids, ids))
  want = {k: v.shape for k, v in traverse_util.flatten_dict(expected, sep='/').items()}
  got = {k: np.shape(v) for k, v in traverse_util.flatten_dict(variables, sep='/').items()}
  bad = [f'{k}: {got.get(k)} vs config {v}' for k, v in want.items() if got.get(k) != v]
  bad += [f'{k}: not in the model' for k in got if k not in want]
  if bad:
    raise ValueError(f'checkpoint does not match its config.json: {bad[:3]}')
