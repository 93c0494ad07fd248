"""Runs the server's app under uvicorn: warm-up, then serving until a signal.

The batch shapes compile in a background thread while the port already
answers `/healthz` (and 503 `not_ready` on `/caption`); `/readyz` turns 200
when they are done. On SIGTERM or SIGINT, `/readyz` turns 503, uvicorn stops
accepting connections and waits (up to `--drain_seconds`) for the requests
it has received to be answered, then the batcher stops and the process exits
0. uvicorn itself re-raises the signal after its graceful shutdown (so the
process would end with -15); `DrainingServer` keeps the shutdown and drops
the re-raise.
"""

import contextlib
import signal
import socket
import threading
import time
from collections.abc import Callable

import uvicorn

EXIT_OK = 0
EXIT_FAILED = 1


class DrainingServer(uvicorn.Server):
  """uvicorn's server whose SIGTERM/SIGINT drain ends in a normal return."""

  def __init__(self, config: uvicorn.Config, on_signal: Callable[[], None]):
    super().__init__(config)
    self._on_signal = on_signal

  @contextlib.contextmanager
  def capture_signals(self):
    """Installs the handlers for the server's lifetime (main thread only), without re-raising."""
    if threading.current_thread() is not threading.main_thread():
      yield
      return
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, self._signalled) for sig in signals}
    try:
      yield
    finally:
      for sig, handler in previous.items():
        signal.signal(sig, handler)

  def _signalled(self, sig, frame) -> None:
    self._on_signal()
    self.handle_exit(sig, frame)  # A second SIGINT forces the exit, as in uvicorn.


def run(app, sock: socket.socket, drain_seconds: float, state, model, batcher, log) -> int:
  """Serves `app` on `sock` until a signal (or a failed warm-up).

  Args:
    app: the ASGI app.
    sock: a bound, listening socket.
    drain_seconds: how long a shutdown waits for requests in flight.
    state: the `ServerState` (its `ready` and `draining` are set here).
    model: the `ServedModel` to warm up.
    batcher: the `DynamicBatcher`, closed after the last request.
    log: prints one line.

  Returns:
    0 after a signal, 1 when the warm-up failed.
  """
  config = uvicorn.Config(
    app,
    log_level='warning',
    access_log=False,
    lifespan='off',
    timeout_graceful_shutdown=drain_seconds,
  )
  server = DrainingServer(config, on_signal=lambda: setattr(state, 'draining', True))
  failed = []

  def warm_up() -> None:
    start = time.monotonic()
    try:
      shapes = model.warm_up()
    except Exception as error:  # noqa: BLE001 - reported, then the server stops.
      failed.append(error)
      log(f'error: compiling the model failed: {type(error).__name__}: {error}')
      server.should_exit = True
      return
    state.ready.set()
    log(
      f'ready: {len(shapes)} batch shapes (rows x samples: '
      f'{", ".join(f"{r}x{n}" for r, n in shapes)}) compiled in {time.monotonic() - start:.1f} s'
    )

  threading.Thread(target=warm_up, name='aac-warm-up', daemon=True).start()
  host, port = sock.getsockname()[:2]
  info = model.info
  log(
    f'model {info.get("export") or info["workdir"]} step {info["step"]}, listening on '
    f'http://{host}:{port} (compiling)'
  )
  server.run(sockets=[sock])
  batcher.close()
  return EXIT_FAILED if failed else EXIT_OK
