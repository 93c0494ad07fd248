"""Llama / Qwen2 decoders: converted from transformers' own save_pretrained folders, then compared.

Each case builds a tiny random `LlamaForCausalLM` or `Qwen2ForCausalLM`
(grouped-query attention, tied or untied embeddings, Qwen2's q/k/v biases
filled with random values, llama3 rope scaling), saves it with
`save_pretrained` (one safetensors file, or two shards), converts the folder
with `tools/convert_checkpoint.py llm` and compares logits, cached decoding
and greedy continuations with transformers.
"""

import csv
import json
import os
import subprocess
import sys

import flax.linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from corpora import corpora_dir

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')
tokenizers = pytest.importorskip('tokenizers')

from aac_jax.convert import llm as convert_llm  # noqa: E402
from aac_jax.convert.mapping import ConversionError  # noqa: E402
from aac_jax.data.llm_tokenizer import LlmTokenizer  # noqa: E402
from aac_jax.models import llm, partitioning  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = 96
_SIZES = dict(
  vocab_size=VOCAB,
  hidden_size=32,
  intermediate_size=48,
  num_hidden_layers=2,
  num_attention_heads=4,
  num_key_value_heads=2,
)
_LLAMA3 = {
  'rope_type': 'llama3',
  'rope_theta': 5000.0,
  'factor': 8.0,
  'low_freq_factor': 1.0,
  'high_freq_factor': 4.0,
  'original_max_position_embeddings': 16,
}
CASES = {
  'llama_untied_llama3': ('llama', False, _LLAMA3, None),
  'llama_tied': ('llama', True, None, None),
  'qwen2_tied_bias': ('qwen2', True, None, None),
  'qwen2_untied_sharded': ('qwen2', False, None, '20KB'),
}


def _hf_model(kind: str, tied: bool, rope: dict | None):
  torch.manual_seed(0)
  config_cls = transformers.LlamaConfig if kind == 'llama' else transformers.Qwen2Config
  extra = {'rope_parameters': rope} if rope else {}
  config = config_cls(**_SIZES, tie_word_embeddings=tied, **extra)
  model = (transformers.LlamaForCausalLM if kind == 'llama' else transformers.Qwen2ForCausalLM)(
    config
  )
  with torch.no_grad():  # Random norms and biases, so that a dropped one shows.
    for name, p in model.named_parameters():
      if name.endswith('bias') or 'norm' in name:
        p.add_(0.1 * torch.randn_like(p))
  return model.eval()


@pytest.fixture(scope='module', params=sorted(CASES))
def converted(request, tmp_path_factory):
  """`(hf_model, params, cfg, hf_dir)` per case."""
  kind, tied, rope, shard = CASES[request.param]
  model = _hf_model(kind, tied, rope)
  hf_dir = tmp_path_factory.mktemp(f'hf_{request.param}')
  model.save_pretrained(hf_dir, **({'max_shard_size': shard} if shard else {}))
  _write_tokenizer(hf_dir, ['a dog barks while birds sing'] * 4)
  if shard:
    assert os.path.isfile(hf_dir / 'model.safetensors.index.json')
    assert (
      len({*json.load(open(hf_dir / 'model.safetensors.index.json'))['weight_map'].values()}) >= 2
    )
  out = tmp_path_factory.mktemp(f'ours_{request.param}')
  convert_llm.convert_folder(str(hf_dir), str(out))
  params, cfg = convert_llm.load_llm(str(out))
  return model, params, cfg, hf_dir


def _tokens(seed: int, shape=(2, 11)) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, VOCAB, size=shape).astype(np.int64)


def _hf_logits(model, tokens):
  with torch.no_grad():
    return model(torch.from_numpy(tokens)).logits.numpy()


def test_logits_match_transformers(converted):
  model, params, cfg, _ = converted
  tokens = _tokens(1)
  ours = llm.LanguageModel(cfg).apply({'params': params}, jnp.asarray(tokens, jnp.int32))
  np.testing.assert_allclose(np.asarray(ours), _hf_logits(model, tokens), atol=1e-4, rtol=1e-4)


def _decoder(cfg, params):
  """`(prefill_fn, step_fn)` of a cached `LanguageModel`, jitted once per case."""
  model = llm.LanguageModel(cfg.replace(decode=True))

  def run(cache, tokens, positions, prefill):
    def fn(m):
      valid = jnp.ones(tokens.shape, bool)
      return m.logits(m.hidden(m.embed(tokens), positions, valid, prefill))

    variables = {'params': params} | ({'cache': cache} if cache is not None else {})
    logits, mutated = model.apply(variables, method=fn, mutable=['cache'])
    return logits, mutated['cache']

  prefill_fn = jax.jit(lambda t, p, n: run(None, t, p, n), static_argnums=2)
  return prefill_fn, jax.jit(lambda c, t, p: run(c, t, p, 0))


def test_cached_decoding_equals_full_forward(converted):
  _, params, cfg, _ = converted
  tokens = jnp.asarray(_tokens(2, (2, 9)), jnp.int32)
  full = llm.LanguageModel(cfg).apply({'params': params}, tokens)
  positions = jnp.broadcast_to(jnp.arange(9), tokens.shape)
  prefill_fn, step_fn = _decoder(cfg, params)
  logits, cache = prefill_fn(tokens, positions, 4)  # Positions 4.. are overwritten below.
  steps = [logits[:, :4]]
  for i in range(4, 9):
    logits, cache = step_fn(cache, tokens[:, i : i + 1], positions[:, i : i + 1])
    steps.append(logits)
  np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=2e-5)


def _greedy(cfg, params, prompt, steps):
  b, p = prompt.shape
  buffer = jnp.concatenate([prompt, jnp.zeros((b, steps), jnp.int32)], axis=1)
  positions = jnp.broadcast_to(jnp.arange(p + steps), buffer.shape)
  prefill_fn, step_fn = _decoder(cfg, params)
  logits, cache = prefill_fn(buffer, positions, p)
  logits = logits[:, p - 1]
  out = []
  for i in range(steps):
    token = jnp.argmax(logits, -1)[:, None].astype(jnp.int32)
    out.append(token)
    logits, cache = step_fn(cache, token, positions[:, p + i : p + i + 1])
    logits = logits[:, -1]
  return np.asarray(jnp.concatenate(out, axis=1))


def test_greedy_continuations_match_generate(converted):
  model, params, cfg, _ = converted
  prompt = _tokens(3, (2, 5))
  with torch.no_grad():
    hf = model.generate(
      torch.from_numpy(prompt),
      max_new_tokens=8,
      do_sample=False,
      eos_token_id=None,
      pad_token_id=0,
      attention_mask=torch.ones_like(torch.from_numpy(prompt)),
    ).numpy()[:, 5:]
  ours = _greedy(cfg, params, jnp.asarray(prompt, jnp.int32), 8)
  np.testing.assert_array_equal(ours, hf)


def test_rope_inv_freq_matches_transformers():
  from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

  config = transformers.LlamaConfig(**_SIZES, rope_parameters=dict(_LLAMA3))
  hf, _ = ROPE_INIT_FUNCTIONS['llama3'](config, 'cpu')
  cfg = convert_llm.config_from_hf(
    json.loads(config.to_json_string()) | {'architectures': ['LlamaForCausalLM']}
  )
  np.testing.assert_allclose(llm.rope_inv_freq(cfg), hf.numpy(), rtol=1e-6)
  assert cfg.rope_type == 'llama3'


def test_every_parameter_names_its_axes():
  cfg = llm.LlmConfig(
    vocab_size=VOCAB,
    tie_embeddings=False,
    attention_bias=True,
    lora_rank=2,
    lora_targets=llm.LORA_TARGETS,
  )
  boxed = jax.eval_shape(
    llm.LanguageModel(cfg).init, jax.random.key(0), jnp.zeros((1, 3), jnp.int32)
  )
  assert partitioning.missing_axes(boxed['params']) == []


def _write_tokenizer(folder, texts):
  """A small byte-level BPE trained on `texts`, saved as `folder/tokenizer.json` (no downloads)."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
    vocab_size=400,
    special_tokens=['<pad>', '<s>', '</s>'],
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
  )
  tok.train_from_iterator(texts, trainer)
  tok.post_processor = processors.TemplateProcessing(
    single='<s> $A', special_tokens=[('<s>', tok.token_to_id('<s>'))]
  )
  tok.save(str(folder / 'tokenizer.json'))


def _real_captions() -> list[str]:
  root = corpora_dir()
  with open(root / 'clotho' / 'clotho_captions_development.csv', encoding='utf-8') as f:
    clotho = [row[f'caption_{i}'] for row in csv.DictReader(f) for i in range(1, 6)]
  with open(root / 'audiocaps' / 'train.csv', encoding='utf-8') as f:
    audiocaps = [row['caption'] for row in csv.DictReader(f)]
  return clotho[:3000] + audiocaps[:3000]


def test_tokenizer_ids_equal_transformers(tmp_path):
  captions = _real_captions()
  _write_tokenizer(tmp_path, captions[::2])
  ours = LlmTokenizer.load(str(tmp_path))
  reference = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / 'tokenizer.json'))
  held_out = captions[1::2]
  for caption in held_out:
    assert ours.encode(caption) == reference.encode(caption, add_special_tokens=False), caption
    assert ours.encode(caption, True) == reference(caption)['input_ids'], caption
  assert ours.decode(ours.encode(held_out[0])) == held_out[0]


def _run_convert(input_dir, output_dir):
  return subprocess.run(
    [
      sys.executable,
      os.path.join(REPO, 'tools', 'convert_checkpoint.py'),
      'llm',
      '--input',
      str(input_dir),
      '--output',
      str(output_dir),
    ],
    capture_output=True,
    text=True,
    timeout=300,
  )


@pytest.fixture(scope='module')
def sharded_dir(tmp_path_factory):
  """A Qwen2 folder saved in two or more shards."""
  hf_dir = tmp_path_factory.mktemp('hf_sharded')
  _hf_model('qwen2', False, None).save_pretrained(hf_dir, max_shard_size='20KB')
  _write_tokenizer(hf_dir, ['a dog barks'])
  return hf_dir


def test_convert_command_refuses_other_architecture_and_missing_shard(sharded_dir, tmp_path):
  hf_dir = sharded_dir
  other = tmp_path / 'bert'
  other.mkdir()
  (other / 'config.json').write_text(json.dumps({'architectures': ['BertModel']}))
  result = _run_convert(other, tmp_path / 'out')
  assert result.returncode == 1
  assert "architecture 'BertModel' is not supported" in result.stderr.strip().splitlines()[-1]
  index = hf_dir / 'model.safetensors.index.json'
  broken = tmp_path / 'broken'
  broken.mkdir()
  shards = sorted({*json.load(open(index))['weight_map'].values()})
  for name in ['config.json', 'tokenizer.json', index.name, *shards[1:]]:
    (broken / name).write_bytes((hf_dir / name).read_bytes())
  result = _run_convert(broken, tmp_path / 'out2')
  assert result.returncode == 1
  assert f'{shards[0]} is missing' in result.stderr
  assert not (tmp_path / 'out2' / 'params.safetensors').exists()


def test_shape_mismatch_names_the_tensor(sharded_dir, tmp_path):
  hf_dir = sharded_dir
  config = json.load(open(hf_dir / 'config.json'))
  config['intermediate_size'] += 8
  for name in os.listdir(hf_dir):
    (tmp_path / name).write_bytes((hf_dir / name).read_bytes())
  (tmp_path / 'config.json').write_text(json.dumps(config))
  with pytest.raises(ConversionError, match=r"'model\.layers\.0\.mlp\.\w+_proj\.weight' has shape"):
    convert_llm.convert_folder(str(tmp_path), str(tmp_path / 'out'))


def test_lora_forward_equals_merged_forward():
  cfg = llm.LlmConfig(
    vocab_size=VOCAB,
    attention_bias=True,
    lora_rank=3,
    lora_alpha=8.0,
    lora_targets=llm.LORA_TARGETS,
  )
  model = llm.LanguageModel(cfg)
  tokens = jnp.asarray(_tokens(4, (2, 7)), jnp.int32)
  params = flax.linen.unbox(model.init(jax.random.key(0), tokens)['params'])
  params = jax.tree_util.tree_map_with_path(  # Trained adapters: lora_b no longer zero.
    lambda path, x: (
      0.1 * jax.random.normal(jax.random.key(len(str(path))), x.shape)
      if path[-1].key == 'lora_b'
      else x
    ),
    params,
  )
  adapted = model.apply({'params': params}, tokens)
  base = llm.LanguageModel(cfg.replace(lora_rank=0)).apply(
    {'params': params_without_lora(params)}, tokens
  )
  merged = llm.merge_lora(params, cfg)
  assert not any(
    'lora' in jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(merged)[0]
  )
  plain = llm.LanguageModel(cfg.replace(lora_rank=0)).apply({'params': merged}, tokens)
  np.testing.assert_allclose(plain, adapted, atol=1e-5)
  assert np.abs(np.asarray(base - adapted)).max() > 1e-3  # The adapters did change the output.


def params_without_lora(params):
  if not isinstance(params, dict):
    return params
  return {k: params_without_lora(v) for k, v in params.items() if k not in ('lora_a', 'lora_b')}


def test_make_random_llm_folder_loads_in_transformers_and_converts(tmp_path):
  sys.path.insert(0, os.path.join(REPO, 'tools'))
  import make_random_llm

  from aac_jax.data.tokenizer import Tokenizer

  captions = ['a dog barks twice', 'rain falls on a metal roof', 'a bell rings']
  vocab = Tokenizer.build(captions, min_count=1)
  vocab.save(str(tmp_path / 'vocab.txt'))
  hf_dir, out = tmp_path / 'hf', tmp_path / 'converted'
  assert (
    make_random_llm.main(['--output', str(hf_dir), '--vocab', str(tmp_path / 'vocab.txt')]) == 0
  )
  model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
  assert type(model).__name__ == 'Qwen2ForCausalLM'
  convert_llm.convert_folder(str(hf_dir), str(out))
  params, cfg = convert_llm.load_llm(str(out))
  tokens = np.random.default_rng(5).integers(0, vocab.vocab_size, size=(2, 6))
  ours = llm.LanguageModel(cfg).apply({'params': params}, jnp.asarray(tokens, jnp.int32))
  np.testing.assert_allclose(np.asarray(ours), _hf_logits(model, tokens), atol=1e-5)
  words = LlmTokenizer.load(str(out))
  for caption in captions + ['a cat meows']:  # Unknown words: <unk> in both.
    assert words.encode(caption) == vocab.encode(caption)
