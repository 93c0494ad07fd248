"""CLAP in JAX against `transformers.ClapModel` (random tiny weights, both layouts).

A tiny `ClapModel` is saved by transformers with a byte-level BPE tokenizer
trained on real Clotho captions, converted by `tools/convert_checkpoint.py
clap`, and loaded by `aac_jax.metrics.clap.embedder`; embeddings and logits
must match transformers' (its own feature extractor and tokenizer) within
1e-4 on synthetic-scene audio of several lengths in one padded batch.
"""

import csv
import functools
import json
import sys
import types

import numpy as np
import pytest

from tests import corpora

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')
from tests import clap_reference  # noqa: E402  (torch, transformers)

sys.path.insert(0, 'tools')
import convert_checkpoint  # noqa: E402

SR = clap_reference.TINY_RATE


def _captions(n: int) -> list[str]:
  path = corpora.corpora_dir() / 'clotho' / 'clotho_captions_development.csv'
  return clap_reference.read_captions(path, n)


def _clips(lengths: list[int]) -> list[np.ndarray]:
  return clap_reference.render_clips(lengths, SR)


def _tokenizer(folder, captions):
  return clap_reference.train_tokenizer(folder, captions, max_length=40)


def _hf_folder(folder, fusion: bool, vocab_size: int):
  return clap_reference.save_random_clap(folder, fusion, vocab_size, size='tiny')


def _build_clap(fusion: bool, tmp_path_factory):
  """transformers model, extractor, tokenizer; our converted folder and embedder; captions."""
  hf = tmp_path_factory.mktemp('hf')
  captions = _captions(200)
  tok = _tokenizer(hf, captions)
  model, extractor = _hf_folder(hf, fusion, len(tok))
  out = tmp_path_factory.mktemp('clap')
  assert convert_checkpoint.main(['clap', '--input', str(hf), '--output', str(out)]) == 0
  from aac_jax.metrics import clap_score

  ours = clap_score.shared_embedder(str(out), 16)  # The one `aac-evaluate --clap_dir` uses.
  return types.SimpleNamespace(
    model=model, extractor=extractor, tok=tok, ours=ours, captions=captions, fusion=fusion, dir=out
  )


@pytest.fixture(scope='module')
def unfused_clap(tmp_path_factory):
  """The unfused layout (`laion/clap-htsat-unfused`): every test that needs one layout."""
  return _build_clap(False, tmp_path_factory)


@pytest.fixture(scope='module')
def fused_clap(tmp_path_factory):
  """The fused layout (`laion/clap-htsat-fused`, `larger_clap_general`)."""
  return _build_clap(True, tmp_path_factory)


@pytest.fixture(params=['unfused_clap', 'fused_clap'], ids=['unfused', 'fused'])
def clap(request):
  """Both layouts, for the parity tests that differ between them."""
  return request.getfixturevalue(request.param)


def test_tokenizer_ids_match_transformers(clap):
  tok = clap.tok
  ours = clap.ours
  captions = clap.captions
  texts = [*captions[:50], 'A dog barks, then a car passes by!  Twice.']
  want = tok(texts, truncation=True)['input_ids']
  got = [e.ids for e in ours.text_runner.tokenizer.encode_batch(texts)]
  assert got == want
  assert max(len(ids) for ids in want) == 40  # Truncation reached.


def test_embeddings_and_logits_match_transformers(clap):
  model = clap.model
  extractor = clap.extractor
  tok = clap.tok
  ours = clap.ours
  captions = clap.captions
  fusion = clap.fusion
  # Several lengths in one padded batch; unfused also cuts a longer clip at its start.
  lengths = [SR, 7_000, 12_345, 2_500] + ([] if fusion else [23_000])
  clips = _clips(lengths)
  texts = captions[100:106]
  feats = extractor([c[:SR] for c in clips], sampling_rate=SR, return_tensors='pt')
  encoded = tok(texts, padding=True, truncation=True, return_tensors='pt')
  with torch.no_grad():
    ref = model(
      input_ids=encoded['input_ids'],
      attention_mask=encoded['attention_mask'],
      input_features=feats['input_features'],
      is_longer=torch.zeros(len(clips), 1, dtype=torch.bool),
    )
  audio, text = ours.audio(clips), ours.text(texts)
  np.testing.assert_allclose(audio, ref.audio_embeds.numpy(), atol=1e-4)
  np.testing.assert_allclose(text, ref.text_embeds.numpy(), atol=1e-4)
  logits = ours.logit_scale * audio @ text.T
  np.testing.assert_allclose(logits, ref.logits_per_audio.numpy(), atol=1e-4)
  assert np.abs(logits).max() > 0.05  # Not a degenerate all-zero comparison.


def test_fusion_of_a_long_clip_matches_transformers(fused_clap):
  """`is_longer` clips take the fusion branch (4 crops; here all 4 the same padded clip)."""
  model = fused_clap.model
  extractor = fused_clap.extractor
  ours = fused_clap.ours
  import jax
  import jax.numpy as jnp

  from aac_jax.audio import clap_frontend as frontend
  from aac_jax.metrics.clap import model as clap_model

  clips = _clips([SR, 9_000])
  feats = extractor(clips, sampling_rate=SR, return_tensors='pt')
  is_longer = torch.tensor([[True], [False]])
  with torch.no_grad():
    want = model.get_audio_features(feats['input_features'], is_longer=is_longer).pooler_output
  wave = np.zeros((2, SR), np.float32)
  for i, c in enumerate(clips):
    wave[i, : len(c)] = c
  mel = frontend.log_mel(jnp.asarray(wave), jnp.asarray([SR, 9_000]), ours.settings)
  embed = functools.partial(clap_model.Clap(ours.config).apply, method='audio_embeds')
  embed = jax.jit(embed)
  got = embed(ours.variables, mel, jnp.asarray([True, False]))
  np.testing.assert_allclose(np.asarray(got), want.numpy(), atol=1e-4)
  plain = embed(ours.variables, mel, jnp.asarray([False, False]))
  np.testing.assert_allclose(np.asarray(plain)[1], want.numpy()[1], atol=1e-4)
  assert np.abs(plain[0] - got[0]).max() > 1e-3  # The fusion branch changed clip 0.


def test_converter_refuses_a_folder_that_does_not_fit_its_config(clap, tmp_path, capsys):
  ours = clap.ours
  fusion = clap.fusion
  hf = tmp_path / 'hf'
  model, _ = _hf_folder(hf, fusion, ours.config.text.vocab_size)
  config = json.loads((hf / 'config.json').read_text())
  config['audio_config']['depths'] = [2, 2, 1]
  (hf / 'config.json').write_text(json.dumps(config))
  (hf / 'tokenizer.json').write_text('{}')
  with pytest.raises(SystemExit) as exit_info:
    convert_checkpoint.main(['clap', '--input', str(hf), '--output', str(tmp_path / 'out')])
  message = str(exit_info.value)
  assert message.startswith('convert_checkpoint clap: error:')
  assert 'layers.2.blocks.1' in message, message


def _write_eval_files(tmp_path, clips, captions):
  """Clotho-style references and predictions, and one WAV per clip (16-bit)."""
  import soundfile as sf

  audio = tmp_path / 'audio'
  audio.mkdir()
  ids = [f'clip_{i}.wav' for i in range(len(clips))]
  for name, clip in zip(ids, clips, strict=True):
    sf.write(audio / name, clip, SR, subtype='PCM_16')
  with open(tmp_path / 'refs.csv', 'w', newline='') as f:
    w = csv.writer(f)
    w.writerow(['file_name'] + [f'caption_{k}' for k in range(1, 6)])
    for i, name in enumerate(ids):
      w.writerow([name, *captions[5 * i : 5 * i + 5]])
  with open(tmp_path / 'preds.csv', 'w', newline='') as f:
    w = csv.writer(f)
    w.writerow(['file_name', 'caption_predicted'])
    for i, name in enumerate(ids):
      w.writerow([name, captions[100 + i]])
  return ids, audio


def test_evaluate_prints_clap_sim_equal_to_transformers(unfused_clap, tmp_path, capsys):
  model = unfused_clap.model
  extractor = unfused_clap.extractor
  tok = unfused_clap.tok
  captions = unfused_clap.captions
  from aac_jax.metrics import evaluate_cli

  clips = _clips([SR, 9_000, 14_000, 5_000])
  ids, audio = _write_eval_files(tmp_path, clips, captions)
  clap_dir = str(unfused_clap.dir)
  report = evaluate_cli.main([
    '--predictions', str(tmp_path / 'preds.csv'), '--references', str(tmp_path / 'refs.csv'),
    '--clap_dir', clap_dir, '--clap_audio_dir', str(audio), '--bootstrap', '200',
  ])  # fmt: skip
  out = capsys.readouterr().out
  line = next(x for x in out.splitlines() if x.startswith('clap_sim '))
  assert '[' in line and 'n/a' not in line  # Score and interval printed.
  # transformers on the same (16-bit) audio and captions.
  quantized = [np.round(c * 32768).clip(-32768, 32767) / 32768 for c in clips]
  feats = extractor(quantized, sampling_rate=SR, return_tensors='pt')
  preds = [captions[100 + i] for i in range(len(clips))]
  refs = [captions[5 * i : 5 * i + 5] for i in range(len(clips))]
  with torch.no_grad():
    a = model.get_audio_features(**feats).pooler_output.numpy()
    t = model.get_text_features(
      **tok(preds, padding=True, truncation=True, return_tensors='pt')
    ).pooler_output
    r = model.get_text_features(
      **tok(sum(refs, []), padding=True, truncation=True, return_tensors='pt')
    )
  t, r = t.numpy(), r.pooler_output.numpy().reshape(len(clips), 5, -1)
  want_audio = np.einsum('nd,nd->n', t, a)
  want_refs = np.einsum('nd,nkd->nk', t, r).mean(1)
  assert report['corpus']['clap_sim'] == pytest.approx(want_audio.mean(), abs=1e-4)
  assert report['corpus']['clap_sim_refs'] == pytest.approx(want_refs.mean(), abs=1e-4)
  low, high = report['intervals_95']['clap_sim']
  assert want_audio.min() - 1e-4 <= low <= high <= want_audio.max() + 1e-4


def test_evaluate_without_clap_dir_says_why(unfused_clap, tmp_path, capsys):
  captions = unfused_clap.captions
  from aac_jax.metrics import evaluate_cli

  _, audio = _write_eval_files(tmp_path, _clips([4_000, 4_000]), captions)
  report = evaluate_cli.main(
    ['--predictions', str(tmp_path / 'preds.csv'), '--references', str(tmp_path / 'refs.csv')]
  )
  assert 'clap_sim' not in report['corpus']
  assert 'no --clap_dir' in report['unavailable']['clap_sim']
  assert 'clap_sim     ' in capsys.readouterr().out
  (audio / 'clip_1.wav').unlink()  # A clip without audio: one line before any scoring.
  argv = ['--predictions', str(tmp_path / 'preds.csv'), '--references', str(tmp_path / 'refs.csv')]
  argv += ['--clap_dir', str(unfused_clap.dir), '--clap_audio_dir', str(audio)]
  with pytest.raises(ValueError, match=r'1 of 2 clips have no audio file .*clip_1.wav'):
    evaluate_cli.main(argv)


def test_best_metric_clap_sim_is_refused_before_training():
  from aac_jax.metrics import eval_config
  from configs import base

  config = base.get_base_config()
  config.train.best_metric = 'clap_sim'
  with pytest.raises(ValueError, match='clap_sim is computed by aac-evaluate --clap_dir only'):
    eval_config.check_metrics_config(config)


def test_retrieval_command_equals_brute_force_ranking_of_transformers(
  unfused_clap, tmp_path, capsys
):
  import retrieval as retrieval_tool

  clips = _clips([SR, 9_000, 14_000, 5_000, 11_000, 3_000])
  ids, audio = _write_eval_files(tmp_path, clips, unfused_clap.captions)
  argv = ['--clap_dir', str(unfused_clap.dir), '--references', str(tmp_path / 'refs.csv')]
  report = retrieval_tool.main([*argv, '--audio_dir', str(audio)])
  assert report['queries'] == 5 * len(clips)
  assert 'R@1 ' in capsys.readouterr().out
  quantized = [np.round(c * 32768).clip(-32768, 32767) / 32768 for c in clips]
  with torch.no_grad():
    feats = unfused_clap.extractor(quantized, sampling_rate=SR, return_tensors='pt')
    a = unfused_clap.model.get_audio_features(**feats).pooler_output.numpy()
    refs = unfused_clap.captions[: 5 * len(clips)]
    encoded = unfused_clap.tok(refs, padding=True, truncation=True, return_tensors='pt')
    t = unfused_clap.model.get_text_features(**encoded).pooler_output.numpy()
  ranks = [list(np.argsort(-(a @ t[q]), kind='stable')).index(q // 5) + 1 for q in range(len(t))]
  for k in (1, 5):
    assert report['scores'][f'R@{k}'] == pytest.approx(np.mean(np.array(ranks) <= k))
  assert report['scores']['mAP@10'] == pytest.approx(np.mean(1 / np.array(ranks)))
  (audio / ids[2]).unlink()
  with pytest.raises(SystemExit, match='retrieval: error: 1 of 6 clips have no audio file'):
    retrieval_tool.main([*argv, '--audio_dir', str(audio)])


def test_aac_caption_rerank_equals_brute_force_numpy_rerank(unfused_clap):
  """AudioCaptioner with rerank='clap' vs transformers' CLAP on the same beam candidates."""
  import jax

  from aac_jax import inference
  from aac_jax.data import audio_io
  from tests.test_caption_cli import _random_model

  loaded = _random_model(seconds=1.0)
  rate = loaded.sample_rate
  clips = [np.resize(c, int(len(c) * rate / SR)) for c in _clips([SR, 9_000, 14_000, 5_000])]
  settings, _ = inference.make_settings(
    loaded,
    method='beam',
    beam_size=4,
    max_len=8,
    rerank='clap',
    rerank_clap_dir=str(unfused_clap.dir),
  )
  captioner = inference.AudioCaptioner(loaded, settings, batch_size=4, length_buckets=1)

  first = captioner.caption_clips(clips)
  # The candidates, from the captioner's own compiled `generate_candidates` (same padded batch).
  waveform = np.zeros((4, captioner.window_samples), np.float32)
  paddings = np.ones_like(waveform)
  for i, clip in enumerate(clips):
    waveform[i, : len(clip)], paddings[i, : len(clip)] = clip, 0.0
  run = captioner._rerank[0]
  out = run(loaded.params, waveform, paddings, jax.random.key(0), captioner._mask)
  texts = [[loaded.tokenizer.decode(t.tolist()) for t in row] for row in np.asarray(out.tokens)]
  decoder = np.asarray(out.scores)
  at_clap_rate = [audio_io.resample(c, rate, SR) for c in clips]
  with torch.no_grad():
    features = unfused_clap.extractor(at_clap_rate, sampling_rate=SR, return_tensors='pt')
    a = unfused_clap.model.get_audio_features(**features).pooler_output.numpy()
    encoded = unfused_clap.tok(sum(texts, []), padding=True, truncation=True, return_tensors='pt')
    t = unfused_clap.model.get_text_features(**encoded).pooler_output.numpy().reshape(4, 4, -1)
  cosine = np.einsum('bd,bnd->bn', a, t)
  chosen = set()
  for weight in (0.0, 1.0, 5.0, 1e3):  # Only the host-side choice changes: no recompilation.
    captioner.settings = settings.replace(rerank_weight=weight)
    total = decoder + weight * cosine
    want = [texts[i][int(np.argmax(total[i]))] for i in range(len(clips))]
    assert captioner.caption_clips(clips) == want, (weight, texts, decoder, cosine)
    chosen.add(tuple(want))
    if weight == 1.0:
      assert first == want
  assert len(chosen) > 1, (texts, decoder, cosine)  # CLAP changed a choice.


def test_scst_clap_reward_equals_transformers_cosine(unfused_clap, monkeypatch):
  """reward_weights {cider_d: 1, clap: 2}: CIDEr-D + 2 x cosine(caption, clip audio)."""
  from aac_jax.data import sources
  from aac_jax.scst import rewards
  from configs import synthetic_demo_scst

  rate = 32_000  # The train audio's rate: resampled to the CLAP model's.
  clips = [np.round(c * 32767).astype(np.int16) for c in clap_reference.render_clips(
    [32_000, 20_000, 12_000], rate)]  # fmt: skip
  source = [{'audio': c} for c in clips]
  refs = [unfused_clap.captions[5 * i : 5 * i + 5] for i in range(3)]
  split = sources.EvalSplit('train', ['a', 'b', 'c'], refs)
  config = synthetic_demo_scst.get_config()
  config.scst.reward, config.dataset.sample_rate = 'mix', rate
  config.scst.reward_weights.clap = 2.0
  with pytest.raises(ValueError, match='needs scst.clap_dir'):
    rewards.clap_term(config)
  config.scst.clap_dir = str(unfused_clap.dir)
  monkeypatch.setattr(sources, 'open_source', lambda cfg, split: source)
  term = rewards.clap_term(config)
  weights = rewards.reward_weights(config.scst)
  reward_fn = rewards.CaptionReward(split, weights, clap=term)
  captions, index = unfused_clap.captions[150:156], np.array([0, 1, 2, 2, 1, 0])
  got = reward_fn(captions, index)
  from aac_jax.data import audio_io

  at_clap_rate = [audio_io.resample(c.astype(np.float32) / 32768, rate, SR) for c in clips]
  with torch.no_grad():
    feats = unfused_clap.extractor(at_clap_rate, sampling_rate=SR, return_tensors='pt')
    a = unfused_clap.model.get_audio_features(**feats).pooler_output.numpy()
    encoded = unfused_clap.tok(captions, padding=True, truncation=True, return_tensors='pt')
    t = unfused_clap.model.get_text_features(**encoded).pooler_output.numpy()
  cider = rewards.CaptionReward(split, {'cider_d': 1.0})(captions, index)
  np.testing.assert_allclose(got, cider + 2.0 * np.einsum('nd,nd->n', t, a[index]), atol=1e-4)
  assert 'clap' in reward_fn.metric_scores(captions, index)


def test_scst_clap_weight_without_folder_is_refused_before_training():
  from aac_jax import config_validation
  from configs import synthetic_demo_scst

  config = synthetic_demo_scst.get_config()
  config.scst.reward = 'mix'
  config.scst.reward_weights.clap = 0.5
  lines = config_validation.problems(config, 'scst', 1)
  assert any(line.startswith("scst.clap_dir='': a clap reward weight needs") for line in lines)
  config.scst.clap_dir = '/some/clap'
  assert not any('clap' in line for line in config_validation.problems(config, 'scst', 1))
