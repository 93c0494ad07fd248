"""Starting a run as several real processes on this machine (loopback coordinator).

`start_run(module, flags, num_processes, devices_per_process, cache)` starts
`python -m <module>` once per process, each with `devices_per_process`
simulated CPU devices, joined by `--coordinator_address=127.0.0.1:<free
port> --num_processes --process_id` (gloo CPU collectives, DESIGN.md 1).
`Run.wait()` collects the exit statuses and outputs; `losses(workdir)` reads
the per-step train losses back from the TensorBoard event files at float32
precision (the log lines keep only 6 digits).
"""

import dataclasses
import os
import pathlib
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

from tensorboardX.proto import event_pb2

REPO = pathlib.Path(__file__).resolve().parents[1]


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@dataclasses.dataclass
class Run:
  """The processes of one run and their output lines (read by threads)."""

  procs: list[subprocess.Popen]
  lines: list[list[str]]
  readers: list[threading.Thread]

  def wait(self, timeout: float) -> list[int]:
    """Exit statuses, in process order; kills everything after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    try:
      codes = [p.wait(timeout=max(deadline - time.monotonic(), 1)) for p in self.procs]
    except subprocess.TimeoutExpired:
      self.kill()
      raise AssertionError(f'run did not finish in {timeout} s:\n{self.output()}') from None
    for reader in self.readers:
      reader.join()
    return codes

  def kill(self) -> None:
    for proc in self.procs:
      if proc.poll() is None:
        proc.kill()

  def signal(self, process: int, sig: int = signal.SIGTERM) -> None:
    self.procs[process].send_signal(sig)

  def output(self, process: int | None = None, last: int = 60) -> str:
    chosen = range(len(self.procs)) if process is None else [process]
    return '\n'.join(f'--- process {i}:\n' + ''.join(self.lines[i][-last:]) for i in chosen)

  def wait_for(self, process: int, pattern: str, timeout: float) -> None:
    """Waits until `pattern` appears in one process's output."""
    deadline = time.monotonic() + timeout
    while not any(re.search(pattern, line) for line in list(self.lines[process])):
      if any(p.poll() is not None for p in self.procs) or time.monotonic() > deadline:
        self.kill()
        raise AssertionError(f'no {pattern!r} in process {process}:\n{self.output()}')
      time.sleep(0.2)


def child_env(devices_per_process: int, cache: pathlib.Path) -> dict[str, str]:
  env = dict(os.environ)
  for name in ('AAC_COORDINATOR_ADDRESS', 'AAC_NUM_PROCESSES', 'AAC_PROCESS_ID'):
    env.pop(name, None)
  env.update(
    XLA_FLAGS=' '.join(  # The session's flags (tests/conftest.py), this device count.
      [f for f in env.get('XLA_FLAGS', '').split() if 'device_count' not in f]
      + [f'--xla_force_host_platform_device_count={devices_per_process}']
    ),
    JAX_PLATFORMS='cpu',
    JAX_COMPILATION_CACHE_DIR=str(cache),
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
    PYTHONPATH=os.pathsep.join([str(REPO), env.get('PYTHONPATH', '')]),
  )
  return env


def start_run(
  module: str,
  flags: list[str],
  num_processes: int,
  devices_per_process: int,
  cache: pathlib.Path,
) -> Run:
  """Starts one run of `python -m module *flags` as `num_processes` processes."""
  env = child_env(devices_per_process, cache)
  launch = []
  if num_processes > 1:
    launch = [f'--coordinator_address=127.0.0.1:{free_port()}', f'--num_processes={num_processes}']
  procs, lines, readers = [], [], []
  for i in range(num_processes):
    ident = [f'--process_id={i}'] if num_processes > 1 else []
    proc = subprocess.Popen(
      [sys.executable, '-m', module, *flags, *launch, *ident],
      cwd=REPO,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    out: list[str] = []
    reader = threading.Thread(target=lambda p=proc, o=out: o.extend(iter(p.stdout.readline, '')))
    reader.start()
    procs.append(proc)
    lines.append(out)
    readers.append(reader)
  return Run(procs, lines, readers)


def _records(path: pathlib.Path):
  """The payloads of a TFRecord file (length, crc, data, crc; crcs not checked)."""
  data = path.read_bytes()
  offset = 0
  while offset + 12 <= len(data):
    (length,) = struct.unpack('<Q', data[offset : offset + 8])
    yield data[offset + 12 : offset + 12 + length]
    offset += 12 + length + 4


def scalars(workdir: pathlib.Path, tag: str) -> dict[int, float]:
  """`{step: value}` of one scalar tag over every event file of a workdir (later files win)."""
  values = {}
  for path in sorted(workdir.glob('**/events.out.tfevents.*'), key=lambda p: p.stat().st_mtime):
    for payload in _records(path):
      event = event_pb2.Event.FromString(payload)
      for value in event.summary.value:
        if value.tag == tag:
          values[event.step] = value.simple_value
  return values


def losses(workdir: pathlib.Path) -> dict[int, float]:
  """`{step: train/loss}` (with `train.log_every=1`, each step's own loss)."""
  return scalars(workdir, 'train/loss')
