"""Export round trip: `tools/export.py` on a trained run, reloaded in a fresh process.

The fresh process imports only jax and numpy (it checks that no aac_jax or
flax module got imported) and must give exactly the tokens of the in-process
greedy decode, for two batch sizes (the batch dimension is symbolic).
"""

import importlib.util
import json
import pathlib
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
import soundfile
from test_caption_cli import TRAIN_SECONDS, subprocess_env, train_tiny_run

from aac_jax import export, inference

SAMPLE_RATE = 16000
MAX_SAMPLES = int(TRAIN_SECONDS * SAMPLE_RATE)
FAST = {'xla_backend_optimization_level': 0}
REPO = pathlib.Path(__file__).resolve().parents[1]
HAVE_TENSORFLOW = importlib.util.find_spec('tensorflow') is not None

# Runs in a fresh interpreter: no aac_jax, no flax, only jax + numpy.
CONSUMER = r"""
import json, pathlib, sys
import jax
import numpy as np

folder, inputs, outputs = map(pathlib.Path, sys.argv[1:4])
meta = json.loads((folder / 'export.json').read_text())
exported = jax.export.deserialize(bytearray((folder / 'model.jax_export').read_bytes()))
vocab = (folder / meta['vocab_file']).read_text().split('\n')
data = np.load(inputs)
tokens = np.asarray(exported.call(data['waveform'], data['paddings']))
first = np.asarray(exported.call(data['waveform'][:1], data['paddings'][:1]))

def words(row):
  out = []
  for i in row.tolist():
    if i == meta['token_ids']['eos']:
      break
    out.append(vocab[i])
  return ' '.join(out)

np.savez(outputs, tokens=tokens, first=first)
loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('aac_jax', 'flax', 'optax', 'orbax'))
print(json.dumps({'captions': [words(r) for r in tokens], 'model_modules': loaded,
                  'in_avals': str(exported.in_avals)}))
"""


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
  return train_tiny_run(tmp_path_factory)


def _inputs() -> tuple[np.ndarray, np.ndarray]:
  """Three clips of different kinds and lengths, `[3, MAX_SAMPLES]` each."""
  rng = np.random.default_rng(1)
  lengths = (SAMPLE_RATE, MAX_SAMPLES, SAMPLE_RATE // 2)
  waveform = np.zeros((3, MAX_SAMPLES), np.float32)
  waveform[0, : lengths[0]] = 0.1 * rng.standard_normal(lengths[0])
  waveform[1] = 0.5 * np.sin(0.3 * np.arange(MAX_SAMPLES))
  waveform[2, : lengths[2]] = 0.5 * rng.standard_normal(lengths[2])
  paddings = np.ones_like(waveform)
  for i, n in enumerate(lengths):
    paddings[i, :n] = 0.0
  return waveform, paddings


def test_export_round_trip_in_fresh_process(tiny_run, tmp_path):
  out = tmp_path / 'exported'
  # `python tools/export.py ARGS` runs this `main`; in-process saves a start-up.
  # A repeat ban makes every caption a ranking of many tokens (a strict comparison).
  args = ['--workdir', str(tiny_run), '--output', str(out), '--no_repeat_ngram_size', '1']
  assert export.main([*args, '--no-check']) == 0
  meta = json.loads((out / export.METADATA_FILENAME).read_text())
  assert (meta['sample_rate'], meta['max_samples'], meta['platforms']) == (
    SAMPLE_RATE,
    MAX_SAMPLES,
    ['cpu'],
  )
  assert meta['decode']['method'] == 'greedy' and meta['decode']['no_repeat_ngram_size'] == 1
  assert (out / 'vocab.txt').read_text() == (tiny_run / 'vocab.txt').read_text()

  waveform, paddings = _inputs()
  np.savez(tmp_path / 'inputs.npz', waveform=waveform, paddings=paddings)
  fresh = subprocess.run(
    [
      sys.executable,
      '-c',
      CONSUMER,
      str(out),
      str(tmp_path / 'inputs.npz'),
      str(tmp_path / 'o.npz'),
    ],
    cwd=tmp_path,  # Not the repo: nothing of it is importable from the working directory.
    env=subprocess_env(tiny_run.parent / 'jax_cache'),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert fresh.returncode == 0, fresh.stderr[-4000:]
  report = json.loads(fresh.stdout.strip().splitlines()[-1])
  assert report['model_modules'] == []
  assert 'float32[batch,32000]' in report['in_avals']
  got = np.load(tmp_path / 'o.npz')

  loaded = inference.load_model(tiny_run)
  settings, _ = inference.make_settings(loaded, method='greedy', no_repeat_ngram_size=1)
  live = jax.jit(lambda w, p: inference.waveform_to_tokens(loaded, loaded.params, w, p, settings))
  expected = np.asarray(live(waveform, paddings))
  assert len({tuple(row) for row in expected}) > 1, 'the clips should get different captions'
  np.testing.assert_array_equal(got['tokens'], expected)
  np.testing.assert_array_equal(got['first'], expected[:1])
  assert report['captions'] == [loaded.tokenizer.decode(row.tolist()) for row in expected]


def test_export_cli_usage_error(tmp_path, capsys):
  assert export.main(['--workdir', str(tmp_path / 'nope'), '--output', str(tmp_path / 'o')]) == 2
  assert 'no such run directory' in capsys.readouterr().err


@pytest.mark.skipif(not HAVE_TENSORFLOW, reason="needs the 'savedmodel' extra (TensorFlow)")
def test_savedmodel_gives_the_artifacts_tokens_and_captions(tiny_run, tmp_path):
  from aac_jax import export_tf

  out = tmp_path / 'exported'
  args = ['--workdir', str(tiny_run), '--output', str(out), '--no_repeat_ngram_size', '1']
  assert export.main([*args, '--format', 'savedmodel']) == 0  # Its own check included.
  exported = jax.export.deserialize(bytearray((out / export.EXPORT_FILENAME).read_bytes()))
  waveform, paddings = _inputs()
  equal, captions = export_tf.check_savedmodel(out / 'savedmodel', exported, waveform, paddings)
  assert equal
  vocab = (out / 'vocab.txt').read_text().split('\n')
  tokens = np.asarray(exported.call(waveform, paddings))
  assert len(set(captions)) > 1
  assert captions == [
    ' '.join(vocab[t] for t in row[: list(row).index(2)] if t > 2) for row in tokens.tolist()
  ]


@pytest.mark.skipif(HAVE_TENSORFLOW, reason='TensorFlow is installed')
def test_savedmodel_without_tensorflow_is_a_usage_error(tmp_path, capsys):
  args = ['--workdir', str(tmp_path), '--output', str(tmp_path / 'o'), '--format', 'savedmodel']
  assert export.main(args) == 2
  err = capsys.readouterr().err
  assert "needs TensorFlow (tensorflow is missing): pip install 'aac_jax[savedmodel]'" in err
  assert not (tmp_path / 'o').exists()


def test_runs_here_maps_gpu_names():
  assert export.runs_here(['cpu']) and export.runs_here(['cuda', 'cpu'])
  assert not export.runs_here(['tpu'])


def test_caption_and_export_say_why_they_use_an_older_checkpoint(tiny_run, tmp_path):
  run = tmp_path / 'run'
  shutil.copytree(tiny_run, run)
  for path in (run / 'checkpoints' / '2' / 'state').rglob('*'):  # The best (validated) step.
    if path.parent.name == 'd':  # Array data files, cut to half their size.
      path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
  reason = re.escape(f'Checkpoint step 2 in {run / "checkpoints"} is unreadable, trying an older')
  clip = tmp_path / 'tone.wav'
  soundfile.write(clip, np.sin(np.arange(SAMPLE_RATE) * 0.05).astype(np.float32), SAMPLE_RATE)
  caption = subprocess.run(
    [sys.executable, 'tools/caption.py', '--workdir', str(run), '--format', 'json', str(clip)],
    cwd=REPO,
    env=subprocess_env(tiny_run.parent / 'jax_cache'),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert caption.returncode == 0, caption.stderr[-3000:]
  assert re.search(rf'{reason} one: \w+', caption.stderr), caption.stderr[-3000:]
  assert 'read_only' not in caption.stderr  # Orbax's warnings stay off the terminal,
  assert 'Traceback' not in caption.stderr  # and its threads' noise.
  assert json.loads(caption.stdout)['model']['step'] == 1
  out = tmp_path / 'exported'
  export_run = subprocess.run(
    [sys.executable, 'tools/export.py', '--workdir', str(run), '--output', str(out), '--no-check'],
    cwd=REPO,
    env=subprocess_env(tiny_run.parent / 'jax_cache'),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert export_run.returncode == 0, export_run.stderr[-3000:]
  assert re.search(rf'{reason} one: \w+', export_run.stderr), export_run.stderr[-3000:]
  assert 'step 1 (older)' in export_run.stdout
