"""HTS-AT, CLAP's audio tower, in Flax Linen (Hugging Face `ClapAudioEncoder`).

The log-mel `[batch, channels, frames, mels]` is batch-normalised per mel
band, stretched in time to `spec_size * freq_ratio` frames (bicubic,
PyTorch's kernel with corners aligned), and folded into a square image: the
time axis is cut into `freq_ratio` pieces stacked along frequency. A Swin
transformer (shifted-window attention with relative position biases, patch
merging between stages) encodes the image; the pooled output is the mean of
the last stage's normalised tokens.

With `enable_fusion` (the `*-fused` checkpoints), channels 1..3 (crops of a
long clip) are patch-embedded by a wider convolution and merged into
channel 0's patches by attentional feature fusion where `is_longer` is set.

Layout: images are NHWC (`[batch, height = freq_ratio * mels, width, ch]`),
tokens `[batch, height * width, dim]` row-major.

Parameters carry the logical axis names of `aac_jax.models.partitioning`
(attached with flax's `nn.with_logical_partitioning`, which that module
wraps; metrics sit below `aac_jax.models` in the import floors), so the
captioner's HTS-AT encoder (`aac_jax.models.htsat_encoder`) is sharded by the
run's rules. BatchNorms read running statistics (`batch_stats`) by default;
`Htsat(batch_norm=...)` swaps in another per-channel layer (the captioner's
folded affine).
"""

import dataclasses
import functools
import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

_HIGHEST = jax.lax.Precision.HIGHEST
# Inference-mode BatchNorm over the last axis (PyTorch's eps).
RUNNING_BATCH_NORM = functools.partial(nn.BatchNorm, use_running_average=True, epsilon=1e-5)


def _named(init: Callable, axes: tuple[str, ...]) -> Callable:
  """`init` whose parameter carries logical `axes` (`aac_jax.models.partitioning` names)."""
  return nn.with_logical_partitioning(init, axes)


def _dense(features: int, axes: tuple[str, str], name: str, use_bias: bool = True) -> nn.Dense:
  return nn.Dense(
    features,
    use_bias=use_bias,
    precision=_HIGHEST,
    kernel_init=_named(nn.initializers.lecun_normal(), axes),
    bias_init=_named(nn.initializers.zeros_init(), axes[1:]),
    name=name,
  )


def _layer_norm(name: str, epsilon: float = 1e-5) -> nn.LayerNorm:
  return nn.LayerNorm(
    epsilon=epsilon,
    scale_init=_named(nn.initializers.ones, ('embed',)),
    bias_init=_named(nn.initializers.zeros, ('embed',)),
    name=name,
  )


def _conv(features: int, kernel: tuple[int, int], out_axis: str, name: str, **kwargs) -> nn.Conv:
  """NHWC conv (H = frequency rows, W = time), kernel `[conv_freq, conv_time, conv_in, out]`."""
  return nn.Conv(
    features,
    kernel,
    precision=_HIGHEST,
    kernel_init=_named(
      nn.initializers.lecun_normal(), ('conv_freq', 'conv_time', 'conv_in', out_axis)
    ),
    bias_init=_named(nn.initializers.zeros_init(), (out_axis,)),
    name=name,
    **kwargs,
  )


@dataclasses.dataclass(frozen=True)
class HtsatConfig:
  """Sizes of an HTS-AT tower (`audio_config` names of a CLAP `config.json` in brackets).

  Attributes:
    num_mel_bins: mel bands of the input (`num_mel_bins`).
    spec_size: side of the square image (`spec_size`).
    patch_size: patch side (`patch_size`).
    patch_stride: patch step (`patch_stride`).
    embed_dim: channels of the first stage (`patch_embeds_hidden_size`).
    depths: blocks per stage (`depths`).
    num_heads: attention heads per stage (`num_attention_heads`).
    window_size: attention window side (`window_size`).
    mlp_ratio: feed-forward width / model width (`mlp_ratio`).
    qkv_bias: biases on query, key, value (`qkv_bias`).
    enable_fusion: fuse long-clip crops (`enable_fusion`).
    aff_block_r: fusion bottleneck ratio (`aff_block_r`).
    patch_norm: LayerNorm after the patch embedding (`enable_patch_layer_norm`).
    layer_norm_eps: LayerNorm epsilon of the blocks (`layer_norm_eps`).
  """

  num_mel_bins: int = 64
  spec_size: int = 256
  patch_size: int = 4
  patch_stride: int = 4
  embed_dim: int = 96
  depths: tuple[int, ...] = (2, 2, 6, 2)
  num_heads: tuple[int, ...] = (4, 8, 16, 32)
  window_size: int = 8
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  enable_fusion: bool = False
  aff_block_r: int = 4
  patch_norm: bool = True
  layer_norm_eps: float = 1e-5

  @classmethod
  def from_hf(cls, hf: dict) -> 'HtsatConfig':
    """Reads the `audio_config` of a CLAP `config.json` (as a dict)."""

    def square(key: str, default: int) -> int:
      value = hf.get(key, default)
      if isinstance(value, list | tuple):
        if len(set(value)) != 1:
          raise ValueError(f'unsupported non-square {key} {value}')
        value = value[0]
      return int(value)

    if hf.get('hidden_act', 'gelu') != 'gelu':
      raise ValueError(f'unsupported audio hidden_act {hf["hidden_act"]!r} (only gelu)')
    if hf.get('enable_fusion') and hf.get('fusion_type') == 'channel_map':
      raise ValueError('unsupported fusion_type channel_map (only aff_2d)')
    if hf.get('patch_embed_input_channels', 1) != 1 or not hf.get('flatten_patch_embeds', True):
      raise ValueError('unsupported patch embedding (needs 1 input channel, flattened)')
    config = cls(
      num_mel_bins=int(hf.get('num_mel_bins', 64)),
      spec_size=int(hf.get('spec_size', 256)),
      patch_size=square('patch_size', 4),
      patch_stride=square('patch_stride', 4),
      embed_dim=int(hf.get('patch_embeds_hidden_size', 96)),
      depths=tuple(hf.get('depths', (2, 2, 6, 2))),
      num_heads=tuple(hf.get('num_attention_heads', (4, 8, 16, 32))),
      window_size=int(hf.get('window_size', 8)),
      mlp_ratio=float(hf.get('mlp_ratio', 4.0)),
      qkv_bias=bool(hf.get('qkv_bias', True)),
      enable_fusion=bool(hf.get('enable_fusion', False)),
      aff_block_r=int(hf.get('aff_block_r', 4)),
      patch_norm=bool(hf.get('enable_patch_layer_norm', True)),
      layer_norm_eps=float(hf.get('layer_norm_eps', 1e-5)),
    )
    if hf.get('hidden_size', config.num_features) != config.num_features:
      raise ValueError(f'audio hidden_size {hf["hidden_size"]} != {config.num_features}')
    config.resolutions()  # Fails here on sizes the windows cannot tile.
    return config

  @property
  def freq_ratio(self) -> int:
    return self.spec_size // self.num_mel_bins

  @property
  def num_features(self) -> int:
    return self.embed_dim * 2 ** (len(self.depths) - 1)

  def resolutions(self) -> list[int]:
    """Token grid side per stage; refuses a grid smaller than the window."""
    grid = self.spec_size // self.patch_stride
    sides = [grid // 2**i for i in range(len(self.depths))]
    if min(sides) < self.window_size:
      raise ValueError(f'window_size {self.window_size} exceeds the last grid side {min(sides)}')
    return sides


@functools.lru_cache(maxsize=8)
def bicubic_matrix(size_in: int, size_out: int) -> np.ndarray:
  """`[size_out, size_in]` PyTorch bicubic resampling (A = -0.75, corners aligned, edges clamped)."""
  a = -0.75

  def near(t):  # |t| <= 1
    return ((a + 2) * t - (a + 3)) * t * t + 1

  def far(t):  # 1 < |t| < 2
    return ((a * t - 5 * a) * t + 8 * a) * t - 4 * a

  scale = (size_in - 1) / (size_out - 1) if size_out > 1 else 0.0
  matrix = np.zeros((size_out, size_in), np.float64)
  for i in range(size_out):
    src = i * scale
    base = math.floor(src)
    t = src - base
    for offset, weight in zip(
      (-1, 0, 1, 2), (far(t + 1), near(t), near(1 - t), far(2 - t)), strict=True
    ):
      matrix[i, min(max(base + offset, 0), size_in - 1)] += weight
  matrix = matrix.astype(np.float32)
  matrix.setflags(write=False)
  return matrix


def mel_to_image(mel: jax.Array, config: HtsatConfig) -> jax.Array:
  """`[batch, channels, frames, mels]` -> NHWC image `[batch, spec_size, spec_size, channels]`."""
  b, c, frames, mels = mel.shape
  width = config.spec_size * config.freq_ratio
  height = config.spec_size // config.freq_ratio
  if frames > width or mels > height:
    raise ValueError(f'log-mel {frames}x{mels} exceeds the model input {width}x{height}')
  if frames < width:
    mel = jnp.einsum('tf,bcfm->bctm', bicubic_matrix(frames, width), mel, precision=_HIGHEST)
  if mels < height:
    mel = jnp.einsum('nm,bctm->bctn', bicubic_matrix(mels, height), mel, precision=_HIGHEST)
  r = config.freq_ratio
  # Time cut into r pieces stacked along frequency: row = piece * mels + band.
  image = mel.reshape(b, c, r, width // r, height).transpose(0, 2, 4, 3, 1)
  return image.reshape(b, r * height, width // r, c)


def _window_mask(side: int, window: int, shift: int) -> np.ndarray | None:
  """`[windows, window**2, window**2]` additive mask of a cyclically shifted grid (-100 apart)."""
  if shift == 0:
    return None
  bounds = lambda i: (i >= side - window).astype(int) + (i >= side - shift)  # noqa: E731
  region = bounds(np.arange(side))
  ids = region[:, None] * 3 + region[None, :]
  n = side // window
  ids = ids.reshape(n, window, n, window).transpose(0, 2, 1, 3).reshape(n * n, window * window)
  return np.where(ids[:, None, :] != ids[:, :, None], -100.0, 0.0).astype(np.float32)


def _relative_index(window: int) -> np.ndarray:
  """`[window**2, window**2]` index into the relative position bias table."""
  coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing='ij')).reshape(2, -1)
  rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0) + (window - 1)
  return rel[..., 0] * (2 * window - 1) + rel[..., 1]


class WindowAttention(nn.Module):
  """Multi-head self-attention inside windows, with a learned relative position bias."""

  dim: int
  num_heads: int
  window: int
  qkv_bias: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, mask: np.ndarray | None) -> jax.Array:
    """`[batch * windows, window**2, dim]` -> same; `mask` `[windows, n, n]` or None."""
    bw, n, d = x.shape
    head = d // self.num_heads

    def heads(name: str, bias: bool = True) -> jax.Array:
      y = _dense(d, ('embed', 'heads'), name, bias)(x)
      return y.reshape(bw, n, self.num_heads, head)

    q = heads('query', self.qkv_bias)
    k = heads('key', self.qkv_bias)
    v = heads('value', self.qkv_bias)
    logits = jnp.einsum('bqhd,bkhd->bhqk', q, k, precision=_HIGHEST) / math.sqrt(head)
    table = self.param(
      'relative_position_bias_table',
      _named(nn.initializers.truncated_normal(0.02), ('input', 'heads')),
      ((2 * self.window - 1) ** 2, self.num_heads),
    )
    bias = table[_relative_index(self.window).reshape(-1)].reshape(n, n, -1).transpose(2, 0, 1)
    logits = logits + bias[None]
    if mask is not None:
      windows = mask.shape[0]
      logits = logits.reshape(bw // windows, windows, self.num_heads, n, n) + mask[None, :, None]
      logits = logits.reshape(bw, self.num_heads, n, n)
    weights = jax.nn.softmax(logits, axis=-1)
    context = jnp.einsum('bhqk,bkhd->bqhd', weights, v, precision=_HIGHEST).reshape(bw, n, d)
    return _dense(d, ('heads', 'embed'), 'output')(context)


class SwinBlock(nn.Module):
  """Pre-norm block: (shifted) window attention, then a GELU feed-forward."""

  config: HtsatConfig
  dim: int
  num_heads: int
  side: int
  shift: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Tokens `[batch, side * side, dim]` -> same."""
    c, side = self.config, self.side
    window, shift = (side, 0) if side <= c.window_size else (c.window_size, self.shift)
    norm = functools.partial(_layer_norm, epsilon=c.layer_norm_eps)
    b, _, d = x.shape
    pad = (-side) % window
    h = norm('norm_before')(x).reshape(b, side, side, d)
    h = jnp.pad(h, ((0, 0), (0, pad), (0, pad), (0, 0)))
    padded, n = side + pad, (side + pad) // window
    h = jnp.roll(h, (-shift, -shift), axis=(1, 2))
    h = h.reshape(b, n, window, n, window, d).transpose(0, 1, 3, 2, 4, 5)
    h = WindowAttention(d, self.num_heads, window, c.qkv_bias, name='attention')(
      h.reshape(b * n * n, window * window, d), _window_mask(padded, window, shift)
    )
    h = h.reshape(b, n, n, window, window, d).transpose(0, 1, 3, 2, 4, 5)
    h = jnp.roll(h.reshape(b, padded, padded, d), (shift, shift), axis=(1, 2))
    x = x + h[:, :side, :side].reshape(b, side * side, d)
    hidden = _dense(int(c.mlp_ratio * d), ('embed', 'mlp'), 'mlp_in')
    out = _dense(d, ('mlp', 'embed'), 'mlp_out')
    return x + out(jax.nn.gelu(hidden(norm('norm_after')(x)), approximate=False))


class PatchMerging(nn.Module):
  """2x2 neighbouring tokens concatenated, normalised, projected to twice the width."""

  side: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """`[batch, side**2, dim]` -> `[batch, ceil(side / 2)**2, 2 * dim]`."""
    b, _, d = x.shape
    x = x.reshape(b, self.side, self.side, d)
    pad = self.side % 2
    x = jnp.pad(x, ((0, 0), (0, pad), (0, pad), (0, 0)))
    x = jnp.concatenate([x[:, r::2, c::2] for c in range(2) for r in range(2)], axis=-1)
    x = _layer_norm('norm')(x.reshape(b, -1, 4 * d))
    return _dense(2 * d, ('input', 'embed'), 'reduction', use_bias=False)(x)


class FusionBlock(nn.Module):
  """Attentional feature fusion: a sigmoid gate from local and global context mixes two maps."""

  channels: int
  ratio: int
  batch_norm: Callable[..., nn.Module] = RUNNING_BATCH_NORM

  @nn.compact
  def __call__(self, x: jax.Array, residual: jax.Array) -> jax.Array:
    """Two NHWC maps `[batch, h, w, channels]` -> the fused map, same shape."""
    inner = self.channels // self.ratio

    def branch(h: jax.Array, prefix: str) -> jax.Array:
      bn = self.batch_norm
      h = _conv(inner, (1, 1), 'conv_out', f'{prefix}_conv1')(h)
      h = jax.nn.relu(bn(name=f'{prefix}_bn1')(h))
      h = _conv(self.channels, (1, 1), 'conv_out', f'{prefix}_conv2')(h)
      return bn(name=f'{prefix}_bn2')(h)

    both = x + residual
    gate = jax.nn.sigmoid(
      branch(both, 'local') + branch(both.mean((1, 2), keepdims=True), 'global')
    )
    return 2 * x * gate + 2 * residual * (1 - gate)


class Htsat(nn.Module):
  """HTS-AT: log-mel -> pooled features `[batch, num_features]` (and the token grid)."""

  config: HtsatConfig
  batch_norm: Callable[..., nn.Module] = RUNNING_BATCH_NORM  # Per-channel norm over the last axis.

  @nn.compact
  def __call__(self, mel: jax.Array, is_longer: jax.Array | None = None):
    """Encodes CLAP input features.

    Args:
      mel: `[batch, channels, frames, mels]` dB log-mel (`frontend.log_mel`).
      is_longer: bool `[batch]` (fusion only): fuse channels 1..3 into channel 0.

    Returns:
      `(pooled [batch, num_features], tokens [batch, side**2, num_features])`, the
      tokens being the last stage's normalised grid (row-major, rows = frequency).
    """
    c = self.config
    # Per-band statistics (BatchNorm2d over mel bands in PyTorch).
    mel = self.batch_norm(name='batch_norm')(mel)
    image = mel_to_image(mel, c)
    pad = (c.patch_size - c.patch_stride) // 2
    patches = _conv(
      c.embed_dim,
      (c.patch_size, c.patch_size),
      'embed',
      'patch_proj',
      strides=(c.patch_stride, c.patch_stride),
      padding=((pad, pad), (pad, pad)),
    )(image[..., :1])
    if c.enable_fusion:
      patches = self._fuse(image, patches, is_longer, pad)
    b, side, _, d = patches.shape
    x = patches.reshape(b, side * side, d)
    if c.patch_norm:
      x = _layer_norm('patch_norm')(x)
    for i, (depth, heads) in enumerate(zip(c.depths, c.num_heads, strict=True)):
      side = c.resolutions()[i]
      dim = c.embed_dim * 2**i
      for j in range(depth):
        shift = 0 if j % 2 == 0 else c.window_size // 2
        x = SwinBlock(c, dim, heads, side, shift, name=f'stage{i}_block{j}')(x)
      if i < len(c.depths) - 1:
        x = PatchMerging(side, name=f'stage{i}_merge')(x)
    x = _layer_norm('norm')(x)
    return x.mean(axis=1), x

  def _fuse(self, image, patches, is_longer, pad):
    """Channel 0's patches fused with channels 1..3's wide patches where `is_longer`."""
    c = self.config
    b, h, w, _ = image.shape
    local = image[..., 1:4].transpose(0, 3, 1, 2).reshape(b * 3, h, w, 1)
    local = _conv(
      c.embed_dim,
      (c.patch_size, 3 * c.patch_size),
      'embed',
      'mel_conv',
      strides=(c.patch_stride, 3 * c.patch_stride),
      padding=((pad, pad), (pad, pad)),
    )(local)
    _, lh, lw, d = local.shape
    # The three crops side by side along width, zero-padded to the global width.
    local = local.reshape(b, 3, lh, lw, d).transpose(0, 2, 1, 3, 4).reshape(b, lh, 3 * lw, d)
    local = jnp.pad(local, ((0, 0), (0, 0), (0, patches.shape[2] - 3 * lw), (0, 0)))
    fused = FusionBlock(c.embed_dim, c.aff_block_r, self.batch_norm, name='fusion')(patches, local)
    if is_longer is None:
      return patches
    return jnp.where(jnp.asarray(is_longer, bool).reshape(b, 1, 1, 1), fused, patches)
