"""The aac_jax conformer captioner in eager PyTorch, for side-by-side speed benchmarks.

`TorchCaptioner` is the model `aac_jax.models.Captioner` builds with the
conformer encoder and the 'aac_jax' decoder style: the same modules, the same
parameter count, and the same function (`load_jax_params` copies a flax
parameter tree into it; `tests/test_torch_captioner.py` checks the logits,
the loss, the gradients and optimizer updates against aac_jax). It is written
the way a PyTorch user would write it for speed: packed QKV projections,
`F.scaled_dot_product_attention` (causal flag in the decoder), `torch.stft`,
grouped `Conv1d` for the depthwise convolution and a fused AdamW on CUDA.

What it leaves out: pretrained tagger encoders, the 'conette' decoder, the
keyword head, mixup and cached decoding (it raises for those configs).
SpecAugment is implemented with aac_jax's distributions (training mode and
`frontend.spec_augment` only), drawn from torch's generator, so its masks are
not the same draws as aac_jax's. With `compute_dtype = 'bfloat16'` the train
step runs the model under `torch.autocast` (bfloat16 matmuls and
convolutions, parameters float32, front end and loss float32), which is
close to, not the same as, aac_jax's casts. TF32 for float32 matmuls is the
caller's choice (`torch.backends.cuda.matmul.allow_tf32`); JAX on GPU uses
its default matmul precision.

  model = torch_captioner.from_config(config, vocab_size).to('cuda')
  step = torch_captioner.make_train_step(
    model, config.optim, config.train.num_steps, config.optim.label_smoothing
  )
  loss = step(torch_captioner.torch_batch(numpy_batch, 'cuda'))

Torch is imported here only, never by the aac_jax package.
"""

import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import ml_collections
import numpy as np
import torch
import torch.nn.functional as F
from flax import traverse_util
from torch import nn

from aac_jax import models
from aac_jax.audio import frontend, stft
from aac_jax.data import tokenizer
from aac_jax.models import layers
from aac_jax.models.config import CaptionerConfig

LAYER_NORM_EPS = 1e-6  # flax.linen.LayerNorm's default.
# flax's truncated-normal variance scaling divides by the std of a standard
# normal truncated to [-2, 2], so that the truncated draws have the asked std.
_TRUNCATED_STD = 0.87962566103423978
ADAM_EPS = 1e-8  # optax.adamw's default.


# --- Front end ------------------------------------------------------------------------------


def frame_paddings(paddings: torch.Tensor, hop_length: int) -> torch.Tensor:
  """Frame `t` is padding iff sample `t * hop` is (or is past the end), as aac_jax.

  Args:
    paddings: `[batch, samples]`, 1 = padding.
    hop_length: frame step.

  Returns:
    float32 `[batch, 1 + samples // hop_length]`.
  """
  frames = stft.num_frames(paddings.shape[1], hop_length)
  extended = F.pad(paddings.float(), (0, hop_length), value=1.0)
  return extended[:, : frames * hop_length : hop_length]


class LogMel(nn.Module):
  """aac_jax's log-mel front end (`frontend.log_mel`, kind 'mel') as fixed buffers.

  Centred STFT with zero padding, aac_jax's periodic Hann window and Slaney
  mel matrix, `log(max(mel, log_floor))`, then `(log - mean) / std`.
  """

  def __init__(self, cfg: ml_collections.ConfigDict, sample_rate: int):
    super().__init__()
    if cfg.kind != 'mel':
      raise ValueError(f"only the 'mel' front end is implemented, got kind={cfg.kind!r}")
    self.n_fft = int(cfg.n_fft)
    self.hop_length = int(cfg.hop_length)
    self.log_floor = float(cfg.log_floor)
    self.mean, self.std = frontend.normalization(cfg)
    window = stft.fft_window(self.n_fft, int(cfg.win_length))
    filters = stft.mel_matrix(sample_rate, self.n_fft, cfg.n_mels, cfg.fmin, cfg.fmax)
    self.register_buffer('window', torch.from_numpy(window.copy()), persistent=False)
    self.register_buffer('filters', torch.from_numpy(filters.copy()), persistent=False)

  def forward(
    self, audio: torch.Tensor, paddings: torch.Tensor
  ) -> tuple[torch.Tensor, torch.Tensor]:
    """`[b, samples]` audio and paddings -> features `[b, frames, mels]`, paddings `[b, frames]`."""
    audio = audio.float() * (1.0 - paddings.float())
    spectrum = torch.stft(
      audio,
      self.n_fft,
      self.hop_length,
      window=self.window,
      center=True,
      pad_mode='constant',
      return_complex=True,
    )  # [b, freq, frames]
    power = torch.view_as_real(spectrum).square().sum(-1)
    mel = torch.matmul(power.transpose(1, 2), self.filters)
    log = torch.log(mel.clamp_min(self.log_floor))
    if self.mean != 0.0 or self.std != 1.0:
      log = (log - self.mean) * (1.0 / self.std)
    return log, frame_paddings(paddings, self.hop_length)


def _band_mask(
  size: torch.Tensor,
  max_width: torch.Tensor,
  num: int,
  axis_len: int,
  generator: torch.Generator | None,
) -> torch.Tensor:
  """Union of `num` random bands per example inside `[0, size)` (as aac_jax's `_band_mask`).

  Widths are uniform in `[0, min(max_width, size)]`, starts uniform in
  `[0, size - width]`.

  Returns:
    bool `[batch, axis_len]`, True inside a band.
  """
  shape = (size.shape[0], num)
  device = size.device
  max_width = torch.minimum(max_width, size)[:, None]
  draw = torch.rand(shape, generator=generator, device=device)
  widths = torch.minimum((draw * (max_width + 1)).floor().long(), max_width)
  room = size[:, None] - widths
  draw = torch.rand(shape, generator=generator, device=device)
  starts = torch.minimum((draw * (room + 1)).floor().long(), room)
  positions = torch.arange(axis_len, device=device)
  inside = (positions >= starts[..., None]) & (positions < (starts + widths)[..., None])
  return inside.any(dim=1)


def spec_augment(
  features: torch.Tensor,
  paddings: torch.Tensor,
  cfg: ml_collections.ConfigDict,
  generator: torch.Generator | None = None,
) -> torch.Tensor:
  """SpecAugment as `aac_jax.audio.frontend.spec_augment` (other random draws).

  Frequency bands up to `freq_mask_width` bins and time bands up to
  `time_mask_ratio` of each example's real frames are set to the mean of the
  example's real features; padded frames are never touched.

  Args:
    features: `[batch, frames, mels]`.
    paddings: `[batch, frames]`, 1 = padding.
    cfg: `config.frontend`.
    generator: torch generator of the masks (None: the default one).

  Returns:
    The masked features (the input itself when `cfg.spec_augment` is off).
  """
  if not cfg.spec_augment:
    return features
  batch, frames, mels = features.shape
  real = 1.0 - paddings.to(features.dtype)
  lengths = real.sum(dim=1).long()
  all_bins = torch.full_like(lengths, mels)
  freq_width = torch.full_like(lengths, int(cfg.freq_mask_width))
  freq = _band_mask(all_bins, freq_width, int(cfg.freq_masks), mels, generator)
  max_time = torch.floor(float(cfg.time_mask_ratio) * lengths.float()).long()
  time = _band_mask(lengths, max_time, int(cfg.time_masks), frames, generator)
  masked = (freq[:, None, :] | time[:, :, None]) & (real[:, :, None] > 0)
  real_sum = (features * real[:, :, None]).sum(dim=(1, 2))
  fill = real_sum / (lengths * mels).clamp_min(1).to(features.dtype)
  return torch.where(masked, fill[:, None, None], features)


# --- Shared layers --------------------------------------------------------------------------


class PackedHeads(nn.Linear):
  """One Linear computing several flax head projections side by side.

  `sources` names the flax `DenseGeneral` modules (e.g. query, key, value,
  kernels `[in, heads, head_dim]`) whose outputs it concatenates.
  """

  def __init__(self, in_dim: int, dim: int, sources: tuple[str, ...]):
    super().__init__(in_dim, dim * len(sources))
    self.sources = sources


class MergeHeads(nn.Linear):
  """The attention output projection (flax kernel `[heads, head_dim, dim]`)."""


def layer_norm(dim: int) -> nn.LayerNorm:
  """LayerNorm with flax's epsilon."""
  return nn.LayerNorm(dim, eps=LAYER_NORM_EPS)


def rotary_tables(length: int, head_dim: int, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
  """`(cos, sin)` `[length, head_dim // 2]` of `aac_jax.models.layers.apply_rotary`."""
  half = head_dim // 2
  inv_freq = 1.0 / (10000.0 ** (torch.arange(half, dtype=torch.float32, device=device) / half))
  angles = torch.arange(length, dtype=torch.float32, device=device)[:, None] * inv_freq[None, :]
  return torch.cos(angles), torch.sin(angles)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
  """Rotates `[..., time, head_dim]` by position (split halves, as aac_jax), in float32."""
  x1, x2 = x.float().chunk(2, dim=-1)
  rotated = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
  return rotated.to(x.dtype)


def key_mask(paddings: torch.Tensor) -> torch.Tensor:
  """`[b, keys]` paddings -> bool `[b, 1, 1, keys]`, True = may attend.

  A row without any real key attends to every key (aac_jax gives it uniform
  weights; either way no NaN).
  """
  keep = paddings < 0.5
  keep = keep | ~keep.any(dim=-1, keepdim=True)
  return keep[:, None, None, :]


def split_heads(x: torch.Tensor, parts: int, heads: int) -> torch.Tensor:
  """`[b, t, parts * d]` -> `[parts, b, heads, t, d // heads]`."""
  b, t, _ = x.shape
  return x.view(b, t, parts, heads, -1).permute(2, 0, 3, 1, 4)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
  """`[b, heads, t, head_dim]` -> `[b, t, heads * head_dim]`."""
  b, h, t, hd = x.shape
  return x.transpose(1, 2).reshape(b, t, h * hd)


class FeedForward(nn.Module):
  """Pre-norm feed-forward branch: LN, Linear, swish, dropout, Linear, dropout."""

  def __init__(self, dim: int, hidden_dim: int, dropout: float):
    super().__init__()
    self.norm = layer_norm(dim)
    self.wi = nn.Linear(dim, hidden_dim)
    self.wo = nn.Linear(hidden_dim, dim)
    self.dropout = nn.Dropout(dropout)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    y = self.dropout(F.silu(self.wi(self.norm(x))))
    return self.dropout(self.wo(y))


# --- Encoder --------------------------------------------------------------------------------


class ConvSubsampling(nn.Module):
  """log2(subsampling) Conv2d(k3, s2, p1) + ReLU over [time, mels], then Linear and dropout.

  Padded frames are zeroed before each convolution, as aac_jax.
  """

  def __init__(self, cfg: CaptionerConfig, num_mels: int):
    super().__init__()
    self.num_convs = int(math.log2(cfg.subsampling))
    channels = cfg.conv_channels
    mels = num_mels
    for i in range(self.num_convs):
      conv = nn.Conv2d(1 if i == 0 else channels, channels, 3, stride=2, padding=1)
      self.add_module(f'conv{i}', conv)
      mels = (mels + 1) // 2
    self.proj = nn.Linear(channels * mels, cfg.encoder_dim)
    self.dropout = nn.Dropout(cfg.dropout)

  def forward(
    self, features: torch.Tensor, paddings: torch.Tensor
  ) -> tuple[torch.Tensor, torch.Tensor]:
    """`[b, t, mels]`, `[b, t]` -> `[b, ceil(t / f), d]`, `[b, ceil(t / f)]`."""
    x = features[:, None]  # [b, 1, t, mels]
    for i in range(self.num_convs):
      x = x * (1.0 - paddings)[:, None, :, None].to(x.dtype)
      x = F.relu(getattr(self, f'conv{i}')(x))
      paddings = paddings[:, ::2]
    b, c, t, m = x.shape
    x = x.permute(0, 2, 3, 1).reshape(b, t, m * c)  # flax's [t, mels, channels] order.
    return self.dropout(self.proj(x)), paddings


class EncoderSelfAttention(nn.Module):
  """Pre-norm self-attention with rotary queries and keys and a key padding mask."""

  def __init__(self, dim: int, heads: int, dropout: float, attention_dropout: float):
    super().__init__()
    self.heads = heads
    self.attention_dropout = attention_dropout
    self.norm = layer_norm(dim)
    self.qkv = PackedHeads(dim, dim, ('query', 'key', 'value'))
    self.out = MergeHeads(dim, dim)
    self.dropout = nn.Dropout(dropout)

  def forward(self, x: torch.Tensor, mask: torch.Tensor, rotary: tuple) -> torch.Tensor:
    qkv = split_heads(self.qkv(self.norm(x)), 3, self.heads)
    q, k = apply_rotary(qkv[:2], *rotary)
    v = qkv[2]
    p = self.attention_dropout if self.training else 0.0
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
    return self.dropout(self.out(merge_heads(y)))


class ConvolutionModule(nn.Module):
  """LN, Linear(d, 2d), GLU, zero padding, depthwise conv, LN, swish, Linear, dropout."""

  def __init__(self, dim: int, kernel_size: int, dropout: float):
    super().__init__()
    self.norm = layer_norm(dim)
    self.pointwise_in = nn.Linear(dim, 2 * dim)
    self.depthwise = nn.Conv1d(dim, dim, kernel_size, padding='same', groups=dim)
    self.conv_norm = layer_norm(dim)
    self.pointwise_out = nn.Linear(dim, dim)
    self.dropout = nn.Dropout(dropout)

  def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """`x` `[b, t, d]`, `keep` `[b, t, 1]` (0 on padded frames) -> `[b, t, d]`."""
    y = F.glu(self.pointwise_in(self.norm(x)), dim=-1) * keep.to(x.dtype)
    y = self.depthwise(y.transpose(1, 2)).transpose(1, 2)
    y = F.silu(self.conv_norm(y))
    return self.dropout(self.pointwise_out(y))


class ConformerBlock(nn.Module):
  """Macaron block: FF/2, self-attention, convolution, FF/2, LayerNorm."""

  def __init__(self, cfg: CaptionerConfig):
    super().__init__()
    d = cfg.encoder_dim
    self.ff_in = FeedForward(d, cfg.encoder_ff_dim, cfg.dropout)
    self.attention = EncoderSelfAttention(d, cfg.encoder_heads, cfg.dropout, cfg.attention_dropout)
    self.conv = ConvolutionModule(d, cfg.conv_kernel_size, cfg.dropout)
    self.ff_out = FeedForward(d, cfg.encoder_ff_dim, cfg.dropout)
    self.norm = layer_norm(d)

  def forward(self, x, keep, mask, rotary) -> torch.Tensor:
    x = x + 0.5 * self.ff_in(x)
    x = x + self.attention(x, mask, rotary)
    x = x + self.conv(x, keep)
    x = x + 0.5 * self.ff_out(x)
    return self.norm(x)


class ConformerEncoder(nn.Module):
  """Log-mel features to encodings at 1/subsampling of the frame rate."""

  def __init__(self, cfg: CaptionerConfig, num_mels: int):
    super().__init__()
    self.num_blocks = cfg.encoder_layers
    self.head_dim = cfg.encoder_dim // cfg.encoder_heads
    self.subsampling = ConvSubsampling(cfg, num_mels)
    for i in range(cfg.encoder_layers):
      self.add_module(f'block{i}', ConformerBlock(cfg))

  def forward(
    self, features: torch.Tensor, paddings: torch.Tensor
  ) -> tuple[torch.Tensor, torch.Tensor]:
    """`[b, t, mels]`, `[b, t]` -> encoded `[b, t', d]`, paddings `[b, t']`."""
    x, paddings = self.subsampling(features, paddings.float())
    keep = (1.0 - paddings)[:, :, None]
    mask = key_mask(paddings)
    rotary = rotary_tables(x.shape[1], self.head_dim, x.device)
    for i in range(self.num_blocks):
      x = getattr(self, f'block{i}')(x, keep, mask, rotary)
    return x, paddings


# --- Decoder --------------------------------------------------------------------------------


class CausalSelfAttention(nn.Module):
  """Decoder self-attention (input already normalised)."""

  def __init__(self, dim: int, heads: int, attention_dropout: float):
    super().__init__()
    self.heads = heads
    self.attention_dropout = attention_dropout
    self.qkv = PackedHeads(dim, dim, ('query', 'key', 'value'))
    self.out = MergeHeads(dim, dim)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    q, k, v = split_heads(self.qkv(x), 3, self.heads)
    p = self.attention_dropout if self.training else 0.0
    y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
    return self.out(merge_heads(y))


class CrossAttention(nn.Module):
  """Decoder-to-encoder attention with the encoder key padding mask."""

  def __init__(self, dim: int, encoder_dim: int, heads: int, attention_dropout: float):
    super().__init__()
    self.heads = heads
    self.attention_dropout = attention_dropout
    self.query = PackedHeads(dim, dim, ('query',))
    self.kv = PackedHeads(encoder_dim, dim, ('key', 'value'))
    self.out = MergeHeads(dim, dim)

  def forward(self, x: torch.Tensor, encoded: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`x` `[b * g, l, d]` (g captions per clip, as aac_jax), encoded `[b, s, e]`."""
    (captions, length), clips = x.shape[:2], encoded.shape[0]
    q = self.query(x).reshape(clips, captions // clips * length, -1)  # Each clip's captions.
    (q,) = split_heads(q, 1, self.heads)
    k, v = split_heads(self.kv(encoded), 2, self.heads)
    p = self.attention_dropout if self.training else 0.0
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
    return self.out(merge_heads(y).reshape(captions, length, -1))


class DecoderLayer(nn.Module):
  """Pre-norm layer: causal self-attention, cross-attention, feed-forward."""

  def __init__(self, cfg: CaptionerConfig):
    super().__init__()
    d = cfg.decoder_dim
    self.self_norm = layer_norm(d)
    self.self_attention = CausalSelfAttention(d, cfg.decoder_heads, cfg.attention_dropout)
    self.cross_norm = layer_norm(d)
    self.cross_attention = CrossAttention(
      d, cfg.encoder_dim, cfg.decoder_heads, cfg.attention_dropout
    )
    self.ff = FeedForward(d, cfg.decoder_ff_dim, cfg.dropout)
    self.dropout = nn.Dropout(cfg.dropout)

  def forward(self, x: torch.Tensor, encoded: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    x = x + self.dropout(self.self_attention(self.self_norm(x)))
    x = x + self.dropout(self.cross_attention(self.cross_norm(x), encoded, mask))
    return x + self.ff(x)


class TransformerDecoder(nn.Module):
  """Token ids to next-token logits: scaled embeddings + sinusoids, layers, LN, tied output."""

  def __init__(self, cfg: CaptionerConfig):
    super().__init__()
    self.num_layers = cfg.decoder_layers
    self.max_decode_len = cfg.max_decode_len
    self.scale = cfg.decoder_dim**0.5
    self.embed = nn.Embedding(cfg.vocab_size, cfg.decoder_dim)
    table = layers.sinusoidal_table(cfg.max_decode_len, cfg.decoder_dim)
    self.register_buffer('positions', torch.from_numpy(table), persistent=False)
    self.dropout = nn.Dropout(cfg.dropout)
    for i in range(cfg.decoder_layers):
      self.add_module(f'layer{i}', DecoderLayer(cfg))
    self.norm = layer_norm(cfg.decoder_dim)

  def forward(
    self, encoded: torch.Tensor, enc_paddings: torch.Tensor, tokens: torch.Tensor
  ) -> torch.Tensor:
    """`[b, s, e]`, `[b, s]`, int `[b, l]` -> float32 logits `[b, l, vocab]`."""
    length = tokens.shape[1]
    if length > self.max_decode_len:
      raise ValueError(f'decoder input length {length} > max_decode_len {self.max_decode_len}')
    x = self.embed(tokens) * self.scale + self.positions[:length]
    x = self.dropout(x)
    mask = key_mask(enc_paddings)
    for i in range(self.num_layers):
      x = getattr(self, f'layer{i}')(x, encoded, mask)
    return F.linear(self.norm(x), self.embed.weight).float()


# --- The captioner --------------------------------------------------------------------------


def check_supported(cfg: CaptionerConfig) -> None:
  """Raises for the parts of CaptionerConfig this model does not implement."""
  unsupported = {
    'a pretrained encoder': cfg.pretrained,
    "decoder_style='conette'": cfg.decoder_style != 'aac_jax',
    'the keyword head': cfg.keyword_head,
    'mixup': cfg.mixup_alpha > 0,
    'cached decoding': cfg.decode,
  }
  missing = [name for name, used in unsupported.items() if used]
  if missing:
    raise ValueError(f'TorchCaptioner does not implement {", ".join(missing)}')


class TorchCaptioner(nn.Module):
  """Conformer encoder + 'aac_jax' transformer decoder, from audio (log-mel inside).

  Submodules and parameters are named after the flax modules (`encoder.block0.
  attention.qkv` packs `encoder/block0/attention/{query,key,value}`), which
  `load_jax_params` relies on. Dropout and SpecAugment follow `train()` /
  `eval()`.
  """

  def __init__(
    self, cfg: CaptionerConfig, frontend_cfg: ml_collections.ConfigDict, sample_rate: int
  ):
    super().__init__()
    check_supported(cfg)
    self.config = cfg
    self.frontend_cfg = frontend_cfg
    self.frontend = LogMel(frontend_cfg, sample_rate)
    self.encoder = ConformerEncoder(cfg, int(frontend_cfg.n_mels))
    self.decoder = TransformerDecoder(cfg)
    init_like_flax(self)

  def features(
    self, audio: torch.Tensor, paddings: torch.Tensor
  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-mel (float32, outside any autocast), SpecAugment in training."""
    with torch.autocast(audio.device.type, enabled=False):
      features, frame_pads = self.frontend(audio, paddings)
      if self.training:
        features = spec_augment(features, frame_pads, self.frontend_cfg)
    return features, frame_pads

  def forward(
    self, audio: torch.Tensor, audio_paddings: torch.Tensor, decoder_inputs: torch.Tensor
  ) -> torch.Tensor:
    """Teacher-forced logits.

    Args:
      audio: `[b, samples]`.
      audio_paddings: `[b, samples]`, 1 = padding.
      decoder_inputs: int `[b, l]`, or `[b, refs, l]` (each clip encoded once).

    Returns:
      float32 `[b, l, vocab]` or `[b, refs, l, vocab]`.
    """
    features, paddings = self.features(audio, audio_paddings)
    encoded, enc_paddings = self.encoder(features, paddings)
    if decoder_inputs.ndim == 2:
      return self.decoder(encoded, enc_paddings, decoder_inputs)
    b, refs, length = decoder_inputs.shape
    # As aac_jax: cross-attention projects each clip's encoding once for its refs captions.
    logits = self.decoder(encoded, enc_paddings, decoder_inputs.reshape(b * refs, length))
    return logits.reshape(b, refs, length, -1)


def from_config(
  config: ml_collections.ConfigDict, vocab_size: int, **changes: Any
) -> TorchCaptioner:
  """The TorchCaptioner of a full aac_jax config (`model`, `frontend`, `dataset.sample_rate`)."""
  cfg = models.make_captioner_config(config.model, vocab_size, **changes)
  return TorchCaptioner(cfg, config.frontend, int(config.dataset.sample_rate))


def count_params(model: nn.Module) -> int:
  """Number of scalar parameters."""
  return sum(p.numel() for p in model.parameters())


def init_like_flax(model: nn.Module) -> None:
  """Initialises as flax does: truncated-normal fan-in kernels, zero biases, N(0, 1/d) embeddings."""
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, nn.Linear | nn.Conv1d | nn.Conv2d):
        fan_in = module.weight[0].numel()  # Inputs x kernel positions, as flax's fan_in.
        std = fan_in**-0.5 / _TRUNCATED_STD
        nn.init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
        nn.init.zeros_(module.bias)
      elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=module.embedding_dim**-0.5)
      elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


# --- Flax parameters ------------------------------------------------------------------------


def _identity(x: np.ndarray) -> np.ndarray:
  return x


def _transpose(x: np.ndarray) -> np.ndarray:
  """Dense kernel `[in, out]` -> Linear weight `[out, in]`."""
  return x.T


def _packed_kernels(*kernels: np.ndarray) -> np.ndarray:
  """Head kernels `[in, heads, head_dim]` -> one weight `[parts * heads * head_dim, in]`."""
  return np.concatenate([k.reshape(k.shape[0], -1).T for k in kernels], axis=0)


def _packed_biases(*biases: np.ndarray) -> np.ndarray:
  """Head biases `[heads, head_dim]` -> one bias `[parts * heads * head_dim]`."""
  return np.concatenate([b.reshape(-1) for b in biases])


def _merge_kernel(kernel: np.ndarray) -> np.ndarray:
  """Output kernel `[heads, head_dim, d]` -> Linear weight `[d, heads * head_dim]`."""
  return kernel.reshape(-1, kernel.shape[-1]).T


def _conv2d_kernel(kernel: np.ndarray) -> np.ndarray:
  """HWIO -> OIHW."""
  return kernel.transpose(3, 2, 0, 1)


def _depthwise_kernel(kernel: np.ndarray) -> np.ndarray:
  """`[k, d]` -> grouped Conv1d weight `[d, 1, k]`."""
  return kernel.T[:, None, :]


Layout = tuple[str, tuple[str, ...], Callable[..., np.ndarray], bool]

# Torch modules with `weight` and `bias`: `(flax name of the weight, converter, decayed)`;
# every bias is the flax `bias`, undecayed.
_WEIGHT_AND_BIAS = {
  MergeHeads: ('kernel', _merge_kernel, True),
  nn.Linear: ('kernel', _transpose, True),
  nn.LayerNorm: ('scale', _identity, False),
  nn.Conv2d: ('kernel', _conv2d_kernel, True),
  nn.Conv1d: ('kernel', _depthwise_kernel, True),
}


def parameter_layout(model: TorchCaptioner) -> Iterator[Layout]:
  """For each torch parameter: `(name, flax paths, converter, decayed)`.

  Flax paths are '/'-joined (`'encoder/block0/attention/query/kernel'`);
  `converter(*flax_arrays)` gives the torch array; `decayed` is aac_jax's
  weight decay mask (`train.state._decay_mask`: flax arrays with ndim > 1),
  so the heads' biases `[heads, head_dim]` are decayed and other biases not.
  """
  for name, module in model.named_modules():
    path = name.replace('.', '/')
    if isinstance(module, PackedHeads):
      parent = path.rpartition('/')[0]
      kernels = tuple(f'{parent}/{s}/kernel' for s in module.sources)
      biases = tuple(f'{parent}/{s}/bias' for s in module.sources)
      yield f'{name}.weight', kernels, _packed_kernels, True
      yield f'{name}.bias', biases, _packed_biases, True
    elif isinstance(module, nn.Embedding):
      yield f'{name}.weight', (f'{path}/embedding',), _identity, True
    else:
      # Checked in this order: MergeHeads is an nn.Linear with its own layout.
      for kind, (weight, convert, decayed) in _WEIGHT_AND_BIAS.items():
        if isinstance(module, kind):
          yield f'{name}.weight', (f'{path}/{weight}',), convert, decayed
          yield f'{name}.bias', (f'{path}/bias',), _identity, False
          break


def jax_to_torch_arrays(model: TorchCaptioner, tree: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """A flax tree shaped like the params (params, gradients) in torch names and layouts.

  Raises if a torch parameter has no source, a flax leaf is left unused or
  used twice, or a weight decay flag disagrees with the flax array's ndim.
  """
  flat = {
    path: np.asarray(value, np.float32)
    for path, value in traverse_util.flatten_dict(tree, sep='/').items()
  }
  arrays, used = {}, []
  for name, paths, convert, decayed in parameter_layout(model):
    missing = [p for p in paths if p not in flat]
    if missing:
      raise ValueError(f'{name}: flax parameters {missing} not found')
    sources = [flat[p] for p in paths]
    if decayed != all(s.ndim > 1 for s in sources):
      raise ValueError(f'{name}: weight decay flag {decayed} disagrees with aac_jax mask')
    arrays[name] = np.array(convert(*sources), np.float32, order='C')  # A writable copy.
    used.extend(paths)
  torch_names = [name for name, _ in model.named_parameters()]
  if sorted(arrays) != sorted(torch_names):
    raise ValueError(f'unmapped torch parameters: {sorted(set(torch_names) - set(arrays))}')
  if len(used) != len(set(used)) or set(used) != set(flat):
    raise ValueError(f'flax parameters not used exactly once: {sorted(set(flat) ^ set(used))}')
  return arrays


def load_jax_params(model: TorchCaptioner, params: Mapping[str, Any]) -> None:
  """Copies a flax `params` tree (numpy or jax arrays) into `model`, every parameter once."""
  arrays = jax_to_torch_arrays(model, params)
  with torch.no_grad():
    for name, param in model.named_parameters():
      value = torch.from_numpy(arrays.pop(name))
      if value.shape != param.shape:
        raise ValueError(f'{name}: flax gives {tuple(value.shape)}, torch has {tuple(param.shape)}')
      param.copy_(value)
  assert not arrays, sorted(arrays)


# --- Loss and train step --------------------------------------------------------------------


def shift_right(targets: torch.Tensor) -> torch.Tensor:
  """Decoder inputs `[..., BOS, t_0, ..., t_{L-2}]` (aac_jax's `tokenizer.shift_right`)."""
  bos = torch.full_like(targets[..., :1], tokenizer.BOS_ID)
  return torch.cat([bos, targets[..., :-1]], dim=-1)


def token_loss(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float) -> torch.Tensor:
  """Label-smoothed cross-entropy averaged over real (non-PAD) target tokens.

  As aac_jax's `token_loss_sum`: `(1 - s) * nll + s * mean over the vocabulary
  of -log p`, which is what `F.cross_entropy(label_smoothing=s)` computes.
  """
  vocab = logits.shape[-1]
  flat_targets = targets.reshape(-1).long()
  loss_sum = F.cross_entropy(
    logits.reshape(-1, vocab).float(),
    flat_targets,
    ignore_index=tokenizer.PAD_ID,
    label_smoothing=label_smoothing,
    reduction='sum',
  )
  tokens = (flat_targets != tokenizer.PAD_ID).sum().clamp_min(1)
  return loss_sum / tokens


def learning_rate_fn(optim: ml_collections.ConfigDict, num_steps: int) -> Callable[[int], float]:
  """aac_jax's schedule (`train.state.create_learning_rate_schedule`) as a float function.

  Linear warm-up from 0 to `optim.lr` over `warmup_steps`, then cosine decay
  to `lr * end_lr_ratio` at `max(num_steps, warmup + 1)`; update `t` (from 0)
  uses `fn(t)`.
  """
  peak = float(optim.lr)
  warmup = int(optim.warmup_steps)
  decay = max(int(num_steps), warmup + 1) - warmup
  alpha = optim.end_lr_ratio if peak else 0.0

  def learning_rate(step: int) -> float:
    if step < warmup:
      return peak * step / warmup
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(step - warmup, decay) / decay))
    return peak * ((1.0 - alpha) * cosine + alpha)

  return learning_rate


def param_groups(model: TorchCaptioner, weight_decay: float) -> list[dict[str, Any]]:
  """AdamW groups with aac_jax's weight decay mask (see `parameter_layout`)."""
  decayed = {name: flag for name, _, _, flag in parameter_layout(model)}
  named = list(model.named_parameters())
  return [
    {'params': [p for n, p in named if decayed[n]], 'weight_decay': weight_decay},
    {'params': [p for n, p in named if not decayed[n]], 'weight_decay': 0.0},
  ]


def torch_batch(batch: Mapping[str, Any], device: Any) -> dict[str, torch.Tensor]:
  """`audio`, `audio_paddings` and `targets` of a numpy batch as torch tensors on `device`."""
  keys = ('audio', 'audio_paddings', 'targets')
  return {k: torch.as_tensor(np.asarray(batch[k])).to(device) for k in keys}


class TrainStep:
  """One AdamW update per call: forward, loss, backward, clip, step (as aac_jax's train step).

  Call with a batch of torch tensors (`audio`, `audio_paddings` float32
  `[b, samples]`, `targets` int `[b, L]` or `[b, refs, L]`); returns the
  detached mean token loss (no host sync).
  """

  def __init__(
    self,
    model: TorchCaptioner,
    optim: ml_collections.ConfigDict,
    num_steps: int,
    label_smoothing: float,
  ):
    self.model = model
    self.label_smoothing = float(label_smoothing)
    self.clip_norm = float(optim.clip_norm)
    self.learning_rate = learning_rate_fn(optim, num_steps)
    self.step = 0
    device = next(model.parameters()).device
    self.device_type = device.type
    self.autocast = model.config.compute_dtype == 'bfloat16'
    self.optimizer = torch.optim.AdamW(
      param_groups(model, float(optim.weight_decay)),
      lr=self.learning_rate(0),
      betas=(float(optim.b1), float(optim.b2)),
      eps=ADAM_EPS,
      fused=device.type == 'cuda',
    )

  def __call__(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    lr = self.learning_rate(self.step)
    for group in self.optimizer.param_groups:
      group['lr'] = lr
    self.model.train()
    targets = batch['targets']
    with torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.autocast):
      logits = self.model(batch['audio'], batch['audio_paddings'], shift_right(targets))
    loss = token_loss(logits, targets, self.label_smoothing)
    self.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if self.clip_norm > 0:
      torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_norm, foreach=True)
    self.optimizer.step()
    self.step += 1
    return loss.detach()


def make_train_step(
  model: TorchCaptioner,
  optim: ml_collections.ConfigDict,
  num_steps: int,
  label_smoothing: float,
) -> TrainStep:
  """The train step of `model` with `config.optim` and `config.train.num_steps`."""
  return TrainStep(model, optim, num_steps, label_smoothing)
