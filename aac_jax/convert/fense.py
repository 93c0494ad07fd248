"""FENSE models: the error checker `.ckpt` and Sentence-BERT `.bin` -> safetensors folders.

- `--echecker FILE.ckpt --bert_dir DIR --output OUT`: FENSE saves the
  checker with `torch.save({'model_type', 'num_classes', 'state_dict'})`
  (state dict of `encoder.*` BERT weights and the `clf` layer). It holds no
  config and no vocabulary: those come from the `model_type` folder
  (`bert-base-uncased`: config.json, vocab.txt / tokenizer.json). OUT gets
  `model.safetensors` (same names, `position_ids` dropped), `echecker.json`,
  `config.json` and the tokenizer files.
- `--sbert DIR --output OUT`: a sentence-transformers folder holding only
  `pytorch_model.bin`; OUT is a copy with `model.safetensors` instead.
Both outputs are checked by loading them as `aac_jax.metrics.fense_models` does.
"""

import argparse
import hashlib
import json
import pathlib
import shutil

import numpy as np

from aac_jax.convert import torch_file

TOKENIZER_FILES = (
  'tokenizer.json',
  'vocab.txt',
  'tokenizer_config.json',
  'special_tokens_map.json',
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
  group = parser.add_mutually_exclusive_group(required=True)
  group.add_argument(
    '--echecker', help='FENSE error checker .ckpt (echecker_clotho_audiocaps_base.ckpt).'
  )
  group.add_argument('--sbert', help='sentence-transformers folder with pytorch_model.bin.')
  parser.add_argument(
    '--bert_dir', help="With --echecker: the checker's model_type folder (bert-base-uncased)."
  )
  parser.add_argument('--output', required=True, help='Folder to write.')


def run(args: argparse.Namespace) -> None:
  output = pathlib.Path(args.output).expanduser()
  if args.echecker:
    if not args.bert_dir:
      raise ValueError(
        '--echecker needs --bert_dir (the bert-base-uncased folder: config.json, vocab.txt)'
      )
    convert_echecker(
      pathlib.Path(args.echecker).expanduser(), pathlib.Path(args.bert_dir).expanduser(), output
    )
  else:
    convert_sbert(pathlib.Path(args.sbert).expanduser(), output)


# sha256 of the checkers FENSE publishes (its release V0.1).
PUBLISHED_SHA256 = {
  '1a719f090af70614bbdb9f9437530b7e133c48cfa4a58d964de0d47fc974a2fa',  # _base
  '90ed0ac5033ec497ec66d4f68588053813e085671136dae312097c96c504f673',  # _tiny
}


def _sha256(path: pathlib.Path) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


def _torch_load(path: pathlib.Path) -> dict:
  """Tensors only; a full unpickle only for the published checker files (checksum)."""
  try:
    return torch_file.load_tensors(path)
  except torch_file.UnsafeCheckpointError:
    if _sha256(path) not in PUBLISHED_SHA256:
      raise
  import torch

  return torch.load(path, map_location='cpu', weights_only=False)


def _numpy_state(state: dict) -> dict[str, np.ndarray]:
  # position_ids is a buffer older transformers saved; it is not a weight.
  return {k: v.float().numpy() for k, v in state.items() if not k.endswith('position_ids')}


def _save_safetensors(tensors: dict[str, np.ndarray], path: pathlib.Path) -> None:
  from safetensors.numpy import save_file

  save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path))


def convert_echecker(ckpt: pathlib.Path, bert_dir: pathlib.Path, output: pathlib.Path) -> None:
  """Writes the checker folder read by `fense_models.load_error_checker`."""
  states = _torch_load(ckpt)
  missing = {'model_type', 'num_classes', 'state_dict'} - set(states)
  if missing:
    raise ValueError(f'{ckpt} is not a FENSE error checker checkpoint (no {sorted(missing)})')
  if not (bert_dir / 'config.json').is_file():
    raise ValueError(
      f'{bert_dir}/config.json missing: download {states["model_type"]} (config + tokenizer)'
    )
  tensors = _numpy_state(states['state_dict'])
  if 'clf.weight' not in tensors:
    raise ValueError(f'{ckpt}: no clf.weight in its state_dict')
  output.mkdir(parents=True, exist_ok=True)
  for name in ('config.json', *TOKENIZER_FILES):
    if (bert_dir / name).is_file():
      shutil.copyfile(bert_dir / name, output / name)
  _save_safetensors(tensors, output / 'model.safetensors')
  meta = {
    'model_type': states['model_type'],
    'num_classes': int(states['num_classes']),
    'source': ckpt.name,
  }
  (output / 'echecker.json').write_text(json.dumps(meta, indent=1) + '\n')
  from aac_jax.metrics import fense_models

  fense_models.load_error_checker(output)  # Fails here, not at evaluation time.


def convert_sbert(folder: pathlib.Path, output: pathlib.Path) -> None:
  """Copies a sentence-transformers folder, with model.safetensors for pytorch_model.bin."""
  weights = folder / 'pytorch_model.bin'
  if not weights.is_file():
    raise ValueError(f'{weights} not found (a folder with model.safetensors needs no conversion)')
  if output.resolve() != folder.resolve():
    shutil.copytree(
      folder,
      output,
      dirs_exist_ok=True,
      ignore=shutil.ignore_patterns('*.bin', '*.h5', '*.onnx', '.git'),
    )
  _save_safetensors(_numpy_state(_torch_load(weights)), output / 'model.safetensors')
  from aac_jax.metrics import fense_models

  fense_models.load_sentence_embedder(output)
