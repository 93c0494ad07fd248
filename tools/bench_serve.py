"""Throughput and latency of `aac-serve` under concurrent clients, beside offline captioning.

  python tools/bench_serve.py --workdir workdirs/demo/ce
  python tools/bench_serve.py --workdir RUN --clips 32 --concurrency 1,4,16 --requests 64

Writes `--clips` different audio files (noise bursts and tones, 1 s up to
the window), starts the server on a loopback port (`--port 0`), and for
each concurrency sends `--requests` requests from that many client threads
(each level stops after `--level_seconds` too), then stops the server with
SIGTERM. Prints requests/s, p50/p95/p99 latency and the mean batch size
(from `/metrics`) per level, and the clips/s of offline batched captioning
of the same decoded files with the same model and batch size (the
`aac-caption` path, timed after a first pass compiled it), with each
level's ratio to concurrency 1, the server's CPU time per request (all its
threads, from /proc), the cores it kept busy (CPU seconds / wall seconds),
its CPU time over its busiest thread's (how many cores its work is spread
over) and the load average before and after. Then the model alone: per
length bucket, the time of one call of 1, half `--batch_size` and
`--batch_size` rows of the same clips, the CPU time per clip, which say what
batching can save on this machine, and the CPU time over the busiest
thread's. Nothing leaves the machine.
"""

import argparse
import concurrent.futures
import json
import os
import pathlib
import signal
import sys
import tempfile
import threading
import time

import numpy as np
import soundfile as sf

from aac_jax import caption_cli, export, inference
from aac_jax.serving import client
from aac_jax.serving import model as model_lib
from aac_jax.serving import server as server_lib


def make_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', required=True, help='run folder or export folder')
  parser.add_argument('--clips', type=int, default=64, help='different audio files')
  parser.add_argument('--concurrency', default='1,4,16,64', help='client threads per level')
  parser.add_argument('--requests', type=int, default=128, help='requests per level')
  parser.add_argument('--level_seconds', type=float, default=120, help='time limit per level')
  parser.add_argument('--batch_size', type=int, default=16, help='server and offline batch')
  parser.add_argument('--max_wait_ms', type=float, default=20, help="the server's batching wait")
  parser.add_argument('--seed', type=int, default=0)
  return parser


def write_clips(folder: pathlib.Path, count: int, window_s: float, seed: int) -> list[bytes]:
  """`count` 16 kHz WAV files of 1 s to the window: noise bursts plus a tone."""
  rng = np.random.default_rng(seed)
  rate, out = 16000, []
  for i in range(count):
    n = int(rng.uniform(1.0, window_s) * rate)
    t = np.arange(n) / rate
    x = 0.2 * np.sin(2 * np.pi * rng.uniform(200, 2000) * t) * (rng.random() < 0.7)
    x = x + rng.uniform(0.01, 0.3) * rng.standard_normal(n) * (np.sin(t * rng.uniform(1, 8)) > 0)
    path = folder / f'clip{i:03d}.wav'
    sf.write(path, x.astype(np.float32), rate, subtype='PCM_16')
    out.append(path.read_bytes())
  return out


def process_cpu_seconds(pid: int, task: str = '') -> float:
  """User plus system CPU seconds of process `pid`, all threads, or of its thread `task`
  (Linux /proc; nan elsewhere)."""
  path = f'/proc/{pid}/task/{task}/stat' if task else f'/proc/{pid}/stat'
  try:
    fields = pathlib.Path(path).read_text().rsplit(')', 1)[1].split()
  except OSError:
    return float('nan')
  return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def thread_cpu_seconds(pid: int) -> dict[str, float]:
  """CPU seconds of each thread of process `pid`, by thread id (empty where no /proc)."""
  tasks = pathlib.Path(f'/proc/{pid}/task')
  names = [t.name for t in tasks.iterdir()] if tasks.is_dir() else []
  return {name: process_cpu_seconds(pid, name) for name in names}


def parallel_threads(before: dict[str, float], after: dict[str, float]) -> float:
  """The CPU time between two `thread_cpu_seconds` over the busiest thread's: 1.0 when one
  thread did the work, 2.0 when two did equal shares (how many cores the work can use)."""
  spent = [after[k] - before.get(k, 0.0) for k in after]
  return sum(spent) / max(max(spent, default=0.0), 1e-9)


def run_level(url: str, bodies: list[bytes], concurrency: int, count: int, limit_s: float):
  """Sends `count` requests from `concurrency` threads; returns `(latencies, statuses, wall)`."""
  lock, latencies, statuses = threading.Lock(), [], []
  next_index = iter(range(count))
  deadline = time.monotonic() + limit_s

  def worker() -> None:
    while time.monotonic() < deadline:
      with lock:
        i = next(next_index, None)
      if i is None:
        return
      start = time.monotonic()
      status = client.post_caption(url, bodies[i % len(bodies)], timeout=limit_s)[0]
      with lock:
        latencies.append(time.monotonic() - start)
        statuses.append(status)

  start = time.monotonic()
  with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
    for future in [pool.submit(worker) for _ in range(concurrency)]:
      future.result()
  return np.array(latencies), statuses, time.monotonic() - start


def bench_server(args, bodies: list[bytes], folder: pathlib.Path) -> list[dict]:
  """One row per concurrency level."""
  flags = ['--workdir', args.workdir, '--port', '0', '--batch_size', str(args.batch_size)]
  flags += ['--max_wait_ms', str(args.max_wait_ms), '--max_queue', '100000']
  proc, url = client.start_server(flags, folder / 'serve.log')
  rows = []
  try:
    for level in [int(c) for c in args.concurrency.split(',')]:
      batches = client.metric(url, 'aac_serve_batch_size_count')
      windows = client.metric(url, 'aac_serve_batch_size_sum')
      cpu, threads = process_cpu_seconds(proc.pid), thread_cpu_seconds(proc.pid)
      lat, statuses, wall = run_level(url, bodies, level, args.requests, args.level_seconds)
      cpu = process_cpu_seconds(proc.pid) - cpu
      threads = parallel_threads(threads, thread_cpu_seconds(proc.pid))
      ok = statuses.count(200)
      batches = client.metric(url, 'aac_serve_batch_size_count') - batches
      windows = client.metric(url, 'aac_serve_batch_size_sum') - windows
      p50, p95, p99 = np.percentile(lat, [50, 95, 99]) * 1000 if lat.size else (0, 0, 0)
      rows.append(
        dict(
          level=level,
          sent=len(statuses),
          ok=ok,
          rate=ok / wall,
          p50=p50,
          p95=p95,
          p99=p99,
          batch=windows / max(batches, 1),
          cpu_ms=cpu * 1000 / max(len(statuses), 1),
          cores=cpu / wall,
          threads=threads,
        )
      )
      print(f'  concurrency {level}: {ok}/{len(statuses)} ok in {wall:.1f} s', file=sys.stderr)
  finally:
    os.killpg(proc.pid, signal.SIGTERM)
    status = proc.wait(timeout=300)
    print(f'  server exited with {status} after SIGTERM', file=sys.stderr)
  return rows


def bench_offline(args, folder: pathlib.Path) -> tuple[float, list[dict]]:
  """Clips/s of captioning the decoded files in length-sorted batches (after a compiling pass),
  and the model-call rows of `bench_model_calls` on the same clips."""
  ns = server_lib.make_parser().parse_args(
    ['--workdir', args.workdir, '--batch_size', str(args.batch_size)]
  )
  model = model_lib.load(ns)
  files = sorted(str(p) for p in folder.glob('clip*.wav'))
  clips = [a for _, a, _ in caption_cli.read_files(files, model.sample_rate, 0.01, 2)]
  clips = sorted((c[: model.window_samples] for c in clips), key=len)

  def caption_all() -> None:
    for first in range(0, len(clips), model.batch_size):
      model.caption_clips(clips[first : first + model.batch_size])

  caption_all()
  start = time.monotonic()
  caption_all()
  return len(clips) / (time.monotonic() - start), bench_model_calls(model, clips)


def bench_model_calls(model: model_lib.ServedModel, clips: list, seconds: float = 2.0) -> list:
  """Per length bucket, one call of 1, `batch_size / 2` and `batch_size` rows: wall and CPU time.

  Args:
    model: the served model (its shapes compile on first use).
    clips: decoded clips; each bucket's calls use the clips of that bucket.
    seconds: each shape is called repeatedly for about this long.

  Returns:
    One dict per (length, rows): `seconds`, `rows`, `call_ms`, `cpu_ms` (per clip),
    `threads` (`parallel_threads` over the calls).
  """
  out = []
  for samples in model.lengths:
    pool = [c for c in clips if model.bucket_of(c) == samples] or clips
    for rows in sorted({1, max(model.batch_size // 2, 1), model.batch_size}):
      batch = [pool[i % len(pool)] for i in range(rows)]
      model.caption_clips(batch)  # Compiles it.
      calls, wall, cpu = 0, time.perf_counter(), time.process_time()
      threads = thread_cpu_seconds(os.getpid())
      while calls < 3 or time.perf_counter() - wall < seconds:
        model.caption_clips(batch)
        calls += 1
      wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
      per_call = dict(call_ms=wall * 1000 / calls, cpu_ms=cpu * 1000 / calls / rows)
      per_call['threads'] = parallel_threads(threads, thread_cpu_seconds(os.getpid()))
      out.append(dict(seconds=samples / model.sample_rate, rows=rows, **per_call))
  return out


def print_table(rows: list[dict], offline: float, args, loads: list[float]) -> None:
  base = rows[0]['rate'] or 1.0
  print(
    f'\nbench_serve: {args.workdir}, batch {args.batch_size}, wait {args.max_wait_ms:g} ms; '
    f'load average (1 min) {loads[0]:.1f} before, {loads[1]:.1f} after, {os.cpu_count()} CPUs'
  )
  print(
    '| mode | concurrency | ok / sent | req/s | vs c=1 | p50 ms | p95 ms | p99 ms | mean batch '
    '| server CPU ms/req | server cores busy | CPU / busiest thread |'
  )
  print('|---|---|---|---|---|---|---|---|---|---|---|---|')
  for r in rows:
    print(
      f'| server | {r["level"]} | {r["ok"]}/{r["sent"]} | {r["rate"]:.2f} | '
      f'{r["rate"] / base:.1f}x | {r["p50"]:.0f} | {r["p95"]:.0f} | {r["p99"]:.0f} | '
      f'{r["batch"]:.1f} | {r["cpu_ms"]:.1f} | {r["cores"]:.2f} | {r["threads"]:.2f} |'
    )
  print(
    f'| offline batched | - | {args.clips} clips | {offline:.2f} | {offline / base:.1f}x '
    f'| - | - | - | {args.batch_size} | - | - | - |'
  )


def print_calls(calls: list[dict]) -> None:
  """The model-call table: what a bigger batch saves per clip."""
  print(
    '\n| length s | rows | ms per call | ms per clip | CPU ms per clip | clips/s '
    '| CPU / busiest thread |'
  )
  print('|---|---|---|---|---|---|---|')
  for c in calls:
    per_clip = c['call_ms'] / c['rows']
    print(
      f'| {c["seconds"]:g} | {c["rows"]} | {c["call_ms"]:.1f} | {per_clip:.1f} | '
      f'{c["cpu_ms"]:.1f} | {1000 / per_clip:.0f} | {c["threads"]:.2f} |'
    )


def window_seconds(workdir: str) -> float:
  """The model's window: the export's length, or the run's training clip length."""
  if model_lib.is_export(workdir):
    path = pathlib.Path(workdir) / export.METADATA_FILENAME
    return float(json.loads(path.read_text())['max_seconds'])
  return float(
    inference.load_run_config(inference.resolve_run(workdir)[0]).dataset.max_audio_seconds
  )


def main(argv=None) -> int:
  args = make_parser().parse_args(argv)
  caption_cli.quiet_libraries(verbose=False)
  with tempfile.TemporaryDirectory(prefix='bench-serve-') as tmp:
    folder = pathlib.Path(tmp)
    bodies = write_clips(folder, args.clips, window_seconds(args.workdir), args.seed)
    loads = [os.getloadavg()[0]]
    rows = bench_server(args, bodies, folder)
    offline, calls = bench_offline(args, folder)
    loads.append(os.getloadavg()[0])
  print_table(rows, offline, args, loads)
  print_calls(calls)
  return 0


if __name__ == '__main__':
  sys.exit(main())
