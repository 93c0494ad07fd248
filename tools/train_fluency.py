"""Trains a FENSE-style fluency error detector on a dataset's training captions.

  python tools/train_fluency.py --config configs/synthetic_demo.py --output DIR
  python tools/train_fluency.py --captions_file captions.txt --output DIR

Distinct captions are split into training and held-out captions
(`--holdout`); each is kept clean, corrupted once by FENSE's rules
(`aac_jax/metrics/fluency_corruptions.py`: a random applicable rule,
sometimes two) and, with `--each_rule` (default), once by every rule that
applies to it alone. A small BERT error checker
(`aac_jax/metrics/fluency_training.py`) learns the five error types and
"any error"; it is saved in DIR as FENSE's checker folder, read back through
the FENSE loader, and scored on two held-out sets: precision and recall per
output on the clean captions with each rule's corruptions ('single_rule',
the per-type table) and on the clean captions with one mixed corruption each
('mixed'), printed and written to DIR/fluency_eval.json. Use it with
`--echecker_dir DIR` (aac-evaluate, training's `fense` metric).

Exit status: 0 trained; 1 refused before training, with one line
`train_fluency: error: ...` (DIR already holds a detector, no captions);
2 bad flags.
"""

import json
import pathlib
import sys
import time

import numpy as np
from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from aac_jax import config_path  # noqa: E402
from aac_jax.metrics import fense_models  # noqa: E402
from aac_jax.metrics import fluency_corruptions as corruptions  # noqa: E402
from aac_jax.metrics import fluency_training as training  # noqa: E402

config_flags.DEFINE_config_file('config', None, 'Config whose dataset gives the captions.')
_CAPTIONS_FILE = flags.DEFINE_string('captions_file', None, 'Captions, one a line (no --config).')
_SPLIT = flags.DEFINE_string('split', 'train', "The config dataset's split to read.")
_OUTPUT = flags.DEFINE_string('output', None, 'Folder to write the detector to (new or empty).')
_HOLDOUT = flags.DEFINE_float('holdout', 0.1, 'Share of distinct captions held out.')
_STEPS = flags.DEFINE_integer('steps', training.TrainSettings.steps, 'Optimizer steps.')
_BATCH = flags.DEFINE_integer('batch_size', training.TrainSettings.batch_size, 'Texts per step.')
_LR = flags.DEFINE_float('lr', training.TrainSettings.lr, 'Peak learning rate.')
_SEED = flags.DEFINE_integer('seed', 0, 'Split, corruption and training seed.')
_HIDDEN = flags.DEFINE_integer('hidden_size', training.DetectorSize.hidden_size, 'BERT width.')
_LAYERS = flags.DEFINE_integer('num_layers', training.DetectorSize.num_layers, 'BERT layers.')
_HEADS = flags.DEFINE_integer('num_heads', training.DetectorSize.num_heads, 'Attention heads.')
_FF = flags.DEFINE_integer(
  'intermediate_size', training.DetectorSize.intermediate_size, 'Feed-forward width.'
)
_VOCAB = flags.DEFINE_integer('vocab_size', training.DetectorSize.vocab_size, 'Word pieces.')
_EACH_RULE = flags.DEFINE_bool(
  'each_rule', True, 'Train on every applicable rule per caption too (else one random rule).'
)
_LOG_EVERY = flags.DEFINE_integer('log_every', training.TrainSettings.log_every, 'Loss every N.')
flags.mark_flag_as_required('output')


def _fail(message: str) -> None:
  raise SystemExit(f'train_fluency: error: {message}')


def read_captions() -> list[str]:
  """The captions of --captions_file or of the config dataset's --split."""
  config = flags.FLAGS.config
  if (config is None) == (_CAPTIONS_FILE.value is None):
    _fail('give exactly one of --config (a dataset) and --captions_file')
  if config is None:
    path = pathlib.Path(_CAPTIONS_FILE.value).expanduser()
    if not path.is_file():
      _fail(f'--captions_file {path} does not exist')
    return path.read_text(encoding='utf-8').splitlines()
  from aac_jax.data import sources

  return sources.load_split_captions(config.dataset, _SPLIT.value)


def check_output(folder: pathlib.Path) -> None:
  """Refuses a folder that exists and is not empty (a detector is never overwritten)."""
  if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
    _fail(f'--output {folder} exists and is not empty: give a new folder')


def format_table(scores: dict) -> str:
  """Markdown table: output, held-out positives, precision, recall."""
  lines = ['| output | held-out positives | precision | recall |', '|---|---:|---:|---:|']
  for name, s in scores.items():
    lines.append(f'| {name} | {int(s["positives"])} | {s["precision"]:.3f} | {s["recall"]:.3f} |')
  return '\n'.join(lines)


def main(argv):
  del argv
  output = pathlib.Path(_OUTPUT.value).expanduser()
  check_output(output)
  if not 0 < _HOLDOUT.value < 1:
    _fail(f'--holdout must be in (0, 1), got {_HOLDOUT.value}')
  start = time.time()
  train_caps, held_caps = corruptions.split_held_out(read_captions(), _HOLDOUT.value, _SEED.value)
  if len(train_caps) < 2:
    _fail(f'{len(train_caps) + len(held_caps)} distinct captions: need at least 3')
  lexicon = corruptions.build_lexicon(train_caps)
  rng = np.random.default_rng(_SEED.value)
  train_texts, train_labels = corruptions.make_examples(
    train_caps, rng, lexicon, each_rule=_EACH_RULE.value
  )
  held_out = {  # Clean + each rule alone (the per-type table), and clean + FENSE's mix.
    'single_rule': corruptions.make_examples(held_caps, rng, lexicon, mixed=False, each_rule=True),
    'mixed': corruptions.make_examples(held_caps, rng, lexicon),
  }
  sizes = ' and '.join(f'{len(texts)} {name}' for name, (texts, _) in held_out.items())
  print(f'{len(train_texts)} training texts; held out: {sizes}', flush=True)

  tokenizer = training.write_wordpiece(train_caps, output, _VOCAB.value)
  size = training.DetectorSize(_VOCAB.value, _HIDDEN.value, _LAYERS.value, _HEADS.value, _FF.value)
  module = training.make_detector(size, tokenizer.get_vocab_size())
  settings = training.TrainSettings(
    _STEPS.value, _BATCH.value, _LR.value, seed=_SEED.value, log_every=_LOG_EVERY.value
  )
  params = training.train(module, training.encode(tokenizer, train_texts), train_labels, settings)
  meta = {'source': 'tools/train_fluency.py', 'training_texts': len(train_texts)}
  training.save_detector(output, module, params, meta)

  checker = fense_models.load_error_checker(output)  # Scored as --echecker_dir reads it.
  scores = {
    name: training.precision_recall(checker(texts), labels)
    for name, (texts, labels) in held_out.items()
  }
  (output / 'fluency_eval.json').write_text(json.dumps(scores, indent=1) + '\n')
  for name, table in scores.items():
    print(f'held-out {name}:\n{format_table(table)}')
  print(f'wrote {output} in {time.time() - start:.0f} s')


if __name__ == '__main__':
  app.run(main, flags_parser=config_path.parse_flags)
