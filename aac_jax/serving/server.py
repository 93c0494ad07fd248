"""An HTTP captioning server with dynamic batching (the `aac-serve` command).

  aac-serve --workdir workdirs/demo/ce --port 8080
  aac-serve --workdir exported/demo --batch_size 32 --max_wait_ms 20
  curl --data-binary @street.wav http://127.0.0.1:8080/caption

`--workdir` is a training run (captioned with the flags of `aac-caption`:
`--step`, `--window`, `--hop`, the decoding flags) or a folder written by
`tools/export.py` (its greedy settings baked in). Endpoints:

  POST /caption  body: the audio file's bytes, any format `aac-caption` reads.
                 200 {"caption", "duration", "segments": [{start, end,
                 caption}], "model": {workdir, step, ...}}; "caption" is
                 null when the recording spans several windows.
                 Or multipart/form-data with one or more files
                 (`curl -F file=@a.wav -F file=@b.flac`): 200 {"files":
                 [{"name", "caption", "duration", "segments"} or {"name",
                 "error", "detail"}], "model"}, in the order sent; a bad
                 file gets the reason it would get alone.
  GET /healthz   200 while the process runs.
  GET /readyz    200 once every batch shape is compiled, 503 before and
                 while shutting down.
  GET /metrics   Prometheus text: requests by status, errors by reason,
                 batch sizes, latency, queued windows.

Refusals are JSON `{"error": reason, "detail": text}`: 413 `too_large` (body
over `--max_bytes`), 413 `too_long` (audio over `--max_seconds`), 400 with
`aac-caption`'s reasons (`unreadable`, `empty_file`, `silent_audio`,
`too_short`, `nan_samples`, ...), 503 `queue_full`, `not_ready` or
`shutting_down` with a Retry-After header, 500 `internal` (logged; the
server goes on); a multipart body with no file is 400 `no_files`, an
unparsable one 400 `bad_multipart`. A client that disconnects has its queued windows dropped.
SIGTERM (or Ctrl-C) stops accepting connections, answers every request
already received, and exits 0.

Built on FastAPI + uvicorn: a kept, widely deployed ASGI stack whose server
does the HTTP parsing, keep-alive, connection limits and graceful shutdown;
this module only adds the routes, the limits and the batcher
(`aac_jax.serving.batcher`). litserve was the other candidate; it brings its
own batching loop and process model, where the batching here must share
`aac-caption`'s captioner to give its captions.
Exit status: 0 after a signal, 1 start-up failed (warm-up), 2 usage error.
"""

import argparse
import asyncio
import dataclasses
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Sequence

import numpy as np

from aac_jax import caption_cli, inference
from aac_jax.data import audio_io
from aac_jax.serving import batcher as batcher_lib
from aac_jax.serving import metrics as metrics_lib
from aac_jax.serving import model as model_lib

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

# Reasons of refusals beyond `aac-caption`'s.
TOO_LARGE = 'too_large'
QUEUE_FULL = 'queue_full'
NOT_READY = 'not_ready'
SHUTTING_DOWN = 'shutting_down'
CLIENT_DISCONNECTED = 'client_disconnected'
INTERNAL = 'internal'
NO_FILES = 'no_files'
BAD_MULTIPART = 'bad_multipart'
MULTIPART = 'multipart/form-data'

DEFAULT_MAX_QUEUE = 256
# Checked between waits for a caption; a departed client's windows are dropped.
_DISCONNECT_POLL_S = 0.05


@dataclasses.dataclass(frozen=True)
class Limits:
  """What a request may hold, and how audio is cut.

  Attributes:
    max_bytes: the largest body.
    max_seconds: the longest audio (longer: 413).
    refuse_below: less audio than this (seconds) is refused as `too_short`.
    hop: samples between window starts.
    min_samples: shorter audio is padded with silence to this length.
    retry_after_s: the Retry-After of 503 answers.
    max_queue: the most windows waiting for a batch.
  """

  max_bytes: int
  max_seconds: float
  refuse_below: float
  hop: int
  min_samples: int
  retry_after_s: int
  max_queue: int


class Refusal(Exception):
  """A request answered with an error status and reason."""

  def __init__(self, status: int, reason: str, detail: str, retry: bool = False):
    super().__init__(status, reason, detail)
    self.status, self.reason, self.detail, self.retry = status, reason, detail, retry


@dataclasses.dataclass
class ServerState:
  """Shared between the routes, the warm-up thread and the signal handler."""

  ready: threading.Event = dataclasses.field(default_factory=threading.Event)
  draining: bool = False
  received: int = 0  # Requests to /caption whose handler started.
  answered: int = 0  # ... and that got a response (any status).


def decode_body(data: bytes, sample_rate: int, limits: Limits, tmp_dir: str) -> np.ndarray:
  """Decodes uploaded bytes as `aac-caption` decodes a file (same reasons).

  Args:
    data: the file's bytes.
    sample_rate: the model's rate in Hz.
    limits: the request limits.
    tmp_dir: where the bytes are written for the decoder (deleted at once).

  Returns:
    float32 `[samples]` mono at `sample_rate`.

  Raises:
    Refusal: 413 `too_long`, or 400 with the decoder's reason.
  """
  limit = audio_io.LengthLimit(limits.max_seconds)
  # A file, not memory: the decoders (soundfile, then audioread's ffmpeg) read paths.
  with tempfile.NamedTemporaryFile(dir=tmp_dir, prefix='upload-') as handle:
    handle.write(data)
    handle.flush()
    decoded = audio_io.decode_file(handle.name, sample_rate, limit)
    audio, failure = caption_cli.check_decoded(
      handle.name, decoded, sample_rate, limits.refuse_below
    )
  if failure is None:
    return audio
  failure.detail = failure.detail.replace(handle.name, 'the upload')  # No server paths.
  if failure.error == audio_io.TOO_LONG:
    detail = (
      f'{failure.detail.split(",")[0]}, over the server limit --max_seconds {limits.max_seconds:g}'
    )
    raise Refusal(413, audio_io.TOO_LONG, detail)
  raise Refusal(400, failure.error, failure.detail)


async def read_body(request, max_bytes: int) -> bytes:
  """The request body; 413 `too_large` past `max_bytes` (before reading, when declared)."""
  declared = request.headers.get('content-length', '')
  too_large = Refusal(413, TOO_LARGE, f'the body is over --max_bytes {max_bytes}')
  if declared.isdigit() and int(declared) > max_bytes:
    raise too_large
  from starlette import requests  # fastapi's request type.

  chunks, size = [], 0
  try:
    async for chunk in request.stream():
      size += len(chunk)
      if size > max_bytes:
        raise too_large
      chunks.append(chunk)
  except requests.ClientDisconnect as error:
    raise Refusal(499, CLIENT_DISCONNECTED, 'the client left before sending the body') from error
  return b''.join(chunks)


async def wait_for_captions(request, future) -> list[str]:
  """Awaits the batcher's future; cancels it (dropping queued windows) if the client leaves."""
  waiting = asyncio.wrap_future(future)
  while True:
    done, _ = await asyncio.wait({waiting}, timeout=_DISCONNECT_POLL_S)
    if done:
      return waiting.result()
    if await request.is_disconnected():
      waiting.cancel()
      raise Refusal(499, CLIENT_DISCONNECTED, 'the client closed the connection')


async def read_files(headers, data: bytes) -> list[tuple[str, bytes]]:
  """The files of a multipart/form-data body, in order: `(file name, bytes)`.

  Raises:
    Refusal: 400 `bad_multipart` (unparsable), 400 `no_files` (no file part).
  """
  from starlette import datastructures, formparsers  # fastapi's multipart parser.

  async def stream():
    yield data
    yield b''

  parser = formparsers.MultiPartParser(headers, stream())
  try:
    form = await parser.parse()
  except formparsers.MultiPartException as error:
    raise Refusal(400, BAD_MULTIPART, f'the multipart body cannot be parsed: {error}') from error
  files = [part for _, part in form.multi_items() if isinstance(part, datastructures.UploadFile)]
  if not files:
    raise Refusal(400, NO_FILES, 'the multipart body has no file (curl -F file=@clip.wav)')
  try:
    return [(part.filename or '', await part.read()) for part in files]
  finally:
    await form.close()


def caption_response(windows, captions: list[str], duration: float, rate: int) -> dict:
  """The JSON of one captioned recording (`model` is added by the caller)."""
  segments = [
    {'start': round(start / rate, 3), 'end': round(end / rate, 3), 'caption': caption}
    for (start, end, _), caption in zip(windows, captions, strict=True)
  ]
  return {
    'caption': captions[0] if len(captions) == 1 else None,
    'duration': round(duration, 3),
    'segments': segments,
  }


def decode_or_refusal(decode, data: bytes):
  """`decode(data)`, or the `Refusal` it raised (one bad file of several is reported, not raised)."""
  try:
    return decode(data)
  except Refusal as refusal:
    return refusal


@dataclasses.dataclass
class CaptionHandler:
  """Captions the audio of one `POST /caption` body: a file, or multipart files."""

  model: model_lib.ServedModel
  batcher: batcher_lib.DynamicBatcher
  limits: Limits
  metrics: metrics_lib.Metrics
  tmp_dir: str

  def decode(self, data: bytes) -> np.ndarray:
    """See `decode_body`."""
    return decode_body(data, self.model.sample_rate, self.limits, self.tmp_dir)

  def cut(self, audio: np.ndarray) -> list:
    """`(start, end, clip)` windows, as `aac-caption` cuts them."""
    limits = self.limits
    return caption_cli.cut_windows(audio, self.model.window_samples, limits.hop, limits.min_samples)

  async def captions_of(self, request, clips: list[np.ndarray]) -> list[str]:
    """The clips' captions from the batcher; 503 when it is full or closing."""
    try:
      future = self.batcher.submit(clips)
    except batcher_lib.QueueFull as error:
      raise Refusal(503, QUEUE_FULL, str(error), retry=True) from error
    except batcher_lib.Closed as error:
      raise Refusal(503, SHUTTING_DOWN, str(error), retry=True) from error
    return await wait_for_captions(request, future)

  async def one_file(self, request, data: bytes) -> dict:
    """The JSON of a body holding one audio file."""
    audio = await asyncio.to_thread(self.decode, data)
    windows = self.cut(audio)
    captions = await self.captions_of(request, [clip for _, _, clip in windows])
    rate = self.model.sample_rate
    return {
      **caption_response(windows, captions, audio.shape[0] / rate, rate),
      'model': self.model.info,
    }

  async def files(self, request, data: bytes) -> dict:
    """The JSON of a multipart body: files decoded concurrently, windows queued at once."""
    files = await read_files(request.headers, data)
    decoded = await asyncio.gather(
      *(asyncio.to_thread(decode_or_refusal, self.decode, body) for _, body in files)
    )
    windows = [self.cut(audio) if isinstance(audio, np.ndarray) else [] for audio in decoded]
    clips = [clip for cuts in windows for _, _, clip in cuts]
    captions = await self.captions_of(request, clips) if clips else []
    entries, first, rate = [], 0, self.model.sample_rate
    for (name, _), audio, cuts in zip(files, decoded, windows, strict=True):
      if isinstance(audio, Refusal):
        self.metrics.error(audio.reason)
        entries.append({'name': name, 'error': audio.reason, 'detail': audio.detail})
        continue
      mine, first = captions[first : first + len(cuts)], first + len(cuts)
      entries.append({'name': name, **caption_response(cuts, mine, audio.shape[0] / rate, rate)})
    return {'files': entries, 'model': self.model.info}


def create_app(
  model: model_lib.ServedModel,
  batcher: batcher_lib.DynamicBatcher,
  limits: Limits,
  state: ServerState,
  metrics: metrics_lib.Metrics,
  tmp_dir: str,
):
  """The FastAPI app: /caption, /healthz, /readyz, /metrics."""
  import fastapi  # The `serve` extra; imported when a server is built.
  from fastapi import responses

  app = fastapi.FastAPI(title='aac_jax captioning', docs_url=None, redoc_url=None)
  handler = CaptionHandler(model, batcher, limits, metrics, tmp_dir)

  def refuse(error: Refusal):
    metrics.error(error.reason)
    headers = {'Retry-After': str(limits.retry_after_s)} if error.retry else None
    body = {'error': error.reason, 'detail': error.detail}
    return responses.JSONResponse(body, status_code=error.status, headers=headers)

  async def caption_request(request: fastapi.Request) -> dict:
    if state.draining:
      raise Refusal(503, SHUTTING_DOWN, 'the server is shutting down', retry=True)
    if not state.ready.is_set():
      raise Refusal(503, NOT_READY, 'the model is still compiling', retry=True)
    data = await read_body(request, limits.max_bytes)
    if request.headers.get('content-type', '').startswith(MULTIPART):
      return await handler.files(request, data)
    return await handler.one_file(request, data)

  @app.post('/caption')
  async def caption(request: fastapi.Request):
    state.received += 1
    start = time.monotonic()
    try:
      response = responses.JSONResponse(await caption_request(request))
    except Refusal as error:
      response = refuse(error)
    except Exception as error:  # noqa: BLE001 - the server outlives any request.
      from absl import logging

      logging.exception('request failed')
      response = refuse(Refusal(500, INTERNAL, f'{type(error).__name__}: {error}'))
    metrics.request(response.status_code, time.monotonic() - start)
    state.answered += 1
    return response

  @app.get('/healthz')
  async def healthz():
    return {'status': 'ok'}

  @app.get('/readyz')
  async def readyz():
    ready = state.ready.is_set() and not state.draining
    status = 'ready' if ready else (SHUTTING_DOWN if state.draining else NOT_READY)
    return responses.JSONResponse({'status': status}, status_code=200 if ready else 503)

  @app.get('/metrics')
  async def metrics_text():
    return responses.Response(metrics.text(), media_type=metrics_lib.CONTENT_TYPE)

  return app


def make_parser() -> argparse.ArgumentParser:
  """The command-line flags (model, window and decoding flags as `aac-caption`'s)."""
  parser = argparse.ArgumentParser(
    prog='aac-serve',
    description='Serve captions of uploaded audio over HTTP, batching concurrent requests.',
    epilog='Exit status: 0 stopped by a signal, 1 start-up failed, 2 usage error.',
  )
  caption_cli.add_model_flags(parser.add_argument_group('model (a run or an export folder)'))
  caption_cli.add_window_flags(parser.add_argument_group('windows'))
  caption_cli.add_decode_flags(parser.add_argument_group('decoding (runs only)'))
  group = parser.add_argument_group('server')
  group.add_argument('--host', default='127.0.0.1', help='address to listen on')
  group.add_argument('--port', type=int, default=8080, help='port (0: any free one, printed)')
  group.add_argument('--max_wait_ms', type=float, default=10.0, help='batching wait')
  group.add_argument(
    '--max_queue',
    type=int,
    help='windows queued before 503 (default: 256, or one --max_seconds recording if more)',
  )
  group.add_argument('--max_bytes', type=int, default=50_000_000, help='largest request body')
  group.add_argument('--max_seconds', type=float, default=600.0, help='longest audio (413)')
  group.add_argument('--retry_after', type=int, default=1, help='Retry-After of 503s (s)')
  group.add_argument(
    '--drain_seconds', type=float, default=120.0, help='on SIGTERM, wait this long for requests'
  )
  return parser


def check_server_args(args: argparse.Namespace) -> None:
  """Raises ValueError for flags out of range (`aac-caption`'s checks, then the server's)."""
  caption_cli.check_args(args)
  small_queue = args.max_queue is not None and args.max_queue < 1
  if args.max_wait_ms < 0 or small_queue or args.max_bytes < 1:
    raise ValueError('need --max_wait_ms >= 0, --max_queue >= 1 and --max_bytes >= 1')
  if args.max_seconds <= 0 or not 0 <= args.port < 65536:
    raise ValueError('need --max_seconds > 0 and 0 <= --port < 65536')


def log(message: str) -> None:
  print(f'aac-serve: {message}', file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the server until a signal; returns the exit status (see the module docstring)."""
  parser = make_parser()
  args = parser.parse_args(argv)
  try:
    check_server_args(args)
  except ValueError as error:
    parser.print_usage(sys.stderr)
    log(f'error: {error}')
    return EXIT_USAGE
  try:
    import fastapi  # noqa: F401
    import python_multipart  # noqa: F401 - multipart uploads.
    import uvicorn  # noqa: F401
  except ImportError as error:
    log(f'error: {error.name} is missing: pip install "aac_jax[serve]"')
    return EXIT_USAGE
  caption_cli.quiet_libraries(args.verbose)
  try:
    model = model_lib.load(args)
  except (inference.ModelLoadError, ValueError) as error:
    log(f'error: cannot use model {args.workdir}: {error}')
    return EXIT_USAGE
  try:
    limits = make_limits(args, model)
  except ValueError as error:
    log(f'error: {error}')
    return EXIT_USAGE
  try:
    sock = bind(args.host, args.port)
  except OSError as error:
    log(f'error: cannot listen on {args.host}:{args.port}: {error.strerror} (pick another --port)')
    return EXIT_USAGE
  return serve(args, model, limits, sock)


def bind(host: str, port: int) -> socket.socket:
  """A listening-ready socket (port 0: the system picks one)."""
  family = socket.AF_INET6 if ':' in host else socket.AF_INET
  sock = socket.socket(family, socket.SOCK_STREAM)
  sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
  sock.bind((host, port))
  sock.listen(2048)  # Connections made before uvicorn starts wait in the backlog.
  return sock


def make_limits(args: argparse.Namespace, model: model_lib.ServedModel) -> Limits:
  """The request limits of these flags for this model.

  Raises:
    ValueError: a `--max_seconds` recording has more windows than `--max_queue`
      holds (such a request could never be queued).
  """
  hop, min_samples = caption_cli.hop_and_min_samples(args, model.window_samples, model.sample_rate)
  longest = int(args.max_seconds * model.sample_rate)
  windows = len(inference.window_bounds(longest, model.window_samples, hop, min_samples))
  max_queue = args.max_queue if args.max_queue is not None else max(DEFAULT_MAX_QUEUE, windows)
  if windows > max_queue:
    raise ValueError(
      f'a --max_seconds {args.max_seconds:g} recording is {windows} windows, more than '
      f'--max_queue {max_queue}: raise --max_queue or lower --max_seconds'
    )
  return Limits(
    args.max_bytes,
    args.max_seconds,
    args.refuse_below,
    hop,
    min_samples,
    args.retry_after,
    max_queue,
  )


def serve(
  args: argparse.Namespace, model: model_lib.ServedModel, limits: Limits, sock: socket.socket
) -> int:
  """Builds the batcher and app, compiles in the background, serves until a signal."""
  from aac_jax.serving import process

  metrics = metrics_lib.Metrics(model.batch_size)
  batcher = batcher_lib.DynamicBatcher(
    model.caption_clips,
    max_batch=model.batch_size,
    max_wait_s=args.max_wait_ms / 1000,
    max_queue=limits.max_queue,
    bucket_of=model.bucket_of,
    rows_of=lambda count: inference.batch_rows(count, model.batch_size),
    on_batch=metrics.batch,
  )
  metrics.queue_size(lambda: batcher.queued)
  state = ServerState()
  with tempfile.TemporaryDirectory(prefix='aac-serve-') as tmp_dir:
    app = create_app(model, batcher, limits, state, metrics, tmp_dir)
    status = process.run(app, sock, args.drain_seconds, state, model, batcher, log)
  log(f'stopped: answered {state.answered} of {state.received} caption requests')
  return status


def run() -> None:
  """Console script `aac-serve`."""
  sys.exit(main())


if __name__ == '__main__':
  run()
