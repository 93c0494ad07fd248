"""A converted language model with its own vocabulary as a run's decoder, end to end.

A tiny random `Qwen2ForCausalLM` with a byte-level BPE tokenizer whose
special tokens sit after the merges, as Qwen's do (no BOS; EOS
`<|endoftext|>`), saved by transformers' `save_pretrained` -> converted ->
a LoRA run on the toy dataset tokenises targets, prompt and decoded captions
with that tokenizer (`aac_jax.data.tokenizer.CaptionTokenizer`).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import toy_dataset

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')
tokenizers = pytest.importorskip('tokenizers')

from aac_jax import decoding, export, inference, models  # noqa: E402
from aac_jax.convert import llm as convert_llm  # noqa: E402
from aac_jax.data import tokenizer as tokenizer_lib  # noqa: E402
from aac_jax.data.tokenizer import EOS_ID  # noqa: E402
from aac_jax.models import llm, llm_bridge, pretrained_setup  # noqa: E402
from aac_jax.train import prepare  # noqa: E402
from configs import clotho_llm  # noqa: E402

fast_jit = functools.partial(jax.jit, compiler_options={'xla_backend_optimization_level': 0})
SPECIALS = ['<|endoftext|>', '<|im_start|>', '<|im_end|>']


def _captions(count: int, seed: int = 0) -> list[str]:
  rng = np.random.default_rng(seed)
  return [toy_dataset.make_caption(rng) for _ in range(count)]


def _write_tokenizer(folder) -> tokenizers.Tokenizer:
  """Byte-level BPE of the toy captions' words; the specials are added after training."""
  tok = toy_dataset.bpe_tokenizer(_captions(400), specials=SPECIALS)
  tok.save(str(folder / 'tokenizer.json'))
  return tok


@pytest.fixture(scope='module')
def converted(tmp_path_factory):
  """`(hf_model, hf_tokenizer, converted_dir)`."""
  hf_dir = tmp_path_factory.mktemp('hf_qwen')
  tok = _write_tokenizer(hf_dir)
  eos = tok.token_to_id('<|endoftext|>')
  config = transformers.Qwen2Config(
    vocab_size=tok.get_vocab_size() + 6,  # Padded past the tokenizer, as Qwen2.5's.
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    tie_word_embeddings=True,
    bos_token_id=eos,
    eos_token_id=eos,
  )
  torch.manual_seed(0)
  model = transformers.Qwen2ForCausalLM(config).eval()
  model.save_pretrained(hf_dir)
  out = tmp_path_factory.mktemp('converted_qwen')
  convert_llm.convert_folder(str(hf_dir), str(out))
  hf_tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(hf_dir / 'tokenizer.json'))
  return model, hf_tok, out


def test_run_ids_are_the_checkpoints_with_specials_swapped_in(converted):
  model, hf_tok, out = converted
  tok = llm_bridge.caption_tokenizer(str(out))
  eos, start, end = (hf_tok.convert_tokens_to_ids(t) for t in SPECIALS)
  # PAD, BOS, EOS, UNK: no BOS or pad id in config.json -> the first free specials.
  assert tok.partners == (end, start, eos, 3)
  assert sorted(tok.order.tolist()) == list(range(tok.vocab_size))
  for caption in _captions(50, seed=1):
    ids = tok.encode(caption)
    assert tok.llm_ids(ids) == hf_tok(caption, add_special_tokens=False).input_ids
    assert tokenizer_lib.PAD_ID not in ids and tokenizer_lib.EOS_ID not in ids
    assert tok.decode([*ids, tokenizer_lib.EOS_ID, *ids]) == hf_tok.decode(tok.llm_ids(ids))
  again = tokenizer_lib.load_vocab(_saved(tok, out))
  assert again.partners == tok.partners and again.encode(caption) == tok.encode(caption)
  # The weights in run order give the checkpoint's logits for the same tokens.
  params, cfg = convert_llm.load_llm(str(out))
  run_ids = np.asarray([tok.encode(caption)])
  ours = llm.LanguageModel(cfg).apply(
    {'params': llm.reorder_vocab(params, tok.order)}, jnp.asarray(run_ids, jnp.int32)
  )
  with torch.no_grad():
    theirs = model(torch.tensor([tok.llm_ids(run_ids[0])])).logits.numpy()
  np.testing.assert_allclose(np.asarray(ours), theirs[..., tok.order], atol=1e-4, rtol=1e-4)


def _saved(tok, folder):
  path = folder / 'saved_vocab.txt'
  tok.save(path)
  return path


def test_lora_run_trains_and_captions_with_the_checkpoint_tokenizer(converted, tmp_path):
  _, hf_tok, out = converted
  config = toy_dataset.demo_config(str(tmp_path / 'tfds'))
  clotho_llm.add_llm(config)
  config.model.llm.update(
    init=str(out),
    prompt='Describe the sound.',
    frame_stack=2,
    projector_dim=16,
    lora_rank=2,
    lora_dropout=0.0,
  )
  tok = prepare.prepare_run(config, tmp_path / 'run').load_tokenizer()
  assert isinstance(tok, tokenizer_lib.CaptionTokenizer)
  prompt = list(config.model.llm.prompt_ids)
  assert tok.llm_ids(prompt) == hf_tok('Describe the sound.', add_special_tokens=False).input_ids
  captions = _captions(2, seed=3)
  targets = np.stack([tok.encode_targets(c, 64) for c in captions])
  ids = hf_tok(captions[0], add_special_tokens=False).input_ids
  assert tok.llm_ids(targets[0, : len(ids)]) == ids and targets[0, len(ids)] == EOS_ID

  model = models.Captioner(models.make_captioner_config(config.model, tok.vocab_size))
  mels = config.frontend.n_mels
  fresh = fast_jit(lambda key: models.init_params(model, key, num_mels=mels))(jax.random.key(0))
  params = pretrained_setup.load_converted_init(fresh, model.config)
  feats = jnp.asarray(np.random.default_rng(4).normal(size=(2, 48, mels)), jnp.float32)
  pads = jnp.zeros((2, 48), jnp.float32)
  trained, losses = _train(model, params, feats, pads, jnp.asarray(targets), steps=3)
  assert losses[-1] < losses[0], losses
  settings = decoding.make_decode_settings(None, method='greedy', max_len=8)
  generate = functools.partial(decoding.generate, model, settings=settings, cached=True)
  tokens = np.asarray(fast_jit(generate)(trained, feats, pads, rng=jax.random.key(0)).tokens)
  texts = [tok.decode(row) for row in tokens.tolist()]
  for row, text in zip(tokens.tolist(), texts, strict=True):
    kept = row[: row.index(EOS_ID)] if EOS_ID in row else row
    llm_ids = [i for i in tok.llm_ids([t for t in kept if t > 1]) if i < len(hf_tok)]
    assert text == hf_tok.decode(llm_ids, skip_special_tokens=True).strip()
  assert (tokens > 3).any(), tokens  # Not only specials: some text was decoded.
  _check_merged_export(config, model, trained, tok)


def _check_merged_export(config, model, params, tok):
  """The export merges the adapters: no LoRA parameters, the unmerged model's tokens."""
  eval_model = model.clone(config=model.config.replace(deterministic=True))
  loaded = inference.LoadedModel(config, eval_model, params, tok)
  merged = export.merge_adapters(loaded)
  assert merged.model.config.llm.lora_rank == 0
  assert not [p for p in _paths(merged.params) if 'lora' in p]
  assert [p for p in _paths(params) if 'lora' in p]
  result = export.export_model(loaded, max_samples=6000)
  waveform, paddings = export.noise_batch(6000, batch=3, seed=11)
  live = jax.jit(export.make_export_fn(loaded, result.settings, result.repeat_ban_mask))
  expected = np.asarray(live(waveform, paddings))
  np.testing.assert_array_equal(np.asarray(result.exported.call(waveform, paddings)), expected)


def _paths(tree):
  return [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)]


def _train(model, params, feats, pads, targets, steps):
  """`steps` AdamW steps of the captioner's loss (frozen base: `freeze_optimizer`)."""
  tx = pretrained_setup.freeze_optimizer(optax.adamw(1e-2), model.config)
  inputs = tokenizer_lib.shift_right(targets)

  def loss_fn(p):
    logits = model.apply({'params': p}, feats, pads, inputs)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    return jnp.sum(losses * (targets != 0)) / jnp.sum(targets != 0)

  @fast_jit
  def step(p, state):
    loss, grads = jax.value_and_grad(loss_fn)(p)
    updates, state = tx.update(grads, state, p)
    return optax.apply_updates(p, updates), state, loss

  state, losses = tx.init(params), []
  for _ in range(steps):
    params, state, loss = step(params, state)
    losses.append(float(loss))
  return params, np.asarray(losses)


def test_word_ban_is_refused_with_the_checkpoint_tokenizer():
  # The content-word ban marks vocabulary entries; with BPE pieces it would
  # ban "ing" or "s" after their first use (checked by hand: "barking and
  # chirping" could not be written with the tiny tokenizer's pieces).
  from aac_jax import config_validation

  config = clotho_llm.get_config('runlocal')
  config.decode.ban_repeated_content_words = True
  assert config_validation.problems(config, 'train', 8) == []  # A word vocabulary: allowed.
  config.model.llm.init = 'converted'
  (line,) = config_validation.problems(config, 'train', 8)
  assert line.startswith('decode.ban_repeated_content_words=True') and 'set it False' in line
