"""A small standard-library client of `aac-serve` (the bench and the tests use it).

proc, url = start_server(['--workdir', RUN, '--port', '0'], log_path)
status, body, headers = post_caption(url, open('dog.wav', 'rb').read())
status, body, headers = post_files(url, [('dog.wav', dog), ('rain.flac', rain)])
"""

import json
import os
import pathlib
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping, Sequence

REPO = pathlib.Path(__file__).resolve().parents[2]


def post_caption(
  url: str, data: bytes, timeout: float = 120, content_type: str | None = None
) -> tuple[int, dict, dict[str, str]]:
  """POST /caption.

  Args:
    url: the server, e.g. `http://127.0.0.1:8080`.
    data: the audio file's bytes (or a multipart body, see `post_files`).
    timeout: seconds to wait for the answer.
    content_type: the Content-Type header, if any.

  Returns:
    `(status, JSON body, headers by lower-case name)`; errors of the server
    (4xx, 5xx) are returned, not raised.
  """
  headers = {'Content-Type': content_type} if content_type else {}
  request = urllib.request.Request(f'{url}/caption', data=data, headers=headers, method='POST')
  try:
    with urllib.request.urlopen(request, timeout=timeout) as response:
      return response.status, json.loads(response.read()), _lower(response.headers)
  except urllib.error.HTTPError as error:
    return error.code, json.loads(error.read()), _lower(error.headers)


def post_files(
  url: str, files: Sequence[tuple[str, bytes]], timeout: float = 120
) -> tuple[int, dict, dict[str, str]]:
  """POST /caption with several files as multipart/form-data (as `curl -F file=@a.wav`).

  Args:
    url: the server.
    files: `(file name, bytes)` pairs, each sent as a part named `file`.
    timeout: seconds to wait for the answer.

  Returns:
    As `post_caption`.
  """
  boundary = uuid.uuid4().hex
  parts = []
  for name, data in files:
    head = (
      f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
      'Content-Type: application/octet-stream\r\n\r\n'
    )
    parts += [head.encode(), data, b'\r\n']
  body = b''.join([*parts, f'--{boundary}--\r\n'.encode()])
  return post_caption(url, body, timeout, f'multipart/form-data; boundary={boundary}')


def get(url: str, path: str, timeout: float = 30) -> tuple[int, str]:
  """GET `path`: `(status, text)`."""
  try:
    with urllib.request.urlopen(f'{url}{path}', timeout=timeout) as response:
      return response.status, response.read().decode()
  except urllib.error.HTTPError as error:
    return error.code, error.read().decode()


def metric(url: str, series: str) -> float:
  """The value of one series of `/metrics`, e.g. `aac_serve_batch_size_sum` (0 when absent)."""
  _, text = get(url, '/metrics')
  match = re.search(rf'^{re.escape(series)} (\S+)$', text, re.MULTILINE)
  return float(match.group(1)) if match else 0.0


def _lower(headers) -> dict[str, str]:
  return {name.lower(): value for name, value in headers.items()}


def start_server(
  flags: Sequence[str],
  log: pathlib.Path,
  env: Mapping[str, str] | None = None,
  timeout: float = 600,
) -> tuple[subprocess.Popen, str]:
  """Starts `tools/serve.py FLAGS` in a process group of its own; waits until it is ready.

  Args:
    flags: the server's flags (`--port 0` picks a free port).
    log: the file its stdout and stderr go to.
    env: its environment (default: this one's).
    timeout: seconds to wait for `/readyz`.

  Returns:
    `(process, url)`.

  Raises:
    RuntimeError: it exited or was not ready in time (the message holds its log).
  """
  with open(log, 'w') as out:
    proc = subprocess.Popen(
      [sys.executable, str(REPO / 'tools' / 'serve.py'), *flags],
      cwd=REPO,
      env=dict(env if env is not None else os.environ),
      stdout=out,
      stderr=out,
      start_new_session=True,
    )
  deadline, url = time.monotonic() + timeout, None
  while time.monotonic() < deadline:
    if proc.poll() is not None:
      raise RuntimeError(f'the server exited with {proc.returncode}:\n{log.read_text()}')
    found = url or re.search(r'listening on (http://\S+)', log.read_text())
    url = found if isinstance(found, str) else found and found.group(1)
    if url and _ready(url):
      return proc, url
    time.sleep(0.2)
  proc.kill()
  raise RuntimeError(f'the server was not ready in {timeout} s:\n{log.read_text()}')


def _ready(url: str) -> bool:
  try:
    return get(url, '/readyz', timeout=5)[0] == 200
  except (urllib.error.URLError, ConnectionError):
    return False
