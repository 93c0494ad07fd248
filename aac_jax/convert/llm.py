"""Llama / Qwen2 Hugging Face folder -> language-model folder (no torch).

    python tools/convert_checkpoint.py llm --input HF_FOLDER --output DIR

Reads `config.json`, the safetensors weights (`model.safetensors`, or the
shards listed in `model.safetensors.index.json`) and `tokenizer.json`;
writes DIR with `params.safetensors` (the `aac_jax.models.llm.LanguageModel`
tree, float32), `settings.json` (`{'llm': LlmConfig fields, 'architecture',
'source', 'token_ids'}`: `token_ids` holds config.json's BOS, EOS and pad ids) and a copy of `tokenizer.json`. Read it back with `load_llm`.
A folder of another architecture, a missing shard or a tensor of the wrong
shape is refused with one `ConversionError` naming it.
"""

import argparse
import dataclasses
import json
import os
import shutil
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import load_file

from aac_jax.convert.mapping import ConversionError, Entry, convert_state_dict
from aac_jax.data.llm_tokenizer import TOKENIZER_FILE
from aac_jax.models import pretrained_store
from aac_jax.models.llm import ROPE_TYPES, LanguageModel, LlmConfig

NAME = 'llm'
ARCHITECTURES = ('LlamaForCausalLM', 'Qwen2ForCausalLM')
_INDEX_FILE = 'model.safetensors.index.json'
# The special ids of `config.json` a run's tokenizer needs (`aac_jax.data.tokenizer.special_partners`).
_TOKEN_IDS = ('bos_token_id', 'eos_token_id', 'pad_token_id')


def _rope_scaling(hf: dict[str, Any]) -> tuple[float, tuple]:
  """`(theta, rope_scaling pairs)` from either config layout (transformers 4 or 5)."""
  params = dict(hf.get('rope_parameters') or hf.get('rope_scaling') or {})
  theta = params.pop('rope_theta', hf.get('rope_theta', 10000.0))
  kind = params.pop('rope_type', params.pop('type', 'default'))
  if kind not in ROPE_TYPES:
    raise ConversionError(f'rope type {kind!r} is not supported (supported: {ROPE_TYPES})')
  return float(theta), (('rope_type', kind),) + tuple(sorted(params.items()))


def config_from_hf(hf: dict[str, Any]) -> LlmConfig:
  """`LlmConfig` of a Hugging Face `config.json` (Llama or Qwen2 only)."""
  arch = (hf.get('architectures') or [None])[0]
  if arch not in ARCHITECTURES:
    raise ConversionError(
      f'architecture {arch!r} is not supported; the llm converter reads {ARCHITECTURES}'
    )
  if hf.get('hidden_act', 'silu') != 'silu' or hf.get('mlp_bias') or hf.get('use_sliding_window'):
    raise ConversionError(
      f'{arch} with hidden_act/mlp_bias/use_sliding_window set is not supported'
    )
  heads = hf['num_attention_heads']
  theta, scaling = _rope_scaling(hf)
  return LlmConfig(
    vocab_size=hf['vocab_size'],
    hidden_size=hf['hidden_size'],
    num_layers=hf['num_hidden_layers'],
    num_heads=heads,
    num_kv_heads=hf.get('num_key_value_heads') or heads,
    head_dim=hf.get('head_dim') or hf['hidden_size'] // heads,
    intermediate_size=hf['intermediate_size'],
    rms_norm_eps=hf['rms_norm_eps'],
    rope_theta=theta,
    rope_scaling=scaling,
    attention_bias=arch == 'Qwen2ForCausalLM' or bool(hf.get('attention_bias')),
    tie_embeddings=bool(hf.get('tie_word_embeddings', False)),
    initializer_range=hf.get('initializer_range', 0.02),
  )


def _entries(cfg: LlmConfig) -> list[Entry]:
  entries = [
    Entry('model.embed_tokens.weight', ('embed_tokens', 'embedding'), 'param'),
    Entry('model.norm', ('norm',), 'rmsnorm'),
  ]
  if not cfg.tie_embeddings:
    entries.append(Entry('lm_head', ('lm_head',), 'dense_nobias'))
  qkv = 'dense' if cfg.attention_bias else 'dense_nobias'
  for i in range(cfg.num_layers):
    hf, ours = f'model.layers.{i}', f'layers_{i}'
    entries += [
      Entry(f'{hf}.input_layernorm', (ours, 'input_layernorm'), 'rmsnorm'),
      Entry(f'{hf}.post_attention_layernorm', (ours, 'post_attention_layernorm'), 'rmsnorm'),
    ]
    for name in ('q', 'k', 'v', 'o'):
      kind = qkv if name != 'o' else 'dense_nobias'
      entries.append(
        Entry(f'{hf}.self_attn.{name}_proj', (ours, 'self_attn', f'{name}_proj'), kind)
      )
    for name in ('gate', 'up', 'down'):
      entries.append(Entry(f'{hf}.mlp.{name}_proj', (ours, 'mlp', f'{name}_proj'), 'dense_nobias'))
  return entries


def param_shapes(cfg: LlmConfig) -> Any:
  """The `LanguageModel` params tree of shape structs (nothing computed)."""
  tokens = jnp.zeros((1, 2), jnp.int32)
  shapes = jax.eval_shape(LanguageModel(cfg).init, jax.random.key(0), tokens)['params']
  return nn.unbox(shapes)


def read_weights(folder: str) -> dict[str, np.ndarray]:
  """All tensors of a folder's safetensors files (sharded through the index, or one file)."""
  index = os.path.join(folder, _INDEX_FILE)
  if os.path.isfile(index):
    with open(index) as f:
      files = sorted(set(json.load(f)['weight_map'].values()))
  else:
    files = ['model.safetensors']
  weights = {}
  for name in files:
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
      raise ConversionError(
        f'{path} is missing (listed in {_INDEX_FILE} or expected as the weights)'
      )
    weights.update(load_file(path))
  return weights


def convert_folder(input_dir: str, output_dir: str) -> LlmConfig:
  """Converts a Hugging Face Llama / Qwen2 folder; returns its config."""
  config_path = os.path.join(input_dir, 'config.json')
  if not os.path.isfile(config_path):
    raise ConversionError(f'{config_path} is missing: not a Hugging Face model folder')
  with open(config_path) as f:
    hf = json.load(f)
  cfg = config_from_hf(hf)
  tokenizer = os.path.join(input_dir, TOKENIZER_FILE)
  if not os.path.isfile(tokenizer):
    raise ConversionError(f'{tokenizer} is missing (the llm path tokenises with it)')
  weights = read_weights(input_dir)
  if cfg.tie_embeddings:
    weights.pop('lm_head.weight', None)  # Some tied checkpoints store the copy too.
  params = convert_state_dict(weights, _entries(cfg), param_shapes(cfg), hf['architectures'][0])
  settings = {
    'llm': json.loads(json.dumps(dataclasses.asdict(cfg))),
    'architecture': hf['architectures'][0],
    'source': os.path.basename(os.path.normpath(input_dir)),
    'token_ids': {name: hf.get(name) for name in _TOKEN_IDS},
  }
  pretrained_store.save_converted(output_dir, params, settings)
  shutil.copyfile(tokenizer, os.path.join(output_dir, TOKENIZER_FILE))
  return cfg


def load_llm(folder: str) -> tuple[dict[str, Any], LlmConfig]:
  """`(params, config)` of a folder written by `convert_folder` (or `tools/make_random_llm.py`)."""
  params, settings = pretrained_store.load_converted(folder)
  if 'llm' not in settings:
    raise ValueError(
      f'{folder} is not a converted language-model folder; make one with '
      'python tools/convert_checkpoint.py llm --input HF_FOLDER --output DIR'
    )
  fields = dict(settings['llm'])
  fields['rope_scaling'] = tuple(tuple(p) for p in fields['rope_scaling'])
  fields['lora_targets'] = tuple(fields['lora_targets'])
  return params, LlmConfig(**fields)


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument('--input', required=True, help='Hugging Face folder (config.json, ...)')
  parser.add_argument('--output', required=True, help='folder to write')


def run(args: argparse.Namespace) -> None:
  convert_folder(args.input, args.output)
