"""Transformer decoder with tied embeddings and an optional KV cache."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from aac_jax.models import layers, mixup, partitioning
from aac_jax.models.config import CaptionerConfig


class DecoderLayer(nn.Module):
  """Pre-norm layer: causal self-attention, cross-attention, feed-forward."""

  config: CaptionerConfig

  @nn.compact
  def __call__(self, x: jax.Array, encoded: jax.Array, enc_paddings: jax.Array) -> jax.Array:
    """`x` `[b, l, d]`, encoded `[b, s, e]`, enc_paddings `[b, s]` -> `[b, l, d]`."""
    cfg = self.config
    dropout = nn.Dropout(cfg.dropout)
    y = partitioning.layer_norm(dtype=cfg.dtype, name='self_norm')(x)
    y = layers.CausalSelfAttention(
      cfg.decoder_heads,
      cfg.attention_dropout,
      cfg.deterministic,
      cfg.decode,
      cfg.dtype,
      name='self_attention',
    )(y)
    x = x + dropout(y, deterministic=cfg.deterministic)
    y = partitioning.layer_norm(dtype=cfg.dtype, name='cross_norm')(x)
    y = layers.CrossAttention(
      cfg.decoder_heads,
      cfg.attention_dropout,
      cfg.deterministic,
      cfg.decode,
      cfg.dtype,
      name='cross_attention',
    )(y, encoded, enc_paddings)
    x = x + dropout(y, deterministic=cfg.deterministic)
    return x + layers.FeedForward(
      cfg.decoder_ff_dim, cfg.dropout, cfg.deterministic, cfg.dtype, name='ff'
    )(x)


class TransformerDecoder(nn.Module):
  """Token ids to next-token logits, attending to the encoder output.

  Positions are fixed sinusoids added to the scaled token embeddings. The
  output projection is the transposed token embedding. With `decode=True` a
  `cache/position` counter `[]` gives the position of the next token.
  """

  config: CaptionerConfig

  @nn.compact
  def __call__(
    self,
    encoded: jax.Array,
    enc_paddings: jax.Array,
    decoder_inputs: jax.Array,
    mix: mixup.Mix | None = None,
  ) -> jax.Array:
    """Computes logits.

    Args:
      encoded: `[batch, enc_time, encoder_dim]` encoder output.
      enc_paddings: `[batch, enc_time]`, 1 = pad.
      decoder_inputs: `[batch, length]` int32 token ids (BOS first). With
        `decode=True` and an initialised cache, the next `length` tokens.
      mix: optional mixup draw (`aac_jax.models.mixup.Mix`, training):
        the scaled token embeddings are mixed like the encoder frames.

    Returns:
      float32 logits `[batch, length, vocab_size]`.
    """
    cfg = self.config
    length = decoder_inputs.shape[1]
    if length > cfg.max_decode_len:
      raise ValueError(f'decoder input length {length} > max_decode_len {cfg.max_decode_len}')
    embed = nn.Embed(
      cfg.vocab_size,
      cfg.decoder_dim,
      dtype=cfg.dtype,
      embedding_init=partitioning.with_axes(
        nn.initializers.normal(stddev=cfg.decoder_dim**-0.5), ('vocab', 'embed')
      ),
      name='embed',
    )
    table = jnp.asarray(layers.sinusoidal_table(cfg.max_decode_len, cfg.decoder_dim))
    positions = layers.step_positions(self, length, cfg.decode)  # [length]
    if cfg.task_token_id >= 0:  # A task-conditioned model (dataset mixtures).
      decoder_inputs = jnp.where(positions[None] == 0, cfg.task_token_id, decoder_inputs)
    x = embed(decoder_inputs) * jnp.asarray(cfg.decoder_dim**0.5, cfg.dtype)
    if mix is not None:
      x = mixup.mix_values(x, mix)
    x = x + table[positions][None].astype(cfg.dtype)
    x = nn.Dropout(cfg.dropout)(x, deterministic=cfg.deterministic)
    layer = layers.maybe_remat(DecoderLayer, cfg)
    for i in range(cfg.decoder_layers):
      x = layer(cfg, name=f'layer{i}')(x, encoded, enc_paddings)
    x = partitioning.layer_norm(dtype=cfg.dtype, name='norm')(x)
    return embed.attend(x).astype(jnp.float32)
