"""The audio bridge: encoder frames -> a language model's prompt -> caption logits.

`LlmDecoder` is the captioner's decoder when `decoder_style='llm'` (the
SLAM-AAC recipe). For each clip it builds one sequence

    [audio embeddings] [prompt tokens] [decoder inputs: BOS, w1 .. wn]

where the audio embeddings are the encoder frames, `frame_stack`
consecutive frames concatenated (leftover frames dropped, as SLAM-LLM's
`EncoderProjectorConcat`), through a projector (`'linear'`: one Dense;
`'mlp'`: Dense(projector_dim), ReLU, Dense, SLAM-AAC's), and returns the
logits at the decoder-input positions only, so the captioner's loss covers
the caption tokens alone. A stacked frame is real when all its frames are;
padded ones are masked as keys and skipped by the positions, so a clip
gives the same logits padded in a batch or alone.

Decoding (`aac_jax.decoding`) works unchanged: the call that creates the
cache runs audio, prompt and the dummy tokens once and keeps the keys and
values of audio and prompt; each later call feeds one token. The cache holds
`position` `[rows]` (the next token's rotary position in each row).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from aac_jax.data import llm_tokenizer
from aac_jax.data import tokenizer as tokenizer_lib
from aac_jax.models import partitioning, pretrained_store
from aac_jax.models.llm import LanguageModel, LlmConfig

PROJECTORS = ('linear', 'mlp')


def stack_frames(
  encoded: jax.Array, enc_paddings: jax.Array, k: int
) -> tuple[jax.Array, jax.Array]:
  """Concatenates `k` consecutive frames.

  Args:
    encoded: `[b, s, d]`.
    enc_paddings: `[b, s]`, 1 = pad (padding at the end).
    k: frames per stack.

  Returns:
    `[b, s // k, k * d]` and paddings `[b, s // k]` (a stack is padding
    when any of its frames is; fewer than `k` frames give one padding stack).
  """
  b, s, d = encoded.shape
  if s < k:  # Too short for one stack: a single padding stack (no audio reaches the model).
    encoded = jnp.pad(encoded, ((0, 0), (0, k - s), (0, 0)))
    enc_paddings = jnp.pad(enc_paddings, ((0, 0), (0, k - s)), constant_values=1.0)
    s = k
  used = s // k * k
  stacked = encoded[:, :used].reshape(b, s // k, k * d)
  paddings = enc_paddings[:, :used].reshape(b, s // k, k).max(axis=-1)
  return stacked, paddings


class Projector(nn.Module):
  """Stacked frames `[..., k * d]` -> language-model embeddings `[..., hidden]`."""

  kind: str
  hidden: int
  inner: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.kind == 'mlp':
      x = partitioning.dense(self.inner, ('input', 'mlp'), dtype=self.dtype, name='linear1')(x)
      x = nn.relu(x)
      return partitioning.dense(self.hidden, ('mlp', 'embed'), dtype=self.dtype, name='linear2')(x)
    return partitioning.dense(self.hidden, ('input', 'embed'), dtype=self.dtype, name='linear')(x)


class LlmDecoder(nn.Module):
  """The captioner's decoder interface on a language model (see module doc).

  Attributes:
    llm: the language model's config (its `decode`/`deterministic` are
      replaced by the captioner's).
    prompt_ids: the prompt's token ids (after the audio, before the caption).
    frame_stack: encoder frames per audio embedding.
    projector: 'linear' or 'mlp'.
    projector_dim: hidden width of the 'mlp' projector.
    decode: cached decoding.
    deterministic: no dropout.
  """

  llm: LlmConfig
  prompt_ids: tuple[int, ...]
  frame_stack: int = 1
  projector: str = 'mlp'
  projector_dim: int = 2048
  decode: bool = False
  deterministic: bool = True

  @nn.compact
  def __call__(
    self, encoded: jax.Array, enc_paddings: jax.Array, decoder_inputs: jax.Array, mix=None
  ) -> jax.Array:
    """Logits `[b * g, l, vocab]` of decoder inputs `[b * g, l]` (g captions per clip)."""
    if mix is not None:
      raise ValueError("mixup is not supported with decoder_style='llm'")
    cfg = self.llm.replace(decode=self.decode, deterministic=self.deterministic)
    lm = LanguageModel(cfg, name='llm')
    rows, length = decoder_inputs.shape
    if self.decode and self.has_variable('cache', 'position'):
      position = self.variable('cache', 'position', None)
      positions = position.value[:, None] + jnp.arange(length)[None]
      position.value = position.value + length
      valid = jnp.ones((rows, length), bool)
      return lm.logits(lm.hidden(lm.embed(decoder_inputs), positions, valid))
    prefix, prefix_valid = self._prefix(lm, encoded, enc_paddings, rows)
    x = jnp.concatenate([prefix, lm.embed(decoder_inputs).astype(prefix.dtype)], axis=1)
    valid = jnp.concatenate([prefix_valid, jnp.ones((rows, length), bool)], axis=1)
    positions = jnp.maximum(jnp.cumsum(valid, axis=1) - 1, 0)
    start = prefix.shape[1]
    if self.decode:  # The cache-creating call: audio and prompt stay, the dummy tokens go.
      first = positions[:, start]
      self.variable('cache', 'position', lambda: first)
    hidden = lm.hidden(x, positions, valid, prefill=start)
    return lm.logits(hidden[:, start:])

  def _prefix(self, lm, encoded, enc_paddings, rows):
    """Audio + prompt embeddings `[rows, p, hidden]` and their validity `[rows, p]`."""
    stacked, paddings = stack_frames(encoded, enc_paddings, self.frame_stack)
    stacked = jnp.where(paddings[..., None] > 0.5, 0.0, stacked)
    audio = Projector(
      self.projector, self.llm.hidden_size, self.projector_dim, self.llm.dtype, name='projector'
    )(stacked)
    clips = audio.shape[0]
    if rows % clips:
      raise ValueError(f'{rows} captions do not split evenly over {clips} encoded clips')
    prompt = lm.embed(jnp.asarray(self.prompt_ids, jnp.int32)[None])
    prompt = jnp.broadcast_to(prompt, (clips, *prompt.shape[1:])).astype(audio.dtype)
    prefix = jnp.concatenate([audio, prompt], axis=1)
    valid = jnp.concatenate([paddings < 0.5, jnp.ones((clips, len(self.prompt_ids)), bool)], axis=1)
    repeat = rows // clips
    return jnp.repeat(prefix, repeat, axis=0), jnp.repeat(valid, repeat, axis=0)


def frozen_mask(params: Any, train: str) -> Any:
  """Bool tree like a captioner's params: True for the language model's base weights.

  Args:
    params: the captioner's parameters (`decoder/llm/...` is the language model).
    train: 'full' (nothing of the language model frozen) or 'lora' (only
      its `lora_a`/`lora_b` adapters train; projector and encoder as set
      elsewhere).
  """

  def frozen(path, _leaf):
    keys = [getattr(k, 'key', None) for k in path]
    if train != 'lora' or keys[:2] != ['decoder', 'llm']:
      return False
    return keys[-1] not in ('lora_a', 'lora_b')

  return jax.tree_util.tree_map_with_path(frozen, params)


_ARCHITECTURE = (
  'hidden_size',
  'num_layers',
  'num_heads',
  'num_kv_heads',
  'head_dim',
  'intermediate_size',
  'rope_theta',
  'attention_bias',
  'tie_embeddings',
  'initializer_range',
)
_LORA = ('lora_rank', 'lora_alpha', 'lora_dropout')


def llm_config(llm_cfg: Any, vocab_size: int, compute_dtype: str = 'float32') -> LlmConfig:
  """The language model of `config.model.llm`: its `init` folder's, else a random one's.

  Args:
    llm_cfg: the `model.llm` ConfigDict (configs/base.py).
    vocab_size: the run's vocabulary (a random model's; a converted one
      must have it too).
    compute_dtype: the captioner's compute dtype.
  """
  lora = {name: llm_cfg[name] for name in _LORA}
  lora['lora_targets'] = tuple(llm_cfg.lora_targets)
  lora['base_dtype'] = llm_cfg.get('base_dtype', 'float32')
  if llm_cfg.init:
    settings = pretrained_store.load_settings(llm_cfg.init)
    if 'llm' not in settings:
      raise ValueError(
        f'model.llm.init={llm_cfg.init} is not a converted language model; make one with '
        'python tools/convert_checkpoint.py llm --input HF_FOLDER --output DIR'
      )
    fields = dict(settings['llm'], rope_scaling=tuple(map(tuple, settings['llm']['rope_scaling'])))
    return LlmConfig(**fields).replace(compute_dtype=compute_dtype, **lora)
  architecture = {name: llm_cfg[name] for name in _ARCHITECTURE}
  return LlmConfig(vocab_size=vocab_size, compute_dtype=compute_dtype, **architecture, **lora)


def captioner_fields(llm_cfg: Any, vocab_size: int, compute_dtype: str = 'float32') -> dict:
  """The `CaptionerConfig` fields of `config.model.llm` (`make_captioner_config` calls this)."""
  if llm_cfg.projector not in PROJECTORS:
    raise ValueError(f'model.llm.projector must be one of {PROJECTORS}, got {llm_cfg.projector!r}')
  return {
    'llm': llm_config(llm_cfg, vocab_size, compute_dtype),
    'llm_prompt_ids': tuple(int(i) for i in llm_cfg.prompt_ids),
    'llm_frame_stack': llm_cfg.frame_stack,
    'llm_projector': llm_cfg.projector,
    'llm_projector_dim': llm_cfg.projector_dim,
    'llm_train': llm_cfg.train,
    'llm_init': llm_cfg.init,
  }


def caption_tokenizer(folder: str) -> tokenizer_lib.CaptionTokenizer:
  """The run tokenizer of a converted language-model folder (`tokenizer.json` + `settings.json`).

  Raises:
    ValueError: the folder was converted before its special token ids were kept.
  """
  settings = pretrained_store.load_settings(folder)
  if 'token_ids' not in settings:
    raise ValueError(
      f'{folder} names no special token ids (converted before they were kept): convert it '
      'again with python tools/convert_checkpoint.py llm --input HF_FOLDER --output DIR'
    )
  llm = llm_tokenizer.LlmTokenizer.load(folder)
  vocab_size = settings['llm']['vocab_size']
  partners = tokenizer_lib.special_partners(llm, settings['token_ids'], vocab_size)
  return tokenizer_lib.CaptionTokenizer(llm, partners, vocab_size)


def save_llm_vocabulary(config: Any, vocab_path: Any) -> None:
  """Writes a converted decoder's tokenizer as the run's vocabulary (`prepare.prepare`).

  With `decoder_style='llm'` and `model.llm.init` set, captions, prompt and
  decoded text go through that folder's `tokenizer.json`
  (`caption_tokenizer`); `load_llm_init` loads the weights in the same id
  order. Nothing happens for other runs or when the run already has a
  vocabulary (a resumed or inherited one).
  """
  model = config.model
  if model.decoder_style != 'llm' or not model.llm.init or vocab_path.exists():
    return
  caption_tokenizer(model.llm.init).save(vocab_path)


def resolve_prompt(config: Any, tokenizer: Any) -> None:
  """Sets `config.model.llm.prompt_ids` from `config.model.llm.prompt` with the run's tokenizer.

  Every process calls it after the vocabulary exists (`prepare.prepare_run`),
  so the saved `config.json` holds the ids that inference reads back.
  Nothing happens for other decoders or when the ids are already set.
  """
  model = config.model
  if model.decoder_style != 'llm' or list(model.llm.prompt_ids) or not model.llm.prompt:
    return
  model.llm.prompt_ids = list(tokenizer.encode(model.llm.prompt))
