"""The audio captioner: conformer or pretrained-tagger encoder + transformer decoder."""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from aac_jax.models import partitioning
from aac_jax.models.conette_decoder import ConetteDecoder
from aac_jax.models.config import CaptionerConfig
from aac_jax.models.conformer import ConformerEncoder
from aac_jax.models.decoder import TransformerDecoder
from aac_jax.models.keyword_head import KeywordHead
from aac_jax.models.llm_bridge import LlmDecoder
from aac_jax.models.mixup import Mix, mix_frames, sample_mix
from aac_jax.models.pretrained import MIN_INPUT_FRAMES, PretrainedEncoder


class Captioner(nn.Module):
  """Encoder-decoder captioning model (see docs/CONTRACTS.md).

  Dropout draws from the `'dropout'` rng unless `config.deterministic`. With
  `config.decode`, `decode` runs against the `cache` collection: a first call
  with `mutable=['cache']` on full-length decoder inputs creates the cache,
  later calls feed one step of tokens `[batch, 1]` each (see
  `aac_jax.decoding.make_step_fn`).
  """

  config: CaptionerConfig

  def setup(self):
    if self.config.pretrained:
      self.encoder = PretrainedEncoder(self.config)
    else:
      self.encoder = ConformerEncoder(self.config)
    cfg = self.config
    if cfg.decoder_style == 'llm':
      self.decoder = LlmDecoder(
        cfg.llm,
        cfg.llm_prompt_ids,
        cfg.llm_frame_stack,
        cfg.llm_projector,
        cfg.llm_projector_dim,
        cfg.decode,
        cfg.deterministic,
      )
    else:
      decoder_cls = ConetteDecoder if cfg.decoder_style == 'conette' else TransformerDecoder
      self.decoder = decoder_cls(cfg)
    if self.config.keyword_head:
      self.keyword_head = KeywordHead(self.config.vocab_size, self.config.dtype)

  def encode(
    self, features: jax.Array, feature_paddings: jax.Array, mix: Mix | None = None
  ) -> tuple[jax.Array, jax.Array]:
    """Encodes audio features.

    Args:
      features: `[batch, time, mels]` log-mel features.
      feature_paddings: `[batch, time]`, 1 = pad.
      mix: optional mixup draw (training; see `_mixup`).

    Returns:
      encoded `[batch, enc_time, dim]` and enc_paddings `[batch, enc_time]`
      (conformer: enc_time = ceil(time / subsampling); taggers: their frames).
    """
    if self.config.pretrained:
      return self.encoder(features, feature_paddings, mix)
    encoded, enc_paddings = self.encoder(features, feature_paddings)
    if mix is not None:
      encoded, enc_paddings = mix_frames(encoded, enc_paddings, mix)
    return encoded, enc_paddings

  def _mixup(self, batch: int) -> Mix | None:
    """A mixup draw for this batch in training with `mixup_alpha > 0`, else None.

    As the DCASE 2024 baseline: the encoder frames and the decoder's input
    embeddings of each example are mixed with another example's; the targets
    stay those of the example itself.
    """
    if self.config.deterministic or not self.config.mixup_alpha:
      return None
    return sample_mix(self.make_rng('dropout'), batch, self.config.mixup_alpha)

  def decode(
    self, encoded: jax.Array, enc_paddings: jax.Array, decoder_inputs: jax.Array
  ) -> jax.Array:
    """Next-token logits.

    Args:
      encoded: `[batch, enc_time, encoder_dim]`.
      enc_paddings: `[batch, enc_time]`, 1 = pad.
      decoder_inputs: `[batch * g, length]` int32, BOS then the targets
        shifted right (teacher forcing), or the next tokens in cached
        decoding; `g` captions per clip (rows `i * g .. i * g + g - 1` read
        clip `i`; usually g = 1).

    Returns:
      float32 logits `[batch * g, length, vocab_size]`.
    """
    return self.decoder(encoded, enc_paddings, decoder_inputs)

  def __call__(
    self, features: jax.Array, feature_paddings: jax.Array, decoder_inputs: jax.Array
  ) -> jax.Array:
    """Teacher-forced logits (see `encode`, `decode`).

    `decoder_inputs` `[batch, length]` give `[batch, length, vocab_size]`;
    `[batch, refs, length]` (several captions of each clip) encode each clip
    once and give `[batch, refs, length, vocab_size]`.
    """
    mix = self._mixup(features.shape[0])
    encoded, enc_paddings = self.encode(features, feature_paddings, mix)
    return self._decode_references(encoded, enc_paddings, decoder_inputs, mix)

  def _decode_references(self, encoded, enc_paddings, decoder_inputs, mix=None):
    if decoder_inputs.ndim == 2:
      return self.decoder(encoded, enc_paddings, decoder_inputs, mix)
    if mix is not None:
      raise ValueError('mixup needs one caption per clip (dataset.captions_per_clip = 1)')
    batch, refs, length = decoder_inputs.shape
    # The decoder's cross-attention projects each clip's encoding once for its refs captions.
    logits = self.decode(encoded, enc_paddings, decoder_inputs.reshape(batch * refs, length))
    return logits.reshape(batch, refs, length, -1)

  def from_frames(
    self, frames: jax.Array, frame_paddings: jax.Array, decoder_inputs: jax.Array
  ) -> jax.Array:
    """Teacher-forced logits from stored tagger frames (`aac_jax.data.embeddings`).

    Args:
      frames: `[batch, frames, tagger_dim]` the frozen tagger's output.
      frame_paddings: `[batch, frames]`, 1 = pad.
      decoder_inputs: `[batch, length]`.

    Returns:
      `[batch, length, vocab_size]`, as `__call__` on the audio those frames
      came from.
    """
    if not self.config.pretrained:
      raise ValueError('from_frames needs a pretrained tagger encoder')
    mix = self._mixup(frames.shape[0])
    encoded, enc_paddings = self.encoder.encode_frames(frames, frame_paddings, mix)
    return self._decode_references(encoded, enc_paddings, decoder_inputs, mix)

  def with_keywords(
    self, features: jax.Array, feature_paddings: jax.Array, decoder_inputs: jax.Array
  ) -> tuple[jax.Array, jax.Array]:
    """Teacher-forced logits (as `__call__`) and clip keyword probabilities `[batch, vocab_size]`.

    Needs `config.keyword_head` (see `aac_jax.models.keyword_head`).
    """
    if not self.config.keyword_head:
      raise ValueError('with_keywords needs a model built with keyword_head=True')
    encoded, enc_paddings = self.encode(features, feature_paddings)
    logits = self._decode_references(encoded, enc_paddings, decoder_inputs)
    return logits, self.keyword_head(encoded, enc_paddings)


def init_params(
  model: Captioner, rng: jax.Array, num_frames: int = 64, num_mels: int = 64, length: int = 8
) -> Any:
  """Initialises parameters from dummy inputs (shapes only matter for mels).

  Args:
    model: a `Captioner` (any mode).
    rng: PRNG key.
    num_frames: dummy input frames.
    num_mels: mel bins of the real features (fixes the subsampling projection).
    length: dummy decoder length (<= max_decode_len).

  Returns:
    The `params` collection.
  """
  init, inputs = _boxed_init(model, num_frames, num_mels, length)
  return nn.unbox(jax.jit(init)(rng, *inputs)['params'])


def _boxed_init(model: Captioner, num_frames: int, num_mels: int, length: int):
  """`(init, inputs)`: `init(rng, *inputs)` gives the variables, axis names attached."""
  init_model = model.clone(config=model.config.replace(decode=False, deterministic=True))
  if model.config.pretrained:
    num_frames = max(num_frames, MIN_INPUT_FRAMES)
  features = jnp.zeros((1, num_frames, num_mels), jnp.float32)
  paddings = jnp.zeros((1, num_frames), jnp.float32)
  tokens = jnp.zeros((1, length), jnp.int32)
  method = Captioner.with_keywords if model.config.keyword_head else Captioner.__call__
  return functools.partial(init_model.init, method=method), (features, paddings, tokens)


def param_axes(model: Captioner, num_mels: int = 64, length: int = 8) -> tuple[Any, Any]:
  """`(logical_specs, shapes)` of the parameters `init_params` makes (nothing is computed).

  Returns:
    A tree of logical `PartitionSpec`s (`aac_jax.models.partitioning`) and
    the same tree of `jax.ShapeDtypeStruct`s.
  """
  init, inputs = _boxed_init(model, 64, num_mels, length)
  boxed = jax.eval_shape(init, jax.random.key(0), *inputs)['params']
  return partitioning.logical_specs(boxed), nn.unbox(boxed)


def count_params(params: Any) -> int:
  """Number of scalar parameters in a pytree."""
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))
