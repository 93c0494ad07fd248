"""The caption command end to end, run as a new user would.

A tiny model is trained once per session by the real trainer command
(`python -m aac_jax.main`, runlocal demo config, 2 steps, 2 s clips). The
caption command then runs as a subprocess on wav/flac/ogg/mp3 files of
different sample rates and channel counts, on broken, empty, silent and
too-short files, on folders and on a missing path. Pure helpers (windows,
timestamps, usage errors, checkpoint paths) are tested in-process.
"""

import csv
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from aac_jax import caption_cli, inference

REPO = pathlib.Path(__file__).resolve().parents[1]
TRAIN_SECONDS = 2.0  # The tiny run's clip length: the default caption window.
TRAIN_FLAGS = (
  '--config=configs/synthetic_demo.py:runlocal',
  f'--config.dataset.max_audio_seconds={TRAIN_SECONDS}',
  '--config.train.num_steps=2',
  '--config.train.checkpoint_every=1',
  '--config.train.eval_every=2',
  '--config.eval.test_at_end=False',
  '--config.eval.max_examples=8',
)


def subprocess_env(cache_dir: pathlib.Path) -> dict[str, str]:
  """One CPU device as on a laptop; -O0 and a shared cache make compiles cheap."""
  env = dict(os.environ)
  env['XLA_FLAGS'] = '--xla_force_host_platform_device_count=1 --xla_backend_optimization_level=0'
  env['JAX_PLATFORMS'] = 'cpu'
  env['JAX_COMPILATION_CACHE_DIR'] = str(cache_dir)
  env['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
  return env


def train_tiny_run(tmp_path_factory) -> pathlib.Path:
  """Trains the tiny run once per session (shared with test_export.py); returns its workdir."""
  root = tmp_path_factory.getbasetemp() / 'tiny_caption_run'
  workdir = root / 'run'
  if (root / 'trained').exists():
    return workdir
  root.mkdir(exist_ok=True)
  command = [
    sys.executable,
    '-m',
    'aac_jax.main',
    *TRAIN_FLAGS,  # --config first: its overrides must follow it.
    f'--config.dataset.data_dir={root / "tfds"}',
    f'--workdir={workdir}',
  ]
  proc = run_command(command, root)
  assert proc.returncode == 0, proc.stderr[-4000:]
  (root / 'trained').touch()
  return workdir


def run_command(command: list[str], root: pathlib.Path) -> subprocess.CompletedProcess:
  return subprocess.run(
    command,
    cwd=REPO,
    env=subprocess_env(root / 'jax_cache'),
    capture_output=True,
    text=True,
    timeout=600,
  )


@pytest.fixture(scope='session')
def tiny_run(tmp_path_factory) -> pathlib.Path:
  return train_tiny_run(tmp_path_factory)


def _tone(rate: int, seconds: float, channels: int, freq: float = 440.0) -> np.ndarray:
  """`[frames, channels]` float32: a tone plus a little noise, louder per channel."""
  t = np.arange(int(rate * seconds)) / rate
  x = 0.3 * np.sin(2 * np.pi * freq * t) + 0.02 * np.random.default_rng(0).normal(size=t.size)
  return np.stack([x * (0.6 + 0.2 * c) for c in range(channels)], axis=-1).astype(np.float32)


# name -> (sample rate, seconds, channels, soundfile format, subtype)
GOOD_FILES = {
  'dog_16k_mono.wav': (16000, 1.5, 1, 'WAV', 'PCM_16'),
  'rain_44k_stereo.flac': (44100, 2.0, 2, 'FLAC', 'PCM_16'),
  'bird_22k_mono.ogg': (22050, 1.0, 1, 'OGG', 'VORBIS'),
  'nested/car_48k_stereo.mp3': (48000, 1.2, 2, 'MP3', 'MPEG_LAYER_III'),
  'hum_8k_3ch.wav': (8000, 1.0, 3, 'WAV', 'FLOAT'),
  'long_8k.wav': (8000, 5.0, 1, 'WAV', 'PCM_16'),
}
BAD_FILES = {  # name -> expected reason
  'broken.wav': 'unreadable',
  'empty.wav': caption_cli.EMPTY_FILE,
  'silent.flac': 'silent_audio',
  'short.wav': caption_cli.TOO_SHORT,
}


@pytest.fixture(scope='module')
def clips(tmp_path_factory) -> pathlib.Path:
  """A folder of good and bad audio files (plus a text file to be ignored)."""
  folder = tmp_path_factory.mktemp('clips')
  for name, (rate, seconds, channels, fmt, subtype) in GOOD_FILES.items():
    (folder / name).parent.mkdir(exist_ok=True)
    sf.write(folder / name, _tone(rate, seconds, channels), rate, format=fmt, subtype=subtype)
  (folder / 'broken.wav').write_bytes(b'RIFF\x10\x00\x00\x00WAVEfmt garbage' * 4)
  (folder / 'empty.wav').write_bytes(b'')
  sf.write(folder / 'silent.flac', np.zeros(16000, np.float32), 16000)
  sf.write(folder / 'short.wav', _tone(16000, 0.05, 1), 16000)
  (folder / 'notes.txt').write_text('not audio')
  return folder


def _words(workdir: pathlib.Path) -> set[str]:
  return set((workdir / 'vocab.txt').read_text().split('\n')[4:]) - {''}


def test_captions_every_format_and_reports_bad_files(tiny_run, clips, tmp_path):
  empty_dir = tmp_path / 'no_audio_here'
  empty_dir.mkdir()
  missing = tmp_path / 'missing.wav'
  out = tmp_path / 'captions.json'
  command = [sys.executable, 'tools/caption.py', '--workdir', str(tiny_run)]
  command += [str(clips), str(empty_dir), str(missing), '--output', str(out)]
  proc = run_command(command, tiny_run.parent)
  assert proc.returncode == caption_cli.EXIT_SOME_FAILED, proc.stderr[-4000:]

  document = json.loads(out.read_text())
  assert document['model']['step'] == 2 and document['model']['checkpoint'] == 'best'
  assert document['model']['window_seconds'] == TRAIN_SECONDS
  by_name = {
    pathlib.Path(f['file']).relative_to(clips).as_posix(): f
    for f in document['files']
    if f['file'].startswith(str(clips))
  }
  assert set(by_name) == set(GOOD_FILES) | set(BAD_FILES)  # notes.txt is not audio.
  words = _words(tiny_run)
  for name, (_, seconds, *_) in GOOD_FILES.items():
    entry = by_name[name]
    assert 'error' not in entry, entry
    assert entry['duration'] == pytest.approx(seconds, abs=0.06), name  # mp3 adds a little.
    for segment in entry['segments']:
      assert segment['caption'] and set(segment['caption'].split()) <= words, segment
  # A 5 s recording with the default 2 s window: three windows, the last one short.
  spans = [(s['start'], s['end']) for s in by_name['long_8k.wav']['segments']]
  assert spans == [(0.0, 2.0), (2.0, 4.0), (4.0, 5.0)]
  assert all(len(by_name[n]['segments']) == 1 for n in GOOD_FILES if n != 'long_8k.wav')

  failures = {f['file']: f['error'] for f in document['files'] if 'error' in f}
  expected = {str(clips / name): reason for name, reason in BAD_FILES.items()}
  expected[str(empty_dir)] = caption_cli.NO_AUDIO_FILES
  expected[str(missing)] = 'missing_file'
  assert failures == expected
  for path, reason in expected.items():
    assert f'FAILED {path}: {reason}' in proc.stderr
  assert 'captioned 6 of 12 inputs; 6 failed' in proc.stderr


def test_flags_override_decoding_and_windows(tiny_run, clips, tmp_path):
  out = tmp_path / 'captions.csv'
  command = [sys.executable, '-m', 'aac_jax.caption_cli']
  command += ['--checkpoint', str(tiny_run / 'checkpoints' / '1')]
  command += ['--method', 'beam', '--beam_size', '2', '--no_repeat_ngram_size', '1']
  command += ['--window', '1.5', '--hop', '1', '--batch_size', '4', '-o', str(out)]
  command += [str(clips / 'long_8k.wav'), str(clips / 'dog_16k_mono.wav')]
  proc = run_command(command, tiny_run.parent)
  assert proc.returncode == caption_cli.EXIT_OK, proc.stderr[-4000:]
  assert 'step 1 (requested), beam decoding, 1.5 s windows' in proc.stderr

  with open(out, newline='') as f:
    rows = list(csv.DictReader(f))
  spans = [(r['file'], float(r['start']), float(r['end'])) for r in rows]
  long, dog = str(clips / 'long_8k.wav'), str(clips / 'dog_16k_mono.wav')
  starts = [0.0, 1.0, 2.0, 3.0, 4.0]
  assert spans == [(long, s, min(s + 1.5, 5.0)) for s in starts] + [(dog, 0.0, 1.5)]
  for row in rows:  # --no_repeat_ngram_size 1: no word twice.
    words = row['caption'].split()
    assert words and len(words) == len(set(words)), row


def test_window_bounds():
  assert inference.window_bounds(9, 4, 4) == [(0, 4), (4, 8), (8, 9)]
  assert inference.window_bounds(8, 4, 4) == [(0, 4), (4, 8)]
  assert inference.window_bounds(3, 4, 4) == [(0, 3)]
  assert inference.window_bounds(9, 4, 2) == [(0, 4), (2, 6), (4, 8), (6, 9)]
  assert inference.window_bounds(9, 4, 4, min_samples=2) == [(0, 4), (4, 8)]  # 1-sample tail.
  with pytest.raises(ValueError):
    inference.window_bounds(9, 0, 4)


def test_timestamps_and_text_output():
  assert caption_cli.format_timestamp(0) == '00:00'
  assert caption_cli.format_timestamp(10) == '00:10'
  assert caption_cli.format_timestamp(62.5) == '01:02.5'
  assert caption_cli.format_timestamp(9.96) == '00:10'
  assert caption_cli.format_timestamp(3725) == '1:02:05'
  long = caption_cli.FileResult(
    'street.wav',
    25.0,
    [(0.0, 10.0, 'a dog barks twice'), (10.0, 20.0, 'cars pass'), (20.0, 25.0, 'rain')],
  )
  assert caption_cli.format_text(long) == (
    'street.wav:\n  00:00-00:10  a dog barks twice\n  00:10-00:20  cars pass\n  00:20-00:25  rain'
  )
  short = caption_cli.FileResult('dog.wav', 3.0, [(0.0, 3.0, 'a dog barks')])
  assert caption_cli.format_text(short) == 'dog.wav: a dog barks'


def test_usage_errors_exit_2(tmp_path, capsys):
  clip = tmp_path / 'a.wav'
  sf.write(clip, _tone(16000, 1.0, 1), 16000)
  assert caption_cli.main(['--workdir', str(tmp_path / 'nope'), str(clip)]) == 2
  assert 'no such run directory' in capsys.readouterr().err
  assert caption_cli.main(['--workdir', str(tmp_path), str(clip)]) == 2
  assert 'is not a training run' in capsys.readouterr().err
  assert caption_cli.main(['--workdir', str(tmp_path), str(clip), '--output', 'x.txt']) == 2
  assert caption_cli.main(['--workdir', str(tmp_path), str(clip), '--window', '0']) == 2
  (tmp_path / 'empty').mkdir()
  assert caption_cli.main(['--workdir', str(tmp_path), str(tmp_path / 'empty')]) == 2
  assert 'no audio files to caption' in capsys.readouterr().err
  with pytest.raises(SystemExit) as exit_info:  # argparse: missing --workdir.
    caption_cli.main([str(clip)])
  assert exit_info.value.code == 2


def test_checkpoint_paths_and_all_failed(tiny_run, clips, capsys):
  assert inference.resolve_run(tiny_run / 'checkpoints' / '1') == (tiny_run, 1)
  assert inference.resolve_run(tiny_run / 'checkpoints') == (tiny_run, None)
  with pytest.raises(inference.ModelLoadError, match='step 1 but --step 2'):
    inference.resolve_run(tiny_run / 'checkpoints' / '1', step=2)
  status = caption_cli.main(['--workdir', str(tiny_run), '--step', '7', str(clips / 'broken.wav')])
  assert status == 2 and 'no checkpoint at step 7' in capsys.readouterr().err
  # Every file bad: the model loads, nothing is compiled, exit 1.
  args = ['--workdir', str(tiny_run), str(clips / 'broken.wav'), str(clips / 'empty.wav')]
  assert caption_cli.main(args) == caption_cli.EXIT_SOME_FAILED
  err = capsys.readouterr().err
  assert 'broken.wav: unreadable' in err and 'empty.wav: empty_file' in err
