"""Sweep points: the overrides a config's `get_sweep` declares, times seeds.

A config module may define `get_sweep(hyper)` returning a list of override
dicts, built with the helpers below (passed in as `hyper`):

  def get_sweep(hyper):
    return hyper.product([
      hyper.sweep('config.optim.lr', [2e-4, 5e-4]),
      hyper.sweep('config.model.encoder_layers', [4, 6]),
    ])

`expand` turns each dict into `seeds` runs (`Point`s); a point's seed sets
both `config.seed` (parameter init, dropout, SpecAugment and SCST sampling)
and `config.dataset.seed` (training data order and crops).
"""

import dataclasses
import importlib.util
import itertools
import json
import os
import pathlib
import types
from collections.abc import Sequence
from typing import Any

from etils import epath

Override = dict[str, Any]

# The fields a point's seed sets (see the module docstring).
SEED_FIELDS = ('config.seed', 'config.dataset.seed')
SWEEP_FILE = 'sweep.json'  # Written in the sweep root: what report and plot read.


def sweep(name: str, values: Sequence[Any]) -> list[Override]:
  """One override dict per value of a single field."""
  if not name.startswith('config.'):
    raise ValueError(f'sweep field {name!r} must start with "config."')
  return [{name: value} for value in values]


def product(sweeps: Sequence[list[Override]]) -> list[Override]:
  """Every combination of the given sweeps (cartesian product)."""
  combos = []
  for parts in itertools.product(*sweeps):
    merged: Override = {}
    for part in parts:
      merged.update(part)
    combos.append(merged)
  return combos


def zipit(sweeps: Sequence[list[Override]]) -> list[Override]:
  """Pairs the i-th entries of sweeps of equal length."""
  lengths = {len(s) for s in sweeps}
  if len(lengths) > 1:
    raise ValueError(f'zipit needs sweeps of equal length, got {sorted(lengths)}')
  return [dict(kv for part in parts for kv in part.items()) for parts in zip(*sweeps, strict=True)]


def run_name(overrides: Override) -> str:
  """A short, filesystem-safe name for one sweep point."""
  parts = [f'{key.rsplit(".", 1)[-1]}={value}' for key, value in sorted(overrides.items())]
  return ','.join(parts).replace('/', '_') or 'default'


def to_flags(overrides: Override) -> list[str]:
  """Command-line flags for one sweep point."""
  return [f'--{key}={value}' for key, value in sorted(overrides.items())]


@dataclasses.dataclass(frozen=True)
class Point:
  """One run of a sweep.

  Attributes:
    group: `run_name` of the swept overrides (the seeds of a group are
      averaged in reports).
    overrides: the swept fields (`config.a.b` -> value), without the seed.
    seed: the run's seed.
    name: the run's folder name under the sweep root: `<group>,seed=<seed>`.
  """

  group: str
  overrides: Override
  seed: int
  name: str

  def flags(self) -> list[str]:
    """Override flags of this run, the seed fields included."""
    return to_flags({**self.overrides, **dict.fromkeys(SEED_FIELDS, self.seed)})


def expand(sweep_points: Sequence[Override], seeds: int) -> list[Point]:
  """Every sweep point times seeds `0 .. seeds - 1`.

  Raises:
    ValueError: `seeds < 1`, a point sets a seed field itself, or two points
      would share a folder name.
  """
  if seeds < 1:
    raise ValueError(f'--seeds must be >= 1, got {seeds}')
  points, groups = [], {}
  for overrides in sweep_points:
    clash = sorted(set(overrides) & set(SEED_FIELDS))
    if clash:
      raise ValueError(f'sweep points set {clash}: leave seeds to --seeds')
    group = run_name(overrides)
    if group in groups:
      raise ValueError(
        f'sweep points {groups[group]} and {overrides} share the folder name {group!r}: '
        'give the swept fields distinct last names or values'
      )
    groups[group] = overrides
    points += [Point(group, dict(overrides), s, f'{group},seed={s}') for s in range(seeds)]
  return points


def load_sweep(config_path: str) -> list[Override]:
  """Imports the config file (`path[:variant]`) and returns its `get_sweep(hyper)`.

  Raises:
    ValueError: the file defines no `get_sweep` or it returns no point.
  """
  path = pathlib.Path(config_path.split(':', 1)[0])
  if not path.is_file():
    raise ValueError(f'config file {path} does not exist')
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, 'get_sweep'):
    raise ValueError(f'{path} defines no get_sweep(hyper); nothing to sweep')
  hyper = types.SimpleNamespace(sweep=sweep, product=product, zipit=zipit)
  points = list(module.get_sweep(hyper))
  if not points:
    raise ValueError(f'{path}: get_sweep returned no point')
  return points


class SweepMismatch(ValueError):
  """The sweep root already records a sweep with other flags or points."""


@dataclasses.dataclass(frozen=True)
class Sweep:
  """What `run` launched and `report`/`plot` read back (`<root>/sweep.json`).

  Attributes:
    root: the folder holding one workdir per point (local, or a bucket such
      as `gs://b/sweeps/x`: an `epath.Path`, so the `//` stays).
    config: the config file argument (`path[:variant]`).
    extra_flags: flags given to every point (e.g. the data folder).
    points: the runs, in sweep order.
  """

  root: epath.Path
  config: str
  extra_flags: tuple[str, ...]
  points: tuple[Point, ...]

  def workdir(self, point: Point) -> epath.Path:
    return self.root / point.name

  def swept_fields(self) -> list[str]:
    """Fields that take more than one value across the points, in first-seen order."""
    fields: dict[str, set[str]] = {}
    for p in self.points:
      for key, value in p.overrides.items():
        fields.setdefault(key, set()).add(json.dumps(value))
    return [k for k, values in fields.items() if len(values) > 1]

  def groups(self) -> dict[str, list[Point]]:
    """Points by group, in sweep order."""
    out: dict[str, list[Point]] = {}
    for p in self.points:
      out.setdefault(p.group, []).append(p)
    return out


def _as_json(s: Sweep) -> dict[str, Any]:
  return {
    'config': s.config,
    'extra_flags': list(s.extra_flags),
    'points': [dataclasses.asdict(p) for p in s.points],
  }


def differences(recorded: Sweep, new: Sweep) -> list[str]:
  """How `new` would change what `recorded` trained (more points or seeds change nothing)."""
  old, now = _as_json(recorded), _as_json(new)
  out = []
  if old['config'] != now['config']:
    out.append(f'--config was {old["config"]}, now {now["config"]}')
  if old['extra_flags'] != now['extra_flags']:
    gone = [f for f in old['extra_flags'] if f not in now['extra_flags']]
    added = [f for f in now['extra_flags'] if f not in old['extra_flags']]
    out.append(f'--set flags: recorded only {gone or "-"}, given only {added or "-"}')
  points = {p['name']: p for p in json.loads(json.dumps(now['points']))}
  for p in old['points']:
    if p['name'] not in points:
      out.append(f'point {p["name"]} is not in the sweep any more')
    elif points[p['name']] != p:
      out.append(f'point {p["name"]} now sets {points[p["name"]]["overrides"]}')
  return out


def check_recorded(s: Sweep) -> Sweep | None:
  """The sweep `<root>/sweep.json` records (None if none), when `s` keeps to it.

  Raises:
    SweepMismatch: the root records a sweep with other flags or points
      (the message lists the differences).
  """
  path = s.root / SWEEP_FILE
  if not path.exists():
    return None
  recorded = load(s.root)
  changes = differences(recorded, s)
  if changes:
    raise SweepMismatch(
      f'{path} records another sweep: {"; ".join(changes)}. Rerun with the recorded '
      'flags to resume it, or give a new --root for the new sweep'
    )
  return recorded


def save(s: Sweep) -> None:
  """Writes `<root>/sweep.json`, unless it records this sweep already.

  A sweep that only adds points or seeds to the recorded one replaces it.

  Raises:
    SweepMismatch: see `check_recorded`.
  """
  recorded = check_recorded(s)
  if recorded is not None and len(recorded.points) == len(s.points):
    return
  path = s.root / SWEEP_FILE
  s.root.mkdir(parents=True, exist_ok=True)
  tmp = s.root / f'.{SWEEP_FILE}.tmp'
  tmp.write_text(json.dumps(_as_json(s), indent=1))
  tmp.replace(path)


def load(root: str | os.PathLike) -> Sweep:
  """Reads `<root>/sweep.json`.

  Raises:
    FileNotFoundError: no sweep was run or printed into `root`.
  """
  root = epath.Path(root)
  path = root / SWEEP_FILE
  if not path.is_file():
    raise FileNotFoundError(
      f'{path} not found: start the sweep first (tools/sweep.py run --root {root} ...)'
    )
  data = json.loads(path.read_text())
  points = tuple(Point(**p) for p in data['points'])
  return Sweep(root, data['config'], tuple(data['extra_flags']), points)
