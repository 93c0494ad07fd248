"""CLAP (LAION's contrastive audio-text model) in Flax Linen: `transformers.ClapModel`.

Audio: HTS-AT (`htsat.Htsat`) pooled features -> two-layer projection ->
unit vector. Text: RoBERTa (the BERT layers of `aac_jax.metrics.bert`, with
RoBERTa's position ids counted from `pad_token_id + 1` and one token type) ->
tanh pooler on `<s>` -> two-layer projection -> unit vector. Similarity
logits are cosine similarities times `exp(logit_scale)`.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from aac_jax.metrics import bert
from aac_jax.metrics.clap import htsat

_HIGHEST = jax.lax.Precision.HIGHEST
_ACTIVATIONS = {'relu': jax.nn.relu, 'gelu': lambda x: jax.nn.gelu(x, approximate=False)}


@dataclasses.dataclass(frozen=True)
class ClapConfig:
  """A CLAP checkpoint's sizes.

  Attributes:
    audio: the HTS-AT tower.
    text: the RoBERTa tower.
    projection_dim: width of the shared embedding space (`projection_dim`).
    projection_act: activation between the projection layers (`projection_hidden_act`).
    pad_token_id: RoBERTa's padding id (`text_config.pad_token_id`).
  """

  audio: htsat.HtsatConfig
  text: bert.BertConfig
  projection_dim: int = 512
  projection_act: str = 'relu'
  pad_token_id: int = 1

  @classmethod
  def from_hf(cls, hf: dict) -> 'ClapConfig':
    """Reads a CLAP `config.json` (as a dict)."""
    if hf.get('model_type') != 'clap':
      raise ValueError(f'not a CLAP config: model_type={hf.get("model_type")!r}')
    t = hf.get('text_config') or {}
    act = hf.get('projection_hidden_act', 'relu')
    if act not in _ACTIVATIONS:
      raise ValueError(f'unsupported projection_hidden_act {act!r}')
    text = bert.BertConfig(
      vocab_size=t.get('vocab_size', 50265),
      hidden_size=t.get('hidden_size', 768),
      num_layers=t.get('num_hidden_layers', 12),
      num_heads=t.get('num_attention_heads', 12),
      intermediate_size=t.get('intermediate_size', 3072),
      max_positions=t.get('max_position_embeddings', 514),
      type_vocab_size=t.get('type_vocab_size', 1),
      layer_norm_eps=t.get('layer_norm_eps', 1e-12),
      hidden_act=t.get('hidden_act', 'gelu'),
    )
    return cls(
      audio=htsat.HtsatConfig.from_hf(hf.get('audio_config') or {}),
      text=text,
      projection_dim=int(hf.get('projection_dim', 512)),
      projection_act=act,
      pad_token_id=int(t.get('pad_token_id', 1)),
    )


def roberta_positions(input_ids: jax.Array, pad_token_id: int) -> jax.Array:
  """RoBERTa's position ids: real tokens count from `pad_token_id + 1`, padding gets `pad_token_id`."""
  real = (input_ids != pad_token_id).astype(jnp.int32)
  return jnp.cumsum(real, axis=1) * real + pad_token_id


class Projection(nn.Module):
  """Linear -> activation -> linear."""

  features: int
  act: str

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    dense = lambda name: nn.Dense(self.features, precision=_HIGHEST, name=name)  # noqa: E731
    return dense('linear2')(_ACTIVATIONS[self.act](dense('linear1')(x)))


def _unit(x: jax.Array) -> jax.Array:
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class Clap(nn.Module):
  """Both towers, their projections and the two logit scales."""

  config: ClapConfig

  def setup(self):
    c = self.config
    self.audio_model = htsat.Htsat(c.audio)
    self.audio_projection = Projection(c.projection_dim, c.projection_act)
    self.text_model = bert.BertEncoder(c.text)
    self.text_pooler = nn.Dense(c.text.hidden_size, precision=_HIGHEST)
    self.text_projection = Projection(c.projection_dim, c.projection_act)
    self.logit_scale_a = self.param(
      'logit_scale_a', nn.initializers.constant(jnp.log(1 / 0.07)), ()
    )
    self.logit_scale_t = self.param(
      'logit_scale_t', nn.initializers.constant(jnp.log(1 / 0.07)), ()
    )

  def audio_embeds(self, mel: jax.Array, is_longer: jax.Array | None = None) -> jax.Array:
    """`[batch, channels, frames, mels]` log-mel -> unit vectors `[batch, projection_dim]`."""
    pooled, _ = self.audio_model(mel, is_longer)
    return _unit(self.audio_projection(pooled))

  def text_embeds(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """int32 `[batch, length]` ids and mask (1 real) -> unit vectors `[batch, projection_dim]`."""
    hidden = self.text_model(
      input_ids,
      attention_mask,
      jnp.zeros_like(input_ids),
      roberta_positions(input_ids, self.config.pad_token_id),
    )
    pooled = jnp.tanh(self.text_pooler(hidden[:, 0]))
    return _unit(self.text_projection(pooled))

  def __call__(self, mel, is_longer, input_ids, attention_mask):
    """Logits `(per_audio [audios, texts], per_text [texts, audios])` and both embeddings."""
    audio = self.audio_embeds(mel, is_longer)
    text = self.text_embeds(input_ids, attention_mask)
    sim = jnp.matmul(audio, text.T, precision=_HIGHEST)
    return {
      'logits_per_audio': sim * jnp.exp(self.logit_scale_a),
      'logits_per_text': sim.T * jnp.exp(self.logit_scale_t),
      'audio_embeds': audio,
      'text_embeds': text,
    }
