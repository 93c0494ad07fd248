"""Hyper-parameters of the captioner as a frozen dataclass.

The Linen modules take one `CaptionerConfig`; variants for evaluation and
cached decoding are made with `.replace(deterministic=True, decode=True)`.
"""

import dataclasses
from typing import Any

import jax.numpy as jnp
import ml_collections

_SUBSAMPLING_FACTORS = (2, 4, 8)
ENCODERS = ('conformer', 'convnext', 'cnn14', 'htsat')
# What `encoder_freeze = N` counts (htsat: its Swin stages, `len(htsat.depths)`).
PRETRAINED_STAGES = {'convnext': 4, 'cnn14': 6}
_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
# 'aac_jax': pre-norm layers, tied output embedding (models/decoder.py);
# 'conette': CoNeTTE's AACTransformerDecoder (models/conette_decoder.py);
# 'llm': a Llama / Qwen2 language model behind an audio projector (models/llm_bridge.py).
DECODER_STYLES = ('aac_jax', 'conette', 'llm')
# Rematerialisation: 'block' recomputes each encoder / decoder block in the
# backward pass (keeps only block inputs), 'full' the whole forward pass.
REMAT_MODES = ('none', 'block', 'full')
LLM_TRAIN = ('full', 'lora')
CONVNEXT_STEMS = ('audioset', 'conette')  # See `aac_jax.models.convnext.STEMS`.


@dataclasses.dataclass(frozen=True)
class CaptionerConfig:
  """Sizes and switches of the conformer encoder and transformer decoder.

  Attributes:
    vocab_size: number of token ids (special ids included).
    subsampling: time reduction of the convolutional front end (2, 4 or 8),
      made of log2(subsampling) stride-2 conv2d layers.
    subsampling_channels: channels of those conv2d layers (0 = encoder_dim).
    encoder_dim: width of the conformer.
    encoder_layers: conformer blocks.
    encoder_heads: self-attention heads of the conformer.
    encoder_ff_dim: hidden width of the conformer feed-forward modules.
    conv_kernel_size: depthwise kernel of the convolution module (frames).
    decoder_dim: width of the transformer decoder (= token embedding size).
    decoder_layers: decoder layers.
    decoder_heads: attention heads of the decoder.
    decoder_ff_dim: hidden width of the decoder feed-forward modules.
    dropout: dropout on residual branches and feed-forward hidden units.
    attention_dropout: dropout on attention weights.
    max_decode_len: decoder positions (longest decoder input).
    decoder_style: 'aac_jax' (pre-norm layers, tied output embedding) or
      'conette' (CoNeTTE's post-norm decoder with GELU and an untied
      classifier; see `aac_jax.models.conette_decoder`). CoNeTTE's frame
      projection is `encoder_projection` with `encoder_dim = decoder_dim`.
    task_token_id: the token the decoder reads at position 0 whatever it is
      given there ('aac_jax' and 'conette' styles: CoNeTTE's dataset-conditioning
      token, e.g. the id of `<bos_clotho>`, or a mixture's task token); -1
      keeps the given token (BOS).
    compute_dtype: 'float32' or 'bfloat16'; parameters always stay float32.
    keyword_head: adds the auxiliary clip-level keyword head (`KeywordHead`,
      trained with `optim.keyword_loss_weight`; unused at inference).
    encoder: 'conformer' (from scratch), or a pretrained AudioSet tagger,
      'convnext' or 'cnn14' (`aac_jax.models.pretrained`), or 'htsat'; with a tagger,
      `encoder_layers` conformer blocks (0 = none) run on its frames.
    encoder_init: converted checkpoint folder loaded into the tagger when a
      run starts from scratch ('' = random tagger).
    encoder_freeze: 'all', 'none', or 'N' (the first N stages: ConvNeXt has
      4, CNN14 6 conv blocks); frozen parameters never change.
    encoder_projection: with a tagger, dropout, Dense(encoder_dim) + ReLU,
      dropout on its frames (the DCASE 2024 baseline's projection).
    projection_dropout: dropout rate of that projection.
    convnext_stem: 'audioset' (the AudioSet tagger's stem) or 'conette'
      (CoNeTTE's encoder: a finer stem, 4x more frames).
    encoder_drop_path: ConvNeXt stochastic depth (training, unfrozen stages).
    htsat: `aac_jax.metrics.clap.htsat.HtsatConfig` of encoder 'htsat' (CLAP's
      audio tower, `aac_jax.models.htsat_encoder`; `config.model.htsat`).
    mixup_alpha: mixup of encoder frames and decoder input embeddings in
      training (Beta(alpha, alpha), lambda >= 0.5; 0 = off).
    remat: 'none', 'block' (each encoder / decoder block recomputed in the
      backward pass) or 'full' (the whole forward pass; `aac_jax.train.steps`).
    llm: 'llm' only: the language model's `aac_jax.models.llm.LlmConfig`
      (built from `model.llm` by `make_captioner_config`).
    llm_prompt_ids: the prompt's token ids, between audio and caption.
    llm_frame_stack: encoder frames concatenated per audio embedding.
    llm_projector: 'linear' or 'mlp' (`aac_jax.models.llm_bridge.Projector`).
    llm_projector_dim: hidden width of the 'mlp' projector.
    llm_train: 'full' (every language-model weight trains) or 'lora' (its
      base weights frozen; adapters, projector and encoder train).
    llm_init: converted language-model folder loaded when a run starts
      from scratch ('' = random weights).
    deterministic: disables dropout (evaluation, decoding).
    decode: the decoder works one step at a time with a KV cache held in the
      Linen `cache` collection.
  """

  vocab_size: int
  subsampling: int = 4
  subsampling_channels: int = 0
  encoder_dim: int = 256
  encoder_layers: int = 6
  encoder_heads: int = 4
  encoder_ff_dim: int = 1024
  conv_kernel_size: int = 15
  decoder_dim: int = 256
  decoder_layers: int = 3
  decoder_heads: int = 4
  decoder_ff_dim: int = 1024
  dropout: float = 0.1
  attention_dropout: float = 0.1
  max_decode_len: int = 32
  decoder_style: str = 'aac_jax'
  task_token_id: int = -1
  compute_dtype: str = 'float32'
  keyword_head: bool = False
  encoder: str = 'conformer'
  encoder_init: str = ''
  encoder_freeze: str = 'none'
  encoder_projection: bool = False
  projection_dropout: float = 0.5
  convnext_stem: str = 'audioset'
  encoder_drop_path: float = 0.0
  mixup_alpha: float = 0.0
  remat: str = 'none'
  htsat: Any = None
  llm: Any = None
  llm_prompt_ids: tuple[int, ...] = ()
  llm_frame_stack: int = 1
  llm_projector: str = 'mlp'
  llm_projector_dim: int = 2048
  llm_train: str = 'full'
  llm_init: str = ''
  deterministic: bool = False
  decode: bool = False

  def __post_init__(self):
    if self.remat not in REMAT_MODES:
      raise ValueError(f'remat must be one of {REMAT_MODES}, got {self.remat!r}')
    if self.subsampling not in _SUBSAMPLING_FACTORS:
      raise ValueError(f'subsampling must be one of {_SUBSAMPLING_FACTORS}, got {self.subsampling}')
    if self.convnext_stem not in CONVNEXT_STEMS:
      raise ValueError(f'convnext_stem must be one of {CONVNEXT_STEMS}, got {self.convnext_stem!r}')
    if self.decoder_style not in DECODER_STYLES:
      raise ValueError(f'decoder_style must be one of {DECODER_STYLES}, got {self.decoder_style!r}')
    if self.task_token_id >= 0 and self.decoder_style not in ('aac_jax', 'conette'):
      raise ValueError("task_token_id needs decoder_style 'aac_jax' or 'conette'")
    if self.task_token_id >= self.vocab_size:
      raise ValueError(f'task_token_id {self.task_token_id} >= vocab_size {self.vocab_size}')
    if (self.decoder_style == 'llm') != (self.llm is not None):
      raise ValueError("decoder_style='llm' and an llm config go together")
    if self.llm_train not in LLM_TRAIN:
      raise ValueError(f'model.llm.train must be one of {LLM_TRAIN}, got {self.llm_train!r}')
    if self.llm is not None and self.llm.vocab_size != self.vocab_size:
      raise ValueError(
        f'the language model has {self.llm.vocab_size} token ids, the run {self.vocab_size}'
      )
    if self.encoder not in ENCODERS:
      raise ValueError(f'model.encoder must be one of {ENCODERS}, got {self.encoder!r}')
    if self.pretrained and self.encoder_layers and not self.encoder_projection:
      raise ValueError(
        f'model.encoder_layers={self.encoder_layers} conformer blocks on {self.encoder} frames '
        'need model.encoder_projection=True (to encoder_dim)'
      )
    if (self.encoder == 'htsat') != (self.htsat is not None):
      raise ValueError("encoder='htsat' and an HtsatConfig go together")
    _ = self.frozen_stages  # Validates encoder_freeze.
    if self.mixup_alpha < 0:
      raise ValueError(f'model.mixup_alpha must be >= 0, got {self.mixup_alpha}')
    if self.compute_dtype not in _DTYPES:
      raise ValueError(f'compute_dtype must be one of {tuple(_DTYPES)}, got {self.compute_dtype}')
    for dim, heads, name in (
      (self.encoder_dim, self.encoder_heads, 'encoder'),
      (self.decoder_dim, self.decoder_heads, 'decoder'),
    ):
      if dim % heads or (dim // heads) % 2:
        raise ValueError(f'{name}_dim {dim} must split into {heads} heads of even size')

  @property
  def pretrained(self) -> bool:
    """The encoder is a pretrained tagger (not the conformer from scratch)."""
    return self.encoder != 'conformer'

  @property
  def frozen_stages(self) -> int:
    """Leading tagger stages kept frozen (all of them for 'all', 0 for 'none')."""
    if not self.pretrained or self.encoder_freeze == 'none':
      return 0
    stages = len(self.htsat.depths) if self.htsat else PRETRAINED_STAGES[self.encoder]
    if self.encoder_freeze == 'all':
      return stages
    try:
      count = int(self.encoder_freeze)
    except ValueError:
      count = -1
    if not 0 <= count <= stages:
      raise ValueError(
        f"model.encoder_freeze must be 'all', 'none' or a number of stages 0..{stages} "
        f'for {self.encoder}, got {self.encoder_freeze!r}'
      )
    return count

  @property
  def dtype(self) -> Any:
    """The compute dtype as a jnp dtype."""
    return _DTYPES[self.compute_dtype]

  @property
  def conv_channels(self) -> int:
    """Channels of the subsampling conv2d layers."""
    return self.subsampling_channels or self.encoder_dim

  def replace(self, **changes) -> 'CaptionerConfig':
    """Returns a copy with `changes` applied (e.g. `decode=True`)."""
    return dataclasses.replace(self, **changes)


def make_captioner_config(
  model_cfg: ml_collections.ConfigDict, vocab_size: int, **changes
) -> CaptionerConfig:
  """Builds the model config from `config.model`.

  Args:
    model_cfg: the `config.model` ConfigDict (see configs/base.py). An
      optional `subsampling_channels` field is honoured where present.
    vocab_size: size of the tokenizer's vocabulary.
    **changes: fields to override (e.g. `deterministic=True`).

  Returns:
    A `CaptionerConfig` in training mode unless `changes` say otherwise.
  """
  fields = {f.name for f in dataclasses.fields(CaptionerConfig) if f.name not in ('vocab_size',)}
  values = {
    name: model_cfg[name] for name in fields if name in model_cfg and name not in ('llm', 'htsat')
  }
  if model_cfg.encoder == 'htsat':
    values['htsat'] = htsat_config(model_cfg.htsat)
  if 'decoder_style' in model_cfg and model_cfg.decoder_style == 'llm':
    from aac_jax.models import llm_bridge  # Only llm runs read a converted folder's settings.

    values.update(llm_bridge.captioner_fields(model_cfg.llm, vocab_size, model_cfg.compute_dtype))
  values.update(changes)
  return CaptionerConfig(vocab_size=vocab_size, **values)


def htsat_config(htsat_cfg: ml_collections.ConfigDict):
  """`HtsatConfig` of `config.model.htsat` (sequences as tuples)."""
  from aac_jax.metrics.clap.htsat import HtsatConfig  # Only htsat runs need it.

  values = {k: tuple(v) if isinstance(v, list | tuple) else v for k, v in htsat_cfg.items()}
  return HtsatConfig(**values)
