"""Frozen-encoder fast path: extract a tagger's frames once, train from them, evaluate from audio."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from test_pretrained_recipe import _point_at_toy, build_toy_32k, make_converted_convnext

from aac_jax.audio import frontend
from aac_jax.data import clips, embeddings, pipeline, sources
from aac_jax.models import pretrained_setup
from aac_jax.train import trainer
from configs import clotho_convnext


def _config(root, name, converted, **variant):
  args = ','.join(f'{k}={v}' for k, v in dict(encoder_init=converted, **variant).items())
  config = clotho_convnext.get_config(f'runlocal,{args}')
  _point_at_toy(config, root / 'tfds', name)
  return config


@pytest.fixture(scope='module')
def extracted(tmp_path_factory):
  root = tmp_path_factory.mktemp('embeddings')
  jax.config.update('jax_compilation_cache_dir', str(root / 'jax_cache'))
  name = build_toy_32k(root)
  converted = make_converted_convnext(root)
  config = _config(root, name, converted, embeddings='auto')
  pretrained_setup.resolve_encoder_frontend(config, check_embeddings=False)
  tagger, params = pretrained_setup.make_tagger_and_params(config)
  path, count = embeddings.extract_train_embeddings(config, tagger, params)
  return root, name, converted, config, tagger, params, path, count


def test_stored_frames_equal_the_tagger_on_each_clip(extracted):
  _, _, _, config, tagger, params, path, count = extracted
  assert count == 16
  stored = tfds.builder_from_directory(path).as_data_source(split='train')
  audio = sources.open_source(config.dataset, 'train')
  by_id = {audio[i]['id']: audio[i]['audio'] for i in range(len(audio))}
  for i in (0, 5):
    record = stored[i]
    wave, pads = clips.fit_audio(by_id[record['id']], len(by_id[record['id']]))
    feats, feat_pads = frontend.log_mel(
      jnp.asarray(wave[None]), jnp.asarray(pads[None]), config.frontend, 32000
    )
    frames, _ = tagger.apply({'params': params}, feats, feat_pads)
    np.testing.assert_allclose(record['frames'], frames[0], rtol=1e-4, atol=1e-5)


def test_training_reads_frames_and_evaluates_from_audio(extracted):
  root, name, converted, *_ = extracted
  config = _config(root, name, converted, embeddings='auto')
  config.train.num_steps = config.train.eval_every = config.train.checkpoint_every = 2
  config.eval.test_at_end = False
  workdir = root / 'from_frames'
  result = trainer.train_and_evaluate(config, str(workdir))
  assert result.reason == 'finished'
  assert (workdir / 'predictions' / 'validation_step2.json').exists()  # Decoded from audio.
  batch = next(iter(pipeline.make_train_iterator(config.dataset, _tokenizer(workdir), 8)))
  assert set(batch) == {'frames', 'frame_paddings', 'targets'}
  assert batch['frames'].shape[2] == 768


def _tokenizer(workdir):
  from aac_jax.data.tokenizer import Tokenizer

  return Tokenizer.load(str(workdir / 'vocab.txt'))


def test_mismatched_runs_are_refused(extracted):
  root, name, converted, *_ = extracted
  config = _config(root, name, converted, embeddings='auto')
  config.dataset.max_audio_seconds = 1.8
  with pytest.raises(ValueError, match='max_audio_seconds=2.0 .* re-extract'):
    pretrained_setup.resolve_encoder_frontend(config)
  config = _config(root, name, converted, embeddings='auto', freeze='none')
  with pytest.raises(ValueError, match="encoder_freeze='all'"):
    pretrained_setup.resolve_encoder_frontend(config)
  config = _config(root, name, converted, embeddings='other')
  with pytest.raises(FileNotFoundError, match='extract_embeddings.py'):
    pretrained_setup.resolve_encoder_frontend(config)
