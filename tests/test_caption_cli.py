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

import jax
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
  'bell_0.05s.wav': (16000, 0.05, 1, 'WAV', 'PCM_16'),  # Padded to --min_seconds.
}
BAD_FILES = {  # name -> expected reason
  'broken.wav': 'unreadable',
  'empty.wav': caption_cli.EMPTY_FILE,
  'silent.flac': 'silent_audio',
  'tiny.wav': caption_cli.TOO_SHORT,  # Below --refuse_below.
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
  sf.write(folder / 'tiny.wav', _tone(16000, 0.005, 1), 16000)
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
  assert 'captioned 7 of 13 inputs; 6 failed' in proc.stderr
  assert (
    f'FAILED {clips / "tiny.wav"}: too_short (0.0050 s of audio, less than --refuse_below 0.01 s)'
    in proc.stderr
  )


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
  # A name with a line break cannot pass for two files, or fake a caption.
  tricky = caption_cli.FileResult('a.wav: a cat\nb.wav', 3.0, [(0.0, 3.0, 'a dog barks')])
  assert caption_cli.format_text(tricky) == "'a.wav: a cat\\nb.wav': a dog barks"
  assert caption_cli.display_name("'quoted.wav") == '"\'quoted.wav"'
  assert caption_cli.display_name('café 1.wav') == 'café 1.wav'
  assert caption_cli.display_name('bad\udce9.wav') == "'bad\\udce9.wav'"  # Undecodable byte.


def test_dcase_csv_writer(tmp_path):
  with open(tmp_path / 's.csv', 'w', newline='', encoding='utf-8') as f:
    caption_cli.write_dcase_csv(f, [('a, b.wav', 'a dog barks'), ('c.wav', 'rain')])
  with open(tmp_path / 's.csv', newline='', encoding='utf-8') as f:
    assert list(csv.reader(f)) == [
      ['file_name', 'caption_predicted'],
      ['a, b.wav', 'a dog barks'],
      ['c.wav', 'rain'],
    ]


def test_short_clip_is_padded_to_min_seconds():
  class Captioner:  # Records what the model would see.
    window_samples, batch_size = 100, 8
    loaded = type('Loaded', (), {'sample_rate': 10})()
    seen = []

    def caption_clips(self, clips):
      self.seen.extend(clips)
      return ['a bell'] * len(clips)

  captioner = Captioner()
  stream = caption_cli.CaptionStream(captioner, hop_samples=100, min_samples=25)
  done = list(stream.add(caption_cli.FileResult('bell.wav'), np.ones(3, np.float32)))
  done += list(stream.finish())
  assert captioner.seen[0].tolist() == [1.0] * 3 + [0.0] * 22  # Silence counts as audio.
  assert done[0].duration == 0.3 and done[0].segments == [(0.0, 0.3, 'a bell')]


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
  refuse = ['--refuse_below', '0.5', '--min_seconds', '0.25']
  assert caption_cli.main(['--workdir', str(tmp_path), str(clip), *refuse]) == 2
  assert 'need 0 < --refuse_below <= --min_seconds' in capsys.readouterr().err
  (tmp_path / 'x').mkdir()
  sf.write(tmp_path / 'x' / 'a.wav', _tone(16000, 1.0, 1), 16000)
  dcase = ['--format', 'dcase', str(clip), str(tmp_path / 'x' / 'a.wav')]
  assert caption_cli.main(['--workdir', str(tmp_path), *dcase]) == 2
  assert 'these names repeat in different folders: a.wav' in capsys.readouterr().err
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


def test_fifo_device_and_newline_names_in_dcase_format(tiny_run, clips, tmp_path):
  """A fifo and /dev/zero are reported without blocking; a newline name is one CSV row."""
  fifo = tmp_path / 'pipe.wav'
  os.mkfifo(fifo)  # Opening it would block this command forever: it must be stat-ed only.
  newline = tmp_path / 'two\nlines.wav'
  sf.write(newline, _tone(16000, 1.0, 1), 16000)
  out = tmp_path / 'submission.csv'
  command = [sys.executable, 'tools/caption.py', '--workdir', str(tiny_run), '--format', 'dcase']
  command += ['-o', str(out), str(fifo), '/dev/zero', str(newline), str(clips / 'long_8k.wav')]
  proc = run_command(command, tiny_run.parent)
  assert proc.returncode == caption_cli.EXIT_SOME_FAILED, proc.stderr[-4000:]
  assert (
    f'FAILED {fifo}: not_a_regular_file (a fifo (named pipe), not a regular file: not read)'
    in proc.stderr
  )
  assert (
    'FAILED /dev/zero: not_a_regular_file (a character device, not a regular file: not read)'
    in proc.stderr
  )
  assert 'long_8k.wav: 3 windows; the dcase format keeps the first' in proc.stderr
  with open(out, newline='', encoding='utf-8') as f:
    rows = list(csv.reader(f))
  assert rows[0] == ['file_name', 'caption_predicted']
  assert [r[0] for r in rows[1:]] == ['two\nlines.wav', 'long_8k.wav']
  assert all(r[1] and set(r[1].split()) <= _words(tiny_run) for r in rows[1:])


def test_bucket_samples_few_lengths_none_below_the_shortest():
  window = 30 * 32000  # A CoNeTTE run's window at 32 kHz.
  two_s = 2 * 32000
  lengths = {n: inference.bucket_samples(n, window, 4, two_s) for n in range(1, window + 1, 9973)}
  assert sorted(set(lengths.values())) == [window // 8, window // 4, window // 2, window]
  assert all(n <= length for n, length in lengths.items())  # Every clip fits its bucket.
  assert inference.bucket_samples(1 * 32000, window, 4, two_s) == window // 8  # 3.75 s, not 30.
  assert inference.bucket_samples(window // 8 + 1, window, 4, two_s) == window // 4
  assert inference.bucket_samples(window, window, 4, two_s) == window
  assert inference.bucket_samples(5, 80, 4, shortest=20) == 20  # 10 is under the shortest.
  assert inference.bucket_samples(1, window, 1) == window  # One bucket: the window.
  with pytest.raises(ValueError, match='need 1'):
    inference.bucket_samples(window + 1, window)


def _random_model(seconds: float) -> inference.LoadedModel:
  """An in-memory captioner: the runlocal demo model with random weights, `seconds` clips."""
  from aac_jax import models
  from aac_jax.data import tokenizer as tokenizer_lib
  from configs import synthetic_demo

  config = synthetic_demo.get_config('runlocal')
  config.dataset.max_audio_seconds = seconds
  config.frontend.feature_stats = 'fixed'
  tokenizer = tokenizer_lib.Tokenizer(
    tokenizer_lib.SPECIAL_TOKENS + tuple(f'w{i}' for i in range(40))
  )
  model = models.Captioner(
    models.make_captioner_config(config.model, tokenizer.vocab_size, deterministic=True)
  )
  init = jax.jit(lambda key: models.init_params(model, key, num_mels=config.frontend.n_mels))
  return inference.LoadedModel(config, model, init(jax.random.key(3)), tokenizer)


def _real_frames_fn(loaded: inference.LoadedModel):
  """`(clip, samples) -> [frames, dim]`: the encoder's real frames of `clip` padded to `samples`."""
  from aac_jax.audio import frontend

  @jax.jit
  def encode(waveform, paddings):
    features, feature_paddings = frontend.log_mel(
      waveform, paddings, loaded.config.frontend, loaded.sample_rate
    )
    return loaded.model.apply(
      {'params': loaded.params}, features, feature_paddings, method='encode'
    )

  def real_frames(clip: np.ndarray, samples: int) -> np.ndarray:
    waveform = np.zeros((1, samples), np.float32)
    paddings = np.ones((1, samples), np.float32)
    waveform[0, : len(clip)], paddings[0, : len(clip)] = clip, 0.0
    encoded, enc_paddings = encode(waveform, paddings)
    return np.asarray(encoded[0])[np.asarray(enc_paddings[0]) < 0.5]

  return real_frames


def test_padded_length_grows_with_the_clip_and_captions_do_not_change():
  """A short clip is encoded at a short bucket; its caption equals the window-padded one.

  With a 4 s window the buckets are 2 and 4 s (1 s is under
  `MIN_BUCKET_SECONDS`). A random model's greedy captions hardly depend on
  the audio, so the encoder's real frames (all the decoder sees) are compared
  too: the same at every padded length, different between clips.
  """
  loaded = _random_model(4.0)
  settings, mask = inference.make_settings(loaded)
  rate = loaded.sample_rate
  rng = np.random.default_rng(0)
  clips = [
    _tone(rate, seconds, 1, freq)[:, 0]
    + rng.normal(0, 0.05, int(rate * seconds)).astype(np.float32)
    for seconds, freq in ((0.7, 300.0), (1.9, 2000.0), (3.3, 700.0), (3.9, 5000.0))
  ]
  captioner = inference.AudioCaptioner(
    loaded, settings, repeat_ban_mask=mask, batch_size=2, length_buckets=1
  )
  expected = captioner.caption_tokens(clips)
  assert captioner.shapes == [(2, 4 * rate)] * 2  # Every clip padded to the window.
  # Bucketed: shortest first, the two short clips at 2 s, rows back in the order given.
  captioner.length_buckets, captioner.shapes = 2, []
  order = [3, 0, 2, 1]
  np.testing.assert_array_equal(
    captioner.caption_tokens([clips[i] for i in order]), expected[order]
  )
  assert captioner.shapes == [(2, 2 * rate), (2, 4 * rate)]
  real_frames = _real_frames_fn(loaded)
  short = real_frames(clips[0], 2 * rate)
  np.testing.assert_allclose(short, real_frames(clips[0], 4 * rate), atol=2e-5)
  assert np.abs(short - real_frames(clips[1][: len(clips[0])], 2 * rate)).max() > 1e-2
