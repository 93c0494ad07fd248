"""CoNeTTE's transformer decoder (`decoder_style='conette'`).

Facts from the reference (conette 0.3.2, `conette/nn/decoders/aac_tfmer.py`
`AACTransformerDecoder`; its frames come through `build_proj_lin` of
`pl_modules/common.py`, dropout(0.5) -> linear -> ReLU -> dropout(0.5), which
is aac_jax's `encoder_projection` of `models/pretrained.py`):
- token embeddings times sqrt(d_model), plus fixed sinusoids with sine at
  even and cosine at odd channels (`PositionalEncoding`), then dropout;
- `nn.TransformerDecoderLayer` post-norm layers: x = LN(x + SA(x)),
  x = LN(x + CA(x, frames)), x = LN(x + W2 dropout(GELU(W1 x))), exact
  (erf) GELU, LayerNorm eps 1e-5, the same dropout rate on residual branches,
  feed-forward hidden units and attention weights; no final norm;
- an untied classifier with bias.
Teacher forcing in the reference masks padded tokens as keys; padded
positions are never inputs of real ones under the causal mask, so real
positions' logits do not depend on it (padded positions' logits are ignored
by the loss).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.linen.linear import default_embed_init

from aac_jax.models import layers, partitioning
from aac_jax.models.config import CaptionerConfig
from aac_jax.models.mixup import mix_values

LAYER_NORM_EPS = 1e-5


def interleaved_sinusoids(length: int, dim: int) -> np.ndarray:
  """CoNeTTE's position table: `pe[p, 2i] = sin(p w_i)`, `pe[p, 2i + 1] = cos(p w_i)`.

  Args:
    length: positions.
    dim: embedding size (even); `w_i = exp(-2 i ln(10000) / dim)`.

  Returns:
    float32 `[length, dim]`.
  """
  rates = np.exp(-np.arange(0, dim, 2, dtype=np.float32) * np.float32(np.log(10000.0) / dim))
  angles = np.arange(length, dtype=np.float32)[:, None] * rates[None, :]
  table = np.zeros((length, dim), np.float32)
  table[:, 0::2] = np.sin(angles)
  table[:, 1::2] = np.cos(angles)
  return table


class ConetteDecoderLayer(nn.Module):
  """Post-norm layer: self-attention, cross-attention, GELU feed-forward."""

  config: CaptionerConfig

  def _norm(self, name: str) -> nn.LayerNorm:
    return partitioning.layer_norm(epsilon=LAYER_NORM_EPS, dtype=self.config.dtype, name=name)

  @nn.compact
  def __call__(self, x: jax.Array, encoded: jax.Array, enc_paddings: jax.Array) -> jax.Array:
    """`x` `[b, l, d]`, encoded `[b, s, e]`, enc_paddings `[b, s]` -> `[b, l, d]`."""
    cfg = self.config
    dropout = nn.Dropout(cfg.dropout, deterministic=cfg.deterministic)
    heads = (cfg.decoder_heads, cfg.attention_dropout, cfg.deterministic, cfg.decode, cfg.dtype)
    y = layers.CausalSelfAttention(*heads, name='self_attention')(x)
    x = self._norm('self_norm')(x + dropout(y))
    y = layers.CrossAttention(*heads, name='cross_attention')(x, encoded, enc_paddings)
    x = self._norm('cross_norm')(x + dropout(y))
    y = partitioning.dense(cfg.decoder_ff_dim, ('embed', 'mlp'), dtype=cfg.dtype, name='ff_in')(x)
    y = dropout(nn.gelu(y, approximate=False))
    y = partitioning.dense(x.shape[-1], ('mlp', 'embed'), dtype=cfg.dtype, name='ff_out')(y)
    return self._norm('ff_norm')(x + dropout(y))


class ConetteDecoder(nn.Module):
  """Token ids to next-token logits, CoNeTTE layout (same interface as `TransformerDecoder`).

  With `task_token_id >= 0` the token at position 0 is replaced by it (how
  CoNeTTE conditions on the dataset: BOS in training targets and decoding
  becomes e.g. `<bos_clotho>`). With `decode=True` a `cache/position`
  counter `[]` gives the position of the next token; the frame projection's output is only used by the call
  that creates the cache (cross-attention keys and values are cached).
  """

  config: CaptionerConfig

  @nn.compact
  def __call__(
    self,
    encoded: jax.Array,
    enc_paddings: jax.Array,
    decoder_inputs: jax.Array,
    mix: Any = None,
  ) -> jax.Array:
    """Computes logits.

    Args:
      encoded: `[batch, enc_time, encoder_dim]` encoder frames.
      enc_paddings: `[batch, enc_time]`, 1 = pad.
      decoder_inputs: `[batch, length]` int32 token ids (task or BOS token
        first). With `decode=True` and an initialised cache, the next
        `length` tokens.
      mix: mixup draw (training): the input embeddings are mixed as
        CoNeTTE mixes them (`models.pretrained.Mix`).

    Returns:
      float32 logits `[batch, length, vocab_size]`.
    """
    cfg = self.config
    length = decoder_inputs.shape[1]
    if length > cfg.max_decode_len:
      raise ValueError(f'decoder input length {length} > max_decode_len {cfg.max_decode_len}')
    positions = layers.step_positions(self, length, cfg.decode)  # [length]
    if cfg.task_token_id >= 0:
      decoder_inputs = jnp.where(positions[None] == 0, cfg.task_token_id, decoder_inputs)
    embed = nn.Embed(
      cfg.vocab_size,
      cfg.decoder_dim,
      dtype=cfg.dtype,
      embedding_init=partitioning.with_axes(default_embed_init, ('vocab', 'embed')),
      name='embed',
    )
    table = jnp.asarray(interleaved_sinusoids(cfg.max_decode_len, cfg.decoder_dim))
    x = embed(decoder_inputs) * jnp.asarray(cfg.decoder_dim**0.5, cfg.dtype)
    if mix is not None:
      x = mix_values(x, mix)
    x = x + table[positions][None].astype(cfg.dtype)
    x = nn.Dropout(cfg.dropout)(x, deterministic=cfg.deterministic)
    layer = layers.maybe_remat(ConetteDecoderLayer, cfg)
    for i in range(cfg.decoder_layers):
      x = layer(cfg, name=f'layer{i}')(x, encoded, enc_paddings)
    classifier = partitioning.dense(
      cfg.vocab_size, ('embed', 'vocab'), dtype=cfg.dtype, name='classifier'
    )
    return classifier(x).astype(jnp.float32)
