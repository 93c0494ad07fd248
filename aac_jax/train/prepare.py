"""A run's first-run work, in one pass: `prepare(config, workdir) -> RunFiles`.

Before a stage builds anything it needs what only the data and the files of
other runs can tell. `prepare` does it in this order, each step once:

  1. the dataset: present, or built (the synthetic benchmark); the training
     split is opened once and handed to the steps that read it;
  2. the files inherited from `train.init_from` where the run has none of its
     own (`INHERITED_FILES`: the loaded parameters only make sense with
     those token ids and features);
  3. the vocabulary: the run's own, else a converted language-model
     decoder's tokenizer, else the copy beside the data, else built from
     the training captions;
  4. the encoder front end: a pretrained tagger's (from its converted
     folder), and its stored embeddings checked against the run;
  5. the feature statistics: the run's own, else measured on the training
     split;
  6. the record of what was resolved, `<workdir>/run_files.json`.

`config` is resolved in place (front end, statistics, embeddings folder), so
the `config.json` a stage saves holds the resolved values. With several
processes, process 0 prepares and the others read the record
(`prepare_run`). `aac_jax.train.trainer.create_experiment` then builds the
model, optimizer and steps from the config and the record, touching no data
source; captioning and export read the same record (`read_run_files`).
"""

import dataclasses
import json
from typing import Any

import jax
import ml_collections
from absl import logging
from etils import epath

from aac_jax import files, multihost
from aac_jax.data import feature_stats, sources
from aac_jax.data import tokenizer as tokenizer_lib
from aac_jax.models import llm_bridge, pretrained_setup

RUN_FILES_FILENAME = 'run_files.json'

# Files a run copies from its `init_from` run when it has none of its own.
INHERITED_FILES = (tokenizer_lib.VOCAB_FILENAME, feature_stats.STATS_FILENAME)


@dataclasses.dataclass(frozen=True)
class RunFiles:
  """What a run's preparation resolved (saved as `<workdir>/run_files.json`).

  Attributes:
    workdir: the run's folder.
    dataset: TFDS name of the dataset (`name` or `name/builder_config`).
    dataset_dir: the versioned folder of its files ('' when unknown: a run
      folder converted from a published captioner).
    vocab_size: tokens in the run's vocabulary (`vocab_path`).
    frontend: the resolved `config.frontend` (kind, sizes, normalisation).
    embeddings_dir: the stored tagger frames training reads ('' = audio).
    inherited: the files copied from `train.init_from`.
  """

  workdir: str
  dataset: str
  dataset_dir: str
  vocab_size: int
  frontend: dict[str, Any]
  embeddings_dir: str = ''
  inherited: tuple[str, ...] = ()

  @property
  def vocab_path(self) -> epath.Path:
    """The run's vocabulary file."""
    return epath.Path(self.workdir) / tokenizer_lib.VOCAB_FILENAME

  def load_tokenizer(self):
    """The run's tokenizer (its `vocab.txt`: words, or a language model's; `load_vocab`)."""
    return tokenizer_lib.load_vocab(self.vocab_path)

  def apply_to(self, config: ml_collections.ConfigDict) -> None:
    """Writes the resolved front end and embeddings folder into `config` (in place)."""
    with config.unlocked():
      config.frontend.update(self.frontend)
      config.dataset.embeddings_dir = self.embeddings_dir

  def to_json(self) -> str:
    """The record without its folder (a run folder may be moved or copied)."""
    record = dataclasses.asdict(self)
    del record['workdir']
    return json.dumps(record, indent=2, sort_keys=True) + '\n'


def read_run_files(workdir: str | epath.Path, config: ml_collections.ConfigDict) -> RunFiles:
  """The record of a prepared run folder.

  Runs prepared before the record existed, and run folders converted from a
  published captioner, have none: their record is read from `config` (their
  saved `config.json`) and `vocab.txt`.

  Args:
    workdir: the run's folder.
    config: the run's resolved config (its `config.json`).

  Returns:
    The run's `RunFiles`.
  """
  path = epath.Path(workdir)
  record_path = path / RUN_FILES_FILENAME
  if record_path.exists():
    record = json.loads(record_path.read_text())
    record['inherited'] = tuple(record.get('inherited', ()))
    return RunFiles(workdir=str(path), **record)
  vocab = tokenizer_lib.load_vocab(path / tokenizer_lib.VOCAB_FILENAME)
  return RunFiles(
    workdir=str(path),
    dataset=sources.dataset_name(config.dataset),
    dataset_dir='',
    vocab_size=vocab.vocab_size,
    frontend=config.frontend.to_dict(),
    embeddings_dir=str(config.dataset.get('embeddings_dir', '')),
  )


def inherit_from_init_run(config: ml_collections.ConfigDict, workdir: epath.Path) -> list[str]:
  """Copies `INHERITED_FILES` from `config.train.init_from` where `workdir` lacks them.

  Returns:
    The names of the files copied.
  """
  if not config.train.init_from:
    return []
  copied = []
  for name in INHERITED_FILES:
    own, other = workdir / name, epath.Path(config.train.init_from) / name
    if not own.exists() and other.exists():
      files.write_text(own, other.read_text())
      copied.append(name)
  return copied


def prepare(config: ml_collections.ConfigDict, workdir: str | epath.Path) -> RunFiles:
  """Does a run's first-run work (see the module docstring) and saves its record.

  Args:
    config: the validated config; resolved in place.
    workdir: the run's folder (created).

  Returns:
    The run's `RunFiles`.

  Raises:
    aac_jax.data.registry.DatasetNotBuiltError: a real dataset is not built
      (the message names the build command).
    ValueError: the data do not fit the config (sample rate, stored
      embeddings, feature statistics).
    aac_jax.files.RunFileError: a run file could not be written.
  """
  path = epath.Path(workdir)
  path.mkdir(parents=True, exist_ok=True)
  dataset = config.dataset
  train_source = sources.open_source(dataset, dataset.train_split)
  name, folder = sources.dataset_name(dataset), sources.source_dir(train_source)
  inherited = inherit_from_init_run(config, path)
  llm_bridge.save_llm_vocabulary(config, path / tokenizer_lib.VOCAB_FILENAME)
  vocab_size = tokenizer_lib.load_or_build(dataset, train_source, str(path)).vocab_size
  pretrained_setup.resolve_encoder_frontend(config)  # Before the features are measured.
  feature_stats.resolve(config, path, train_source)
  run_files = RunFiles(
    workdir=str(path),
    dataset=name,
    dataset_dir=folder,
    vocab_size=vocab_size,
    frontend=config.frontend.to_dict(),
    embeddings_dir=str(dataset.embeddings_dir),
    inherited=tuple(inherited),
  )
  files.write_text(path / RUN_FILES_FILENAME, run_files.to_json())
  if inherited:
    logging.info('From %s: %s', config.train.init_from, ', '.join(inherited))
  return run_files


def prepare_run(config: ml_collections.ConfigDict, workdir: str | epath.Path) -> RunFiles:
  """`prepare` on process 0; the other processes then read its record.

  Every process calls this at the same point (`multihost.process_0_first`);
  `config` is resolved in place on each.
  """

  def prepare_or_read() -> RunFiles:
    if jax.process_index() == 0:
      return prepare(config, workdir)
    run_files = read_run_files(workdir, config)
    run_files.apply_to(config)
    return run_files

  run_files = multihost.process_0_first('prepare the dataset and first-run files', prepare_or_read)
  llm_bridge.resolve_prompt(config, run_files.load_tokenizer())  # Ids of the run's vocabulary.
  return run_files


def prepare_dataset(dataset_cfg: ml_collections.ConfigDict) -> str:
  """Step 1 alone (the sweep runner, before its points start): the dataset's folder."""
  return sources.source_dir(sources.open_source(dataset_cfg, dataset_cfg.train_split))
