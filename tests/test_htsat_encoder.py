"""CLAP's HTS-AT tower as the captioning encoder (`model.encoder='htsat'`, configs/clotho_htsat.py).

A tiny random `transformers.ClapModel` folder (tests/clap_reference.py 'micro') is the
`encoder_init`; the encoder's frames must equal transformers' audio tower
(its own feature extractor) unfolded to time; a fine-tuned run trains and
captions with `aac-caption`, a frozen run trains from the embedding store.
"""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile as sf
import toy_dataset
from test_pretrained_recipe import _point_at_toy

from aac_jax import caption_cli, inference
from aac_jax.audio import frontend
from aac_jax.data import clips, embeddings, pipeline
from aac_jax.models import pretrained_setup, pretrained_store
from aac_jax.train import trainer
from configs import clotho_htsat

torch = pytest.importorskip('torch')
pytest.importorskip('transformers')
from tests import clap_reference  # noqa: E402  (torch, transformers)

SR = clap_reference.TINY_RATE


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  """Toy data at 16 kHz (0.5-1 s clips) and a tiny random CLAP folder."""
  root = tmp_path_factory.mktemp('htsat')
  jax.config.update('jax_compilation_cache_dir', str(root / 'jax_cache'))
  folder = root / 'clap'
  model, extractor = clap_reference.save_random_clap(folder, False, 64, size='micro')
  name = toy_dataset.build_toy_dataset(
    str(root / 'tfds'),
    splits={'train': 8, 'validation': 8, 'test': 8},
    min_seconds=0.5,
    max_seconds=1.0,
    sample_rate=SR,
  )
  return types.SimpleNamespace(
    root=root, folder=str(folder), model=model, extractor=extractor, name=name
  )


def _config(setup, **variant):
  args = ','.join(f'{k}={v}' for k, v in dict(encoder_init=setup.folder, **variant).items())
  config = clotho_htsat.get_config(f'runlocal,{args}')
  _point_at_toy(config, setup.root / 'tfds', setup.name)
  config.train.num_steps = config.train.eval_every = config.train.checkpoint_every = 2
  config.eval.test_at_end = False
  return config


def test_frames_equal_transformers_audio_tower(setup):
  """Front end + tagger on a padded batch == `ClapAudioModel.last_hidden_state` over frequency."""
  config = _config(setup)
  pretrained_setup.resolve_encoder_frontend(config, check_embeddings=False)
  assert config.frontend.kind == 'clap' and config.frontend.hop_length == 160
  tagger, params = pretrained_setup.make_tagger_and_params(config)
  waves = clap_reference.render_clips([SR, 7_000, 11_000, 2_500], SR)
  waves = [np.round(w * 32768).clip(-32768, 32767).astype(np.int16) for w in waves]
  fitted = [clips.fit_audio(w, SR) for w in waves]
  wave, pads = (jnp.asarray(np.stack(x)) for x in zip(*fitted, strict=True))
  feats, feat_pads = frontend.log_mel(wave, pads, config.frontend, SR)
  frames, frame_pads = jax.jit(tagger.apply)({'params': params}, feats, feat_pads)
  with torch.no_grad():
    inputs = setup.extractor([w / 32768 for w in waves], sampling_rate=SR, return_tensors='pt')[
      'input_features'
    ]
    hidden = setup.model.audio_model(input_features=inputs).last_hidden_state
  want = hidden.mean(2).permute(0, 2, 1).numpy()  # [batch, time, dim]
  assert frames.shape == want.shape == (4, 32, 32)  # 2 frequency rows averaged.
  np.testing.assert_allclose(np.asarray(frames), want, atol=1e-4)
  assert np.abs(want).max() > 0.1 and not np.asarray(frame_pads).any()


def test_grid_unfolds_as_transformers_does():
  """`grid_to_frames` on a grid with 2 frequency rows per piece == ClapAudioEncoder's reshapes."""
  from aac_jax.metrics.clap.htsat import HtsatConfig
  from aac_jax.models.htsat_encoder import grid_to_frames

  config = HtsatConfig(num_mel_bins=32, spec_size=64, depths=(2, 2, 2), num_heads=(1, 1, 1))
  side, r, dim = 4, config.freq_ratio, 3  # 64 / 4 / 2**2 = 4 rows, freq_ratio 2.
  tokens = np.random.default_rng(0).normal(size=(2, side * side, dim)).astype(np.float32)
  # transformers: [b, C, freq, time] grid, cut into r pieces along freq, pieces put along time.
  grid = torch.from_numpy(tokens).permute(0, 2, 1).reshape(2, dim, side, side)
  c_freq_bin = side // r
  grid = grid.reshape(2, dim, side // c_freq_bin, c_freq_bin, side)
  grid = grid.permute(0, 1, 3, 2, 4).reshape(2, dim, c_freq_bin, -1)
  want = grid.mean(2).permute(0, 2, 1).numpy()
  np.testing.assert_allclose(np.asarray(grid_to_frames(jnp.asarray(tokens), config)), want, 1e-6)


def test_a_folder_of_other_sizes_or_no_clap_folder_is_refused(setup, tmp_path):
  config = _config(setup)
  config.model.htsat.embed_dim = 32
  with pytest.raises(ValueError, match=r'holds an HTS-AT with embed_dim=16: set those model.htsat'):
    pretrained_setup.resolve_encoder_frontend(config)
  config.model.encoder_init = str(tmp_path)
  with pytest.raises(ValueError, match=r'is not a usable CLAP folder: .*config.json is missing'):
    pretrained_setup.resolve_encoder_frontend(config)


def test_freezing_counts_swin_stages(setup):
  """freeze=none trains every tower leaf; freeze=1 freezes the patch embedding and stage 0 only."""
  from aac_jax import models

  model_cfg = models.make_captioner_config(_config(setup, freeze='none').model, 8)
  _, shapes = models.param_axes(models.Captioner(model_cfg), num_mels=16)
  assert not any(jax.tree.leaves(pretrained_setup.frozen_mask(shapes, model_cfg)))
  frozen = pretrained_setup.frozen_mask(shapes, model_cfg.replace(encoder_freeze='1'))
  frozen = pretrained_store.flatten(frozen['encoder']['tagger'])
  assert frozen['htsat/stage0_block0/mlp_in/kernel'] and frozen['htsat/patch_proj/kernel']
  assert frozen['htsat/batch_norm/scale']
  assert not frozen['htsat/stage0_merge/reduction/kernel'] and not frozen['htsat/norm/scale']
  every = pretrained_setup.frozen_mask(shapes, model_cfg.replace(encoder_freeze='all'))
  assert all(jax.tree.leaves(every['encoder']['tagger']))


def test_frozen_run_trains_from_the_embedding_store_and_captions(setup, tmp_path):
  config = _config(setup, embeddings='auto')
  pretrained_setup.resolve_encoder_frontend(config, check_embeddings=False)
  tagger, params = pretrained_setup.make_tagger_and_params(config)
  path, count = embeddings.extract_train_embeddings(config, tagger, params)
  assert count == 8
  workdir = setup.root / 'frozen'
  config = _config(setup, embeddings='auto')
  # Two steps of three: no validation (aac-caption below decodes from audio, and a
  # validation decode would be one more compilation), the step-2 checkpoint kept.
  config.train.num_steps, config.train.stop_at_step, config.train.eval_every = 3, 2, 0
  config.dataset.max_caption_tokens = 12
  result = trainer.train_and_evaluate(config, str(workdir))
  assert (result.step, result.reason) == (2, 'stopped')
  assert config.dataset.embeddings_dir == path
  from aac_jax.data.tokenizer import Tokenizer

  batch = next(
    iter(
      pipeline.make_train_iterator(config.dataset, Tokenizer.load(str(workdir / 'vocab.txt')), 8)
    )
  )
  assert batch['frames'].shape[1:] == (32, 32)
  loaded = inference.load_model(workdir)
  tower = pretrained_store.flatten(jax.tree.map(np.asarray, loaded.params['encoder']['tagger']))
  for key, value in pretrained_store.flatten(params).items():
    assert np.array_equal(tower[key], value), key  # Frozen: bit-identical.
  clip = tmp_path / 'clip.wav'
  sf.write(clip, clap_reference.render_clips([12_000], 22_050)[0], 22_050)
  out = tmp_path / 'captions.json'
  assert caption_cli.main([str(clip), '--run', str(workdir), '--output', str(out)]) == 0
  assert 'clip.wav' in out.read_text()
