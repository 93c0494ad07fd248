"""Writes a small random Llama- or Qwen2-shaped Hugging Face folder (no torch, no download).

  python tools/make_random_llm.py --output DIR [--arch qwen2|llama] [--vocab RUN/vocab.txt]
  python tools/convert_checkpoint.py llm --input DIR --output CONVERTED
  python -m aac_jax.main --config configs/clotho_llm.py:runlocal --workdir W \\
      --config.model.llm.init=CONVERTED

DIR holds `config.json` (`LlamaForCausalLM` or `Qwen2ForCausalLM`, the
layout transformers writes), `model.safetensors` (normal(0, 0.02) weights
under the checkpoint names, Qwen2's q/k/v biases included) and
`tokenizer.json`: a word-level tokenizer whose ids are those of `--vocab`
(an aac_jax `vocab.txt`, so the converted model fits that run's captions),
or `<pad> <bos> <eos> <unk> w4 w5 ...` without it. transformers loads the
folder as it loads a downloaded one (tests/test_llm.py checks).

Exit status: 0 written; 2 bad arguments.
"""

import argparse
import json
import os
import sys

import numpy as np

_SPECIALS = ('<pad>', '<bos>', '<eos>', '<unk>')  # aac_jax.data.tokenizer's ids 0-3.


def hf_config(args: argparse.Namespace, vocab_size: int) -> dict:
  """The `config.json` of the folder."""
  qwen = args.arch == 'qwen2'
  config = {
    'architectures': ['Qwen2ForCausalLM' if qwen else 'LlamaForCausalLM'],
    'model_type': args.arch,
    'vocab_size': vocab_size,
    'hidden_size': args.hidden_size,
    'intermediate_size': args.intermediate_size,
    'num_hidden_layers': args.num_layers,
    'num_attention_heads': args.num_heads,
    'num_key_value_heads': args.num_kv_heads,
    'head_dim': args.hidden_size // args.num_heads,
    'hidden_act': 'silu',
    'rms_norm_eps': 1e-6,
    'rope_theta': args.rope_theta,
    'rope_scaling': None,
    'max_position_embeddings': 4096,
    'tie_word_embeddings': args.tied,
    'initializer_range': 0.02,
    'bos_token_id': 1,
    'eos_token_id': 2,
    'pad_token_id': 0,
    'torch_dtype': 'float32',
  }
  if not qwen:
    config.update(attention_bias=False, mlp_bias=False)
  else:
    config.update(use_sliding_window=False)
  return config


def random_weights(config: dict, seed: int) -> dict[str, np.ndarray]:
  """normal(0, initializer_range) tensors under the checkpoint's names (`[out, in]` weights)."""
  rng = np.random.default_rng(seed)
  std = config['initializer_range']
  hidden, vocab = config['hidden_size'], config['vocab_size']
  head_dim, inner = config['head_dim'], config['intermediate_size']
  q_out = config['num_attention_heads'] * head_dim
  kv_out = config['num_key_value_heads'] * head_dim
  bias = config['model_type'] == 'qwen2'

  def normal(*shape):
    return (std * rng.standard_normal(shape)).astype(np.float32)

  weights = {'model.embed_tokens.weight': normal(vocab, hidden)}
  weights['model.norm.weight'] = np.ones(hidden, np.float32)
  if not config['tie_word_embeddings']:
    weights['lm_head.weight'] = normal(vocab, hidden)
  for i in range(config['num_hidden_layers']):
    p = f'model.layers.{i}'
    for name, out in (('q', q_out), ('k', kv_out), ('v', kv_out)):
      weights[f'{p}.self_attn.{name}_proj.weight'] = normal(out, hidden)
      if bias:
        weights[f'{p}.self_attn.{name}_proj.bias'] = normal(out)
    weights[f'{p}.self_attn.o_proj.weight'] = normal(hidden, q_out)
    weights[f'{p}.mlp.gate_proj.weight'] = normal(inner, hidden)
    weights[f'{p}.mlp.up_proj.weight'] = normal(inner, hidden)
    weights[f'{p}.mlp.down_proj.weight'] = normal(hidden, inner)
    weights[f'{p}.input_layernorm.weight'] = np.ones(hidden, np.float32)
    weights[f'{p}.post_attention_layernorm.weight'] = np.ones(hidden, np.float32)
  return weights


def word_tokenizer(tokens: list[str]):
  """A `tokenizers` word-level tokenizer: lower case, split on whitespace, ids = list order."""
  from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

  tokenizer = Tokenizer(models.WordLevel({t: i for i, t in enumerate(tokens)}, unk_token='<unk>'))
  # The run's caption normalisation (aac_jax.data.text): lower case, apostrophes dropped,
  # other punctuation a space; the run reads captions through this file as written.
  tokenizer.normalizer = normalizers.Sequence(
    [
      normalizers.Lowercase(),
      normalizers.Replace(Regex("['’‘`´]"), ''),
      normalizers.Replace(Regex(r'[^\w\s]|_'), ' '),
    ]
  )
  tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  tokenizer.decoder = decoders.WordPiece(prefix='##')  # Joins words with spaces.
  tokenizer.add_special_tokens(list(_SPECIALS))
  return tokenizer


def read_tokens(args: argparse.Namespace) -> list[str]:
  if not args.vocab:
    return list(_SPECIALS) + [f'w{i}' for i in range(len(_SPECIALS), args.vocab_size)]
  with open(args.vocab, encoding='utf-8') as f:
    tokens = f.read().splitlines()
  if tuple(tokens[:4]) != _SPECIALS:
    raise SystemExit(f'make_random_llm: error: {args.vocab} is not an aac_jax vocab.txt')
  return tokens


def write_folder(args: argparse.Namespace) -> dict:
  """Writes the folder; returns its config."""
  from safetensors.numpy import save_file

  tokens = read_tokens(args)
  config = hf_config(args, len(tokens))
  os.makedirs(args.output, exist_ok=True)
  with open(os.path.join(args.output, 'config.json'), 'w') as f:
    json.dump(config, f, indent=2)
  weights = random_weights(config, args.seed)
  save_file(weights, os.path.join(args.output, 'model.safetensors'), metadata={'format': 'pt'})
  word_tokenizer(tokens).save(os.path.join(args.output, 'tokenizer.json'))
  return config


def make_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--output', required=True, help='folder to write')
  parser.add_argument('--arch', choices=('qwen2', 'llama'), default='qwen2')
  parser.add_argument('--vocab', default='', help='an aac_jax vocab.txt (the ids to keep)')
  parser.add_argument('--vocab_size', type=int, default=256, help='without --vocab')
  parser.add_argument('--hidden_size', type=int, default=64)
  parser.add_argument('--num_layers', type=int, default=2)
  parser.add_argument('--num_heads', type=int, default=4)
  parser.add_argument('--num_kv_heads', type=int, default=2)
  parser.add_argument('--intermediate_size', type=int, default=160)
  parser.add_argument('--rope_theta', type=float, default=1000000.0)
  parser.add_argument('--tied', action=argparse.BooleanOptionalAction, default=True)
  parser.add_argument('--seed', type=int, default=0)
  return parser


def main(argv: list[str] | None = None) -> int:
  args = make_parser().parse_args(argv)
  if args.hidden_size % args.num_heads or args.num_heads % args.num_kv_heads:
    make_parser().error('hidden_size must split into num_heads, num_heads into num_kv_heads')
  config = write_folder(args)
  print(f'wrote {args.output}: {config["architectures"][0]}, vocab {config["vocab_size"]}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
