"""Ablation sweeps declared next to the config they vary.

A config module may define `get_sweep(hyper)` returning a list of override
dicts, built with the helpers below (passed in as `hyper`):

  def get_sweep(hyper):
    return hyper.product([
      hyper.sweep('config.optim.lr', [2e-4, 5e-4]),
      hyper.sweep('config.model.encoder_layers', [4, 6]),
    ])

`tools/sweep.py` turns each dict into one training command line.
"""

import itertools
from collections.abc import Sequence
from typing import Any

Override = dict[str, Any]


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
