"""A random CoNeTTE built from conette 0.3.2's own modules, saved as the published folder.

The published model (Hugging Face `Labbeti/conette`) is a folder holding
`config.json` (`CoNeTTEConfig.save_pretrained`, with the tokenizer's text
state) and the weights of `CoNeTTEModel.state_dict()` (transformers 4.30's
`save_pretrained`: `pytorch_model.bin`, a `torch.save` of that dict; newer
versions write `model.safetensors`). That state dict holds
`preprocessor.encoder.*` (ConvNeXt-Tiny), `model.decoder.*`
(`AACTransformerDecoder`), `model.projection.2.*` (the linear layer of
`build_proj_lin`), the buffers `model.task_id_to_token_id` and
`model.forbid_rep_mask`, and `_extra_state_`: a uint8 tensor holding the
pickled non-tensor states (the tokenizer's).

`CoNeTTEPLM` itself cannot be built here (it needs pytorch-lightning, spaCy
and NLTK data), so this module builds the parts it would hold: the decoder
with conette's class, the projection with the layers `build_proj_lin`
stacks (it lives in a module importing pytorch-lightning), and the
tokenizer state and forbid mask with the layouts of `AACTokenizer` and
`get_forbid_rep_mask('content_words')`.
"""

import dataclasses
import pathlib
import pickle

import numpy as np
import torch_reference

TASKS = (
  'clotho',
  'audiocaps',
  'macs',
  'wavcaps_audioset_sl',
  'wavcaps_bbc_sound_effects',
  'wavcaps_freesound',
  'wavcaps_soundbible',
)
SPECIALS = ('<pad>', '<bos>', '<eos>', '<unk>')
# A few English stop words (CoNeTTE's forbid mask lets NLTK's stop words repeat).
STOP_WORDS = ('a', 'the', 'is', 'and', 'of', 'in', 'while', 'with')


@dataclasses.dataclass
class Reference:
  """A random CoNeTTE decoder side (torch modules in eval mode).

  Attributes:
    decoder: conette's `AACTransformerDecoder`.
    projection: the `build_proj_lin` stack (frame_dim -> d_model).
    tokens: the vocabulary, index = id (specials, words, task tokens).
    forbid_mask: bool `[vocab]` (True: may not repeat).
    hparams: the `CoNeTTEConfig` fields that differ from its defaults.
  """

  decoder: object
  projection: object
  tokens: list
  forbid_mask: np.ndarray
  hparams: dict

  @property
  def task_token_ids(self) -> list[int]:
    return [self.tokens.index(f'<bos_{task}>') for task in TASKS]


def _randomize(module, torch, scale: float) -> None:
  """Every parameter drawn anew (upstream inits zero the biases; LayerNorms are 1 +- noise)."""
  with torch.no_grad():
    for name, param in module.named_parameters():
      noise = torch.randn_like(param) * scale
      is_scale = 'norm' in name and name.endswith('weight')
      param.copy_(1.0 + noise if is_scale else noise)


def build_reference(
  seed: int = 0,
  d_model: int = 32,
  nhead: int = 4,
  num_layers: int = 2,
  dim_feedforward: int = 64,
  frame_dim: int = 24,
  num_words: int = 40,
  eos_bias: float = 0.0,
) -> Reference:
  """A random CoNeTTE decoder, projection and vocabulary (small sizes).

  `eos_bias` is added to the classifier's EOS bias so that random captions
  end at various lengths instead of always running to the limit.
  """
  torch = torch_reference.torch_module()
  aac_tfmer = torch_reference.import_reference('conette.nn.decoders.aac_tfmer')
  tensor_modules = torch_reference.import_reference('torchoutil.nn.modules.tensor')
  torch.manual_seed(seed)
  words = list(STOP_WORDS) + [f'word{i}' for i in range(num_words - len(STOP_WORDS))]
  tokens = list(SPECIALS) + words + [f'<bos_{task}>' for task in TASKS]
  decoder = aac_tfmer.AACTransformerDecoder(
    vocab_size=len(tokens),
    bos_id=1,
    eos_id=2,
    pad_id=0,
    d_model=d_model,
    dim_feedforward=dim_feedforward,
    nhead=nhead,
    num_decoder_layers=num_layers,
  )
  nn = torch.nn
  projection = nn.Sequential(
    nn.Dropout(p=0.5),
    nn.Identity(),
    nn.Linear(frame_dim, d_model),
    nn.ReLU(),
    tensor_modules.Transpose(1, 2),
    nn.Dropout(p=0.5),
  )
  _randomize(decoder, torch, 0.3)
  _randomize(projection, torch, 0.3)
  with torch.no_grad():
    decoder.classifier.bias[2] += eos_bias
  forbid = np.array([token not in STOP_WORDS for token in tokens])
  hparams = dict(
    d_model=d_model, nhead=nhead, num_decoder_layers=num_layers, dim_feedforward=dim_feedforward
  )
  return Reference(decoder.eval(), projection.eval(), tokens, forbid, hparams)


def tokenizer_state(tokens: list[str]) -> dict:
  """`AACTokenizer.get_txt_state()` of a fitted word tokenizer with task tokens added."""
  words = [t for t in tokens if not t.startswith('<')]
  return {
    '_target_': 'conette.tokenization.aac_tokenizer.AACTokenizer',
    '_version_': '2.2.0',
    '_type_': 'txt',
    'tokenizer': {
      'hparams': {
        'level': 'word',
        'lowercase': True,
        'punctuation_mode': 'remove',
        'normalize': True,
      },
      'normalize': True,
      'added_special_tokens': [f'<bos_{task}>' for task in TASKS],
      'max_sentence_size': 20,
      'min_sentence_size': 1,
      'n_sentences_fit': 100,
      'itos': dict(enumerate(tokens)),
      'stoi': {token: i for i, token in enumerate(tokens)},
      'vocab': {token: (5 if token in words else 0) for token in tokens},
    },
  }


def published_state_dict(ref: Reference, encoder_state: dict | None = None) -> dict:
  """`CoNeTTEModel.state_dict()` of the reference (encoder part optional)."""
  torch = torch_reference.torch_module()
  state = {f'preprocessor.encoder.{k}': v for k, v in (encoder_state or {}).items()}
  state.update({f'model.decoder.{k}': v for k, v in ref.decoder.state_dict().items()})
  state.update({f'model.projection.{k}': v for k, v in ref.projection.state_dict().items()})
  state['model.task_id_to_token_id'] = torch.tensor(ref.task_token_ids, dtype=torch.long)
  state['model.forbid_rep_mask'] = torch.from_numpy(ref.forbid_mask.copy())
  extra = {'model.tokenizers.0._extra_state': tokenizer_state(ref.tokens)}
  state['_extra_state_'] = torch.frombuffer(bytearray(pickle.dumps(extra)), dtype=torch.uint8)
  return {k: v.contiguous() for k, v in state.items()}


def write_published_folder(
  ref: Reference,
  folder: pathlib.Path,
  *,
  encoder_state: dict | None = None,
  weights: str = 'pytorch_model.bin',
  config_tokenizer: bool = True,
  **config_fields,
) -> pathlib.Path:
  """Writes `config.json` and the weights file as the published model folder has them.

  Args:
    ref: the reference modules.
    folder: where to write (created).
    encoder_state: `preprocessor.encoder` state dict (None: decoder side only).
    weights: 'pytorch_model.bin' (torch.save) or 'model.safetensors'.
    config_tokenizer: put the tokenizer state in `config.json` too (else
      only in the weights' `_extra_state_`).
    **config_fields: `CoNeTTEConfig` fields to change (e.g. `max_pred_size`).

  Returns:
    `folder`.
  """
  torch = torch_reference.torch_module()
  config_lib = torch_reference.import_reference('conette.huggingface.config')
  folder.mkdir(parents=True, exist_ok=True)
  fields = {**ref.hparams, **config_fields}
  state = tokenizer_state(ref.tokens) if config_tokenizer else None
  config_lib.CoNeTTEConfig(tokenizer_state=state, **fields).save_pretrained(str(folder))
  weights_dict = published_state_dict(ref, encoder_state)
  if weights == 'model.safetensors':
    from safetensors.torch import save_file

    save_file(weights_dict, str(folder / weights), metadata={'format': 'pt'})
  else:
    torch.save(weights_dict, folder / weights)
  return folder


def _frame_embs(ref: Reference, frames, project: bool):
  """`[b, s, e]` numpy -> conette's `[b, d_model, s]` tensor (through the projection or not)."""
  torch = torch_reference.torch_module()
  x = torch.from_numpy(np.asarray(frames, np.float32))
  with torch.no_grad():
    return ref.projection(x) if project else x.transpose(1, 2)


def reference_logits(ref: Reference, frames, frame_pad_mask, tokens, project=False) -> np.ndarray:
  """Teacher-forced logits with conette's `teacher_forcing`.

  Args:
    ref: the reference.
    frames: float32 `[b, s, d_model]` frame embeddings (decoder inputs), or
      `[b, s, frame_dim]` encoder frames with `project=True`.
    frame_pad_mask: bool `[b, s]`, True = pad.
    tokens: int `[b, l]` decoder inputs (task token first, PAD after the end).
    project: run the projection first.

  Returns:
    float32 `[b, l, vocab]`.
  """
  torch = torch_reference.torch_module()
  forcing = torch_reference.import_reference('conette.nn.decoding.forcing')
  embs = _frame_embs(ref, frames, project)  # [b, d, s]
  with torch.no_grad():
    logits = forcing.teacher_forcing(
      ref.decoder,
      pad_id=0,
      bos_id=1,
      eos_id=2,
      vocab_size=len(ref.tokens),
      frame_embs=embs,
      frame_embs_pad_mask=torch.from_numpy(np.asarray(frame_pad_mask, bool)),
      caps_in=torch.from_numpy(np.asarray(tokens, np.int64)),
    )
  return logits.permute(0, 2, 1).numpy()


def reference_generate(
  ref: Reference,
  frames,
  frame_pad_mask,
  task_token: int,
  *,
  forbid: bool = True,
  project: bool = False,
  **kwargs,
) -> np.ndarray:
  """Best beam of conette's `generate` (beam 3, min 3, max 20 tokens by default).

  `frames` as for `reference_logits`.

  Returns:
    int64 tokens `[b, n]` (words, EOS, PAD; n = the longest output + 1 at
    most) and float32 scores `[b]` (mean log-probability).
  """
  torch = torch_reference.torch_module()
  beam = torch_reference.import_reference('conette.nn.decoding.beam')
  settings = dict(beam_size=3, min_pred_size=3, max_pred_size=20) | kwargs
  batch = len(frames)
  embs = _frame_embs(ref, frames, project)
  with torch.no_grad():
    best, score, *_ = beam.generate(
      ref.decoder,
      pad_id=0,
      bos_id=torch.full((batch,), task_token, dtype=torch.long),
      eos_id=2,
      vocab_size=len(ref.tokens),
      frame_embs=embs,
      frame_embs_pad_mask=torch.from_numpy(np.asarray(frame_pad_mask, bool)),
      forbid_rep_mask=torch.from_numpy(ref.forbid_mask.copy()) if forbid else None,
      **settings,
    )
  return best.numpy(), score.numpy()
