"""Weighted dataset mixtures with a task token per source (CoNeTTE style).

`config.dataset.mixture` lists `(dataset, split, weight, task)` entries, e.g.

  (('wavcaps_aac', 'train', 0.6, 'wavcaps'),
   ('audiocaps_aac', 'train', 0.2, 'audiocaps'),
   ('clotho_aac', 'development', 0.15, 'clotho'),
   ('macs_aac', 'train', 0.05, 'macs'))

`dataset` is a TFDS name, optionally with its builder config
(`custom_aac/birds`); every entry shares `config.dataset`'s `data_dir` and
`sample_rate`. Training reads the entries through Grain's weighted mixing
(`grain.MapDataset.mix`: global position `g` maps to one entry and an index
in its own shuffled, repeated stream, by arithmetic), so the mixture keeps
the single dataset's guarantees: one global order for every topology, and
resume from one number (`aac_jax.data.global_order`). A task `t` is the
vocabulary token `<bos_t>` (CoNeTTE's name), fed to the decoder at position
0 instead of BOS for that source's examples (batch key `task_tokens`); ''
= plain BOS. A task holding `{source}` (`'wavcaps_{source}'`) gives each
record the task named by its `source` feature, lower-cased (CoNeTTE's
`wavcaps_audioset_sl`, ...), for datasets whose records name one
(`registry.record_sources`). Evaluation scores each source with evaluation splits, with
its task token (`eval_sources`); `config.train.best_source` names the one
whose scores pick the best checkpoint (`best_source`, default `cfg.name`'s).
"""

import dataclasses
import re
import sys
from collections.abc import Sequence
from typing import NamedTuple

import grain
import ml_collections
import numpy as np

from aac_jax.data import registry

_TASK_NAME = re.compile(r'[a-z0-9_]*(\{source\}[a-z0-9_]*)?')
# In a task: the record's `source` feature, lower-cased (one task per source).
SOURCE_FIELD = '{source}'


class MixtureError(ValueError):
  """`config.dataset.mixture` is malformed (the message names the entry and the fix)."""


class Entry(NamedTuple):
  """One source of a mixture."""

  dataset: str
  split: str
  weight: float
  task: str


def task_token(task: str) -> str:
  """The vocabulary token of a task (`'clotho'` -> `'<bos_clotho>'`)."""
  return f'<bos_{task}>'


def _parse_entry(index: int, raw) -> Entry:
  form = "(dataset, split, weight, task), e.g. ('clotho_aac', 'development', 0.5, 'clotho')"
  if not isinstance(raw, (tuple, list)) or len(raw) != 4:
    raise MixtureError(f'dataset.mixture[{index}] = {raw!r}: each entry is {form}')
  dataset, split, weight, task = raw
  if not (isinstance(dataset, str) and dataset.strip('/') and isinstance(split, str) and split):
    raise MixtureError(f'dataset.mixture[{index}]: dataset and split must be names ({form})')
  if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
    raise MixtureError(f'dataset.mixture[{index}]: weight {weight!r} must be a number > 0')
  if not isinstance(task, str) or (task and not _TASK_NAME.fullmatch(task)):
    raise MixtureError(
      f'dataset.mixture[{index}]: task {task!r} must be lower-case letters, digits and _, '
      f"with at most one {SOURCE_FIELD} ('' = no task token)"
    )
  name = dataset.partition('/')[0]
  if SOURCE_FIELD in task and not registry.record_sources(name):
    raise MixtureError(
      f'dataset.mixture[{index}]: task {task!r}: {name} records name no source; '
      f'{SOURCE_FIELD} is for datasets that do ({_with_sources()})'
    )
  return Entry(dataset, split, float(weight), task)


def _with_sources() -> str:
  return ', '.join(n for n in registry.BUILDER_MODULES if registry.record_sources(n))


def parse(cfg: ml_collections.ConfigDict) -> list[Entry]:
  """The entries of `cfg.mixture` (empty: no mixture), checked.

  Raises:
    MixtureError: a malformed entry, or one (dataset, split) listed twice.
  """
  entries = [_parse_entry(i, raw) for i, raw in enumerate(cfg.mixture or ())]
  seen = {}
  for i, entry in enumerate(entries):
    key = (entry.dataset, entry.split)
    if key in seen:
      raise MixtureError(f'dataset.mixture[{i}] repeats entry {seen[key]} ({key}): merge them')
    seen[key] = i
  return entries


def weights(entries: list[Entry]) -> list[float]:
  """The entries' weights normalised to sum to 1."""
  total = sum(entry.weight for entry in entries)
  return [entry.weight / total for entry in entries]


def source_tasks(entry: Entry) -> dict[str, str]:
  """`{record source: task}` of an entry whose task holds `SOURCE_FIELD`, else `{}`.

  `('wavcaps_aac', 'train', w, 'wavcaps_{source}')` -> `{'AudioSet_SL':
  'wavcaps_audioset_sl', 'BBC_Sound_Effects': 'wavcaps_bbc_sound_effects', ...}`.
  """
  if SOURCE_FIELD not in entry.task:
    return {}
  names = registry.record_sources(entry.dataset.partition('/')[0])
  return {name: entry.task.replace(SOURCE_FIELD, name.lower()) for name in names}


def tasks(entries: list[Entry]) -> list[str]:
  """The distinct non-empty tasks, in entry order (an entry's per-source ones in source order)."""
  found = []
  for entry in entries:
    found += list(source_tasks(entry).values()) or [entry.task]
  return list(dict.fromkeys(task for task in found if task))


class EvalSource(NamedTuple):
  """A source a run evaluates, decoded with its own task token.

  Attributes:
    name: the source's name in scalars (`<split>/<name>/<metric>`) and
      prediction files: its task, else its dataset's name.
    dataset: `config.dataset` reading it; its `validation_split` and
      `test_split` are the source's own.
    task: the task whose token starts its captions ('' = plain BOS).
  """

  name: str
  dataset: ml_collections.ConfigDict
  task: str


def _source_dataset(cfg: ml_collections.ConfigDict, entry: Entry | None):
  """`config.dataset` reading `entry`'s evaluation splits, None where it has none."""
  name = entry.dataset.partition('/')[0] if entry else cfg.name
  if name == cfg.name:
    return cfg  # The run's own dataset: its configured splits.
  if name not in registry.EVAL_SPLITS:
    return None
  out = entry_config(cfg, entry)
  with out.unlocked():
    out.validation_split, out.test_split = registry.EVAL_SPLITS[name]
  return out


def eval_sources(cfg: ml_collections.ConfigDict) -> list[EvalSource]:
  """The sources a run evaluates, `cfg.name`'s first.

  Without a mixture: `cfg.name` alone. With one: `cfg.name` (with the task of
  the first entry reading it, else '') and every other entry whose dataset
  has evaluation splits (`registry.EVAL_SPLITS`), each with its task; an
  entry repeating a source's (dataset, task) adds nothing, and an entry
  with one task per record source is not evaluated (`wavcaps_aac` has no
  evaluation splits).

  Raises:
    MixtureError: two evaluated sources would share a name.
  """
  entries = [e for e in parse(cfg) if SOURCE_FIELD not in e.task]  # Per-source: not evaluated.
  own = next((e for e in entries if e.dataset.partition('/')[0] == cfg.name), None)
  candidates = [own] + [e for e in entries if e is not own]
  found: dict[str, EvalSource] = {}
  for entry in candidates:
    dataset = _source_dataset(cfg, entry)
    if dataset is None:
      continue
    task = entry.task if entry else ''
    source = EvalSource(task or dataset.name, dataset, task)
    same = found.get(source.name)
    if same is None:
      found[source.name] = source
    elif same.dataset.name != dataset.name:
      raise MixtureError(
        f'dataset.mixture: {same.dataset.name} and {dataset.name} are both evaluated as '
        f'{source.name!r}: give them different tasks'
      )
  return list(found.values())


def best_source(cfg: ml_collections.ConfigDict, name: str = '') -> EvalSource:
  """The evaluated source whose validation scores pick the best checkpoint.

  Args:
    cfg: `config.dataset`.
    name: `config.train.best_source`; '' = `cfg.name`'s source.

  Raises:
    MixtureError: `name` is not an evaluated source.
  """
  evaluated = eval_sources(cfg)
  if not name:
    return evaluated[0]
  for source in evaluated:
    if source.name == name:
      return source
  raise MixtureError(
    f'train.best_source={name!r} is not an evaluated source; choose one of '
    f"{[s.name for s in evaluated]} ('' = {evaluated[0].name})"
  )


def entry_config(cfg: ml_collections.ConfigDict, entry: Entry) -> ml_collections.ConfigDict:
  """`cfg` (`config.dataset`) reading `entry`'s dataset, its train split `entry.split`."""
  name, _, builder_config = entry.dataset.partition('/')
  out = cfg.copy_and_resolve_references()
  with out.unlocked():
    out.name, out.builder_config, out.train_split, out.mixture = (
      name,
      builder_config,
      entry.split,
      (),
    )
  return out


@dataclasses.dataclass(frozen=True)
class _Tag(grain.transforms.Map):
  """`k` -> `(entry, k)`: the k-th element an entry gives the mixture."""

  entry: int

  def map(self, k: int) -> tuple[int, int]:
    return self.entry, int(k)


@dataclasses.dataclass(frozen=True)
class _InEntryOrder(grain.transforms.Map):
  """`(entry, k)` -> `(entry, record index)`: the k-th record of the entry's own order."""

  orders: tuple[grain.MapDataset, ...]

  def map(self, selected: tuple[int, int]) -> tuple[int, int]:
    entry, k = selected
    return entry, int(self.orders[entry][k])


def selection(entry_weights: Sequence[float]) -> grain.MapDataset:
  """Which entry gives each global position: element `g` is `(entry, k)`.

  `grain.MapDataset.mix` interleaves the entries in proportion to their
  weights by arithmetic on `g` (no state, no randomness): element `g` is
  the k-th element entry `entry` contributes.
  """
  parents = [grain.MapDataset.range(sys.maxsize).map(_Tag(i)) for i in range(len(entry_weights))]
  return grain.MapDataset.mix(parents, list(entry_weights))


def positions(
  lengths: Sequence[int], entry_weights: Sequence[float], seed: int
) -> grain.MapDataset:
  """The mixture's infinite order: element `g` is `(entry, record index)`.

  Entry `i`'s records are shuffled with a seed of its own (from `seed` and
  `i`), a new order per pass, and repeated; `selection` picks the entry of
  each position, so any process finds element `g` alone, without reading
  records.

  Args:
    lengths: records per entry.
    entry_weights: the entries' weights (`weights`).
    seed: the run's train order seed.
  """
  orders = []
  for i, length in enumerate(lengths):
    entry_seed = int(np.random.SeedSequence([seed, i]).generate_state(1)[0])
    orders.append(grain.MapDataset.range(length).seed(entry_seed).shuffle().repeat())
  return selection(entry_weights).map(_InEntryOrder(tuple(orders)))


def task_ids(entries: list[Entry], tokens: list[str]) -> list[int | dict[str, int]]:
  """Each entry's first decoder token id: its task token, or -1 for plain BOS.

  An entry with one task per record source (`source_tasks`) has
  `{record source: id}` instead (see `record_task_id`).

  Raises:
    MixtureError: a task token is not in the vocabulary.
  """
  ids = {token: i for i, token in enumerate(tokens)}
  missing = [task_token(t) for t in tasks(entries) if task_token(t) not in ids]
  if missing:
    raise MixtureError(
      f'the vocabulary lacks the task tokens {missing}: build it with the mixture '
      '(Tokenizer.build(captions, min_count, extra_tokens=[...]))'
    )
  out = []
  for entry in entries:
    per_source = source_tasks(entry)
    if per_source:
      out.append({name: ids[task_token(task)] for name, task in per_source.items()})
    else:
      out.append(ids[task_token(entry.task)] if entry.task else -1)
  return out


def record_task_id(entry_ids: int | dict[str, int], record: dict) -> int:
  """The first decoder token id of `record`, from its entry's `task_ids` element.

  Raises:
    MixtureError: a per-source entry's record names a source it does not know.
  """
  if not isinstance(entry_ids, dict):
    return entry_ids
  source = record['source']
  source = source.decode('utf-8') if isinstance(source, bytes) else str(source)
  if source not in entry_ids:
    raise MixtureError(
      f'a record of source {source!r} has no task token (known: {sorted(entry_ids)}); '
      'rebuild the dataset with this aac_jax'
    )
  return entry_ids[source]
