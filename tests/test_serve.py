"""The captioning server, run as a process on a loopback port and called over HTTP.

One server (`tools/serve.py`) is started per module on the tiny run that
`test_caption_cli.py` trains, with small limits. Its captions are compared
with `aac-caption`'s for the same files and flags (good files of several
formats, rates and channel counts, a long one cut in windows, and broken,
empty, silent and too-short ones, whose reasons must match); bad requests
(too large, too long, disconnecting clients, a full queue) are sent while
good ones run; the last test sends SIGTERM to the server's process group
under load. The batcher alone is tested without HTTP or a model.
"""

import concurrent.futures
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import soundfile as sf
from test_caption_cli import BAD_FILES, GOOD_FILES, subprocess_env, train_tiny_run
from test_caption_cli import clips as clips  # noqa: F401 - the audio files fixture.

from aac_jax import caption_cli, inference
from aac_jax.serving import batcher as batcher_lib
from aac_jax.serving import client
from aac_jax.serving import server as server_lib

MAX_BYTES = 300_000
MAX_QUEUE = 16  # Windows: the good files at once fit, a burst of long recordings does not.
# Flags shared by the server and aac-caption: a repeat ban makes every caption a
# ranking of many tokens, so equal captions mean equal model outputs.
MODEL_FLAGS = ['--batch_size', '4', '--no_repeat_ngram_size', '1']
SERVER_FLAGS = [
  *MODEL_FLAGS,
  *('--max_wait_ms', '100', '--max_queue', str(MAX_QUEUE), '--max_seconds', '6'),
  *('--max_bytes', str(MAX_BYTES), '--port', '0'),
]


class Server:
  """A running `tools/serve.py` process."""

  def __init__(self, proc: subprocess.Popen, log: pathlib.Path, url: str):
    self.proc, self.log, self.url = proc, log, url

  def post(self, data: bytes) -> tuple[int, dict, dict]:
    return client.post_caption(self.url, data)

  def get(self, path: str) -> tuple[int, str]:
    return client.get(self.url, path)

  def metric(self, series: str) -> float:
    return client.metric(self.url, series)


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
  return train_tiny_run(tmp_path_factory)


@pytest.fixture(scope='module')
def server(tiny_run, tmp_path_factory):
  """The server on the tiny run, in a process group of its own (as in a container)."""
  log = tmp_path_factory.mktemp('serve') / 'serve.log'
  flags = ['--workdir', str(tiny_run), *SERVER_FLAGS]
  proc, url = client.start_server(flags, log, subprocess_env(tiny_run.parent / 'jax_cache'))
  try:
    yield Server(proc, log, url)
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


def _aac_caption(tiny_run, files, out: pathlib.Path) -> dict[str, dict]:
  """`aac-caption`'s JSON entries by file, for the same flags as the server's."""
  args = ['--workdir', str(tiny_run), *MODEL_FLAGS, '-o', str(out), *map(str, files)]
  caption_cli.main(args)
  return {entry['file']: entry for entry in json.loads(out.read_text())['files']}


def _tone_wav(path: pathlib.Path, seconds: float, rate: int = 8000) -> bytes:
  t = np.arange(int(seconds * rate)) / rate
  sf.write(path, (0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32), rate, subtype='PCM_16')
  return path.read_bytes()


def _disconnect_early(url: str, body: bytes, sent: int | None = None) -> None:
  """Sends the request (or its first `sent` bytes of body), then closes the socket."""
  host, port = url.removeprefix('http://').split(':')
  with socket.create_connection((host, int(port)), timeout=10) as sock:
    head = f'POST /caption HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n'
    sock.sendall(head.encode() + body[:sent])
    time.sleep(0.2)  # The server is reading the body when the client leaves.


def test_captions_equal_aac_caption_and_bad_inputs_get_their_reasons(
  server, tiny_run, clips, tmp_path
):
  names = [*GOOD_FILES, *BAD_FILES]
  expected = _aac_caption(tiny_run, [clips / n for n in names], tmp_path / 'aac_caption.json')
  long = _tone_wav(tmp_path / 'seven_seconds.wav', 7.0)  # Over --max_seconds 6.
  requests = {name: (clips / name).read_bytes() for name in names}
  requests['too_large'] = b'\0' * (MAX_BYTES + 1)
  requests['too_long'] = long
  with concurrent.futures.ThreadPoolExecutor(len(requests) + 4) as pool:
    gone = [pool.submit(_disconnect_early, server.url, requests[n]) for n in list(GOOD_FILES)[:2]]
    gone.append(pool.submit(_disconnect_early, server.url, requests['long_8k.wav'], 1000))
    answers = dict(zip(requests, pool.map(server.post, requests.values()), strict=True))
    [future.result() for future in gone]

  for name in GOOD_FILES:
    status, body, _ = answers[name]
    want = expected[str(clips / name)]
    assert status == 200, (name, body)
    got = [(s['start'], s['end'], s['caption']) for s in body['segments']]
    assert got == [(s['start'], s['end'], s['caption']) for s in want['segments']], name
    assert body['duration'] == want['duration']
    assert body['caption'] == (got[0][2] if len(got) == 1 else None)
    assert body['model']['step'] == 2 and body['model']['workdir'] == str(tiny_run)
  captions = {answers[name][1]['segments'][0]['caption'] for name in GOOD_FILES}
  assert len(captions) > 1, 'the clips should get different captions'
  assert len(answers['long_8k.wav'][1]['segments']) == 3

  for name in BAD_FILES:
    status, body, _ = answers[name]
    assert (status, body['error']) == (400, expected[str(clips / name)]['error']), body
  assert str(tmp_path) not in json.dumps(answers['broken.wav'][1])  # No server paths.
  assert answers['too_large'][:2] == (
    413,
    {'error': 'too_large', 'detail': f'the body is over --max_bytes {MAX_BYTES}'},
  )
  assert answers['too_long'][0] == 413 and answers['too_long'][1]['error'] == 'too_long'
  assert '7.0 s, over the server limit --max_seconds 6' in answers['too_long'][1]['detail']
  assert server.get('/healthz')[0] == 200 and server.get('/readyz')[0] == 200
  assert server.metric('aac_serve_errors_total{reason="client_disconnected"}') >= 1
  assert server.metric('aac_serve_errors_total{reason="silent_audio"}') >= 1
  assert server.metric('aac_serve_errors_total{reason="too_large"}') >= 1
  assert server.metric('aac_serve_requests_total{status="200"}') >= len(GOOD_FILES)


def test_multipart_files_are_each_captioned_as_alone_with_bad_files_reasons(server, clips):
  names = ['dog_16k_mono.wav', 'silent.flac', 'long_8k.wav', 'broken.wav', 'hum_8k_3ch.wav']
  files = [(name, (clips / name).read_bytes()) for name in names]
  status, body, _ = client.post_files(server.url, files)
  assert status == 200, body
  assert [entry['name'] for entry in body['files']] == names
  for (_, data), entry in zip(files, body['files'], strict=True):
    alone_status, alone, _ = server.post(data)
    if alone_status == 200:
      assert {k: v for k, v in entry.items() if k != 'name'} == {
        k: v for k, v in alone.items() if k != 'model'
      }
      assert body['model'] == alone['model']
    else:
      assert (entry['error'], entry['detail']) == (alone['error'], alone['detail']), entry
  assert len(body['files'][2]['segments']) == 3  # The long recording, in windows.
  assert [e.get('error') for e in body['files']] == [None, 'silent_audio', None, 'unreadable', None]
  multipart = 'multipart/form-data; boundary=x'
  fields_only = b'--x\r\nContent-Disposition: form-data; name="a"\r\n\r\nhi\r\n--x--\r\n'
  for content_type, data, reason in [
    (multipart, fields_only, 'no_files'),
    (multipart, b'not multipart', 'bad_multipart'),
    ('multipart/form-data', b'', 'bad_multipart'),  # No boundary.
  ]:
    status, answer, _ = client.post_caption(server.url, data, content_type=content_type)
    assert (status, answer['error']) == (400, reason), answer


def test_full_queue_answers_503_with_retry_after(server, clips):
  long = (clips / 'long_8k.wav').read_bytes()  # Three windows each: 24 of them overflow 16.
  with concurrent.futures.ThreadPoolExecutor(24) as pool:
    answers = list(pool.map(server.post, [long] * 24))
  full = [a for a in answers if a[0] == 503]
  assert full, 'a burst of 72 windows should overflow a queue of 16'
  for _, body, headers in full:
    assert body['error'] == 'queue_full' and headers['retry-after'] == '1', body
  done = [a for a in answers if a[0] == 200]
  assert done and len(done) + len(full) == len(answers)
  assert {len(body['segments']) for _, body, _ in done} == {3}
  assert server.metric('aac_serve_errors_total{reason="queue_full"}') >= len(full)
  sizes = server.metric('aac_serve_batch_size_count')
  assert server.metric('aac_serve_batch_size_sum') > sizes, 'windows should share batches'


def test_usage_errors_exit_2_before_loading(tmp_path, capsys):
  assert server_lib.main(['--workdir', str(tmp_path), '--max_queue', '0']) == 2
  assert 'need --max_wait_ms >= 0, --max_queue >= 1' in capsys.readouterr().err
  assert server_lib.main(['--workdir', str(tmp_path / 'missing')]) == 2
  assert 'cannot use model' in capsys.readouterr().err


def test_batcher_batches_by_bucket_drops_cancelled_and_drains():
  gate, batches = threading.Event(), []

  def run_batch(clips):
    gate.wait(30)
    batches.append([int(c[0]) for c in clips])
    return [f'clip {int(c[0])}' for c in clips]

  batcher = batcher_lib.DynamicBatcher(
    run_batch, max_batch=3, max_wait_s=0.05, max_queue=8, bucket_of=lambda c: c.shape[0]
  )
  clip = lambda i, n=4: np.full(n, i, np.float32)  # noqa: E731
  first = batcher.submit([clip(0)])  # Taken alone after 50 ms; waits at the gate.
  time.sleep(0.3)
  short = batcher.submit([clip(1), clip(2, 8), clip(3), clip(4)])
  gone = batcher.submit([clip(5)])
  with pytest.raises(batcher_lib.QueueFull):
    batcher.submit([clip(6)] * 4)  # 5 queued + 4 > 8.
  gone.cancel()
  gate.set()
  batcher.close()
  with pytest.raises(batcher_lib.Closed):
    batcher.submit([clip(7)])
  assert first.result() == ['clip 0']
  assert short.result() == ['clip 1', 'clip 2', 'clip 3', 'clip 4']
  # Same-length windows share a batch (at most 3), the 8-sample one gets its own,
  # and the cancelled request's window is never captioned.
  assert batches == [[0], [1, 3, 4], [2]]


def test_take_batch_fills_padded_rows_with_shorter_windows_only():
  pow2 = lambda count: inference.batch_rows(count, 8)  # noqa: E731 - the server's rows.
  # Three windows of the oldest's bucket (4) are padded to 4 rows: the free row takes
  # the oldest shorter window (2); a longer one (8) never joins.
  assert batcher_lib.take_batch([4, 8, 2, 4, 2, 4], 8, pow2) == [0, 2, 3, 5]
  assert batcher_lib.take_batch([4, 4, 2], 8, pow2) == [0, 1]  # Two rows: no room.
  assert batcher_lib.take_batch([2, 2, 2, 1], 2, pow2) == [0, 1]  # A full batch.
  assert batcher_lib.take_batch([1, 2, 2, 2], 8, pow2) == [0]  # Nothing shorter.
  assert batcher_lib.take_batch([4, 2, 4], 8, lambda count: count) == [0, 2]  # No padding.


def test_batcher_takes_a_batch_filled_to_max_batch_without_waiting():
  batches = []

  def run_batch(clips):
    batches.append([c.shape[0] for c in clips])
    return [str(c.shape[0]) for c in clips]

  batcher = batcher_lib.DynamicBatcher(
    run_batch,
    max_batch=4,
    max_wait_s=60.0,
    max_queue=8,
    bucket_of=lambda c: c.shape[0],
    rows_of=lambda count: inference.batch_rows(count, 4),
  )
  long, short = np.zeros(8, np.float32), np.zeros(2, np.float32)
  first = batcher.submit([long, long])
  second = batcher.submit([short, long])  # Three long windows pad to 4 rows: full.
  assert second.result(timeout=10) == ['2', '8'] and first.result() == ['8', '8']
  batcher.close()
  assert batches == [[8, 8, 2, 8]]


def test_sigterm_under_load_answers_every_received_request(server, clips):
  """Last in the file: it stops the module's server."""
  body = (clips / 'dog_16k_mono.wav').read_bytes()
  statuses, refused, stop = [], [], threading.Event()

  def client():
    while not stop.is_set():
      try:
        statuses.append(server.post(body)[0])
      except (urllib.error.URLError, ConnectionError, OSError) as error:
        refused.append(error)  # Not accepted: the listening socket is closed.
        return

  _, text = server.get('/metrics')
  before = sum(map(float, re.findall(r'^aac_serve_requests_total\{.*\} (\S+)$', text, re.M)))
  threads = [threading.Thread(target=client) for _ in range(8)]
  for thread in threads:
    thread.start()
  while len(statuses) < 8:
    time.sleep(0.05)
  os.killpg(server.proc.pid, signal.SIGTERM)
  assert server.proc.wait(timeout=120) == 0, server.log.read_text()[-3000:]
  stop.set()
  for thread in threads:
    thread.join(30)
  log = server.log.read_text()
  answered, received = map(int, re.search(r'answered (\d+) of (\d+)', log).groups())
  assert answered == received, log
  assert set(statuses) <= {200, 503}, statuses
  assert refused, 'clients should have found the port closed after the drain'
  # Every request the server received was answered, and every answer reached its client.
  assert len(statuses) == received - before, (len(statuses), received, before)
