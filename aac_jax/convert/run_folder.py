"""Writes converted parameters as an aac_jax run folder (what training writes, at step 0).

The folder holds `config.json`, `vocab.txt` and `checkpoints/0/` (orbax,
the parameters only), so `aac-caption --workdir`, `tools/export.py`,
`inference.load_model` and `--config.train.init_from` read it like a trained
run.
"""

import pathlib
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from aac_jax import inference, models
from aac_jax.data import tokenizer as tokenizer_lib
from aac_jax.models import pretrained_setup
from aac_jax.train import checkpointing, trainer


def _paths(tree: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
  if hasattr(tree, 'items'):
    out = {}
    for name, value in tree.items():
      out.update(_paths(value, prefix + (name,)))
    return out
  return {prefix: tree}


def check_params(params: Any, abstract: Any) -> None:
  """Refuses params whose leaves or shapes differ from the model's.

  Raises:
    ValueError: naming the first missing, unexpected or misshapen leaf.
  """
  ours, wanted = _paths(params), _paths(abstract)
  missing = sorted(set(wanted) - set(ours))
  extra = sorted(set(ours) - set(wanted))
  if missing or extra:
    first = f'missing {"/".join(missing[0])}' if missing else f'unexpected {"/".join(extra[0])}'
    raise ValueError(
      f'converted parameters do not fit the model: {first} '
      f'({len(missing)} missing, {len(extra)} unexpected)'
    )
  for path, leaf in wanted.items():
    if tuple(np.shape(ours[path])) != tuple(leaf.shape):
      raise ValueError(
        f'converted parameter {"/".join(path)} has shape {np.shape(ours[path])}, '
        f'the model needs {tuple(leaf.shape)}'
      )


def write_run_folder(
  output_dir: str | pathlib.Path,
  config: ml_collections.ConfigDict,
  tokens: list[str],
  params: Any,
) -> pathlib.Path:
  """Writes `config.json`, `vocab.txt` and the parameters as checkpoint step 0.

  Args:
    output_dir: the run folder (created; must not hold checkpoints yet).
    config: the run's full config (the front end is resolved here).
    tokens: the vocabulary, index = id.
    params: the model's parameter tree (numpy or jax leaves).

  Returns:
    The folder.

  Raises:
    ValueError: the folder already holds checkpoints, or the parameters do
      not fit the model `config` builds.
  """
  out = pathlib.Path(output_dir).expanduser().absolute()
  if (out / checkpointing.CHECKPOINT_DIR).exists():
    raise ValueError(f'{out} already holds checkpoints; convert into a new folder')
  pretrained_setup.resolve_encoder_frontend(config)
  model = models.Captioner(models.make_captioner_config(config.model, len(tokens)))
  check_params(params, inference.abstract_params(model, int(config.frontend.n_mels)))
  out.mkdir(parents=True, exist_ok=True)
  tokenizer_lib.Tokenizer(tokens).save(out / tokenizer_lib.VOCAB_FILENAME)
  trainer.write_config(config, out)
  params = jax.tree.map(lambda x: np.asarray(x, np.float32), params)
  manager = checkpointing.create_checkpoint_manager(out, config.train)
  manager.save(0, args=ocp.args.Composite(state=ocp.args.StandardSave({'params': params})))
  manager.wait_until_finished()
  manager.close()
  return out
