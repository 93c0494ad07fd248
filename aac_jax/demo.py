"""The demo: synthetic benchmark -> cross-entropy -> SCST -> results table.

  python -m aac_jax.demo --workdir workdirs/demo
  python -m aac_jax.demo --workdir /tmp/smoke \\
      --config configs/synthetic_demo.py:runlocal \\
      --scst_config configs/synthetic_demo_scst.py:runlocal

Builds the synthetic dataset on first use, trains (or resumes) the
cross-entropy stage in `<workdir>/ce`, fine-tunes it with SCST in
`<workdir>/scst`, then scores on the test split the most frequent training
caption (a constant baseline), the cross-entropy model and the SCST model,
and prints one table (caption metrics, event diagnostics, fluency proxies)
plus sample captions beside their references. The table is also written to
`<workdir>/results.md` and `<workdir>/results.json`.
"""

import collections
import json
import re
import sys
import time

import jax
from absl import app, flags, logging
from etils import epath
from ml_collections import config_flags

from aac_jax import config_path, config_validation, files, metrics
from aac_jax.data import sources, text
from aac_jax.scst import trainer as scst_trainer
from aac_jax.train import evaluation, logs, trainer

config_flags.DEFINE_config_file(
  'config', 'configs/synthetic_demo.py', 'Cross-entropy stage config.', lock_config=False
)
config_flags.DEFINE_config_file(
  'scst_config', 'configs/synthetic_demo_scst.py', 'SCST stage config.', lock_config=False
)
flags.DEFINE_string('workdir', 'workdirs/demo', 'Folder for both stages and the results.')
flags.DEFINE_bool('scst', True, 'Run the SCST stage after cross-entropy.')
FLAGS = flags.FLAGS

TABLE_COLUMNS = (
  ('bleu_4', 'BLEU-4'),
  ('rouge_l', 'ROUGE-L'),
  ('cider_d', 'CIDEr-D'),
  ('event_f1', 'event F1'),
  ('order_accuracy', 'order acc'),
  ('count_accuracy', 'count acc'),
  ('vocab_size', 'vocab'),
  ('repeated_trigram_rate', 'rep 3-gram'),
  ('mean_length', 'length'),
)


def most_frequent_caption(captions: list[str]) -> str:
  """The most frequent normalised training caption (ties: the first seen)."""
  counts = collections.Counter(text.normalize_caption(c) for c in captions)
  return counts.most_common(1)[0][0]


def latest_test_predictions(stage_dir: epath.Path, split: str) -> dict[str, str]:
  """`{clip id: prediction}` from the stage's last `<split>_step<N>.json`."""
  pattern = re.compile(rf'{re.escape(split)}_step(\d+)\.json$')
  matches = [(pattern.search(p.name), p) for p in (stage_dir / 'predictions').glob('*.json')]
  files = [(int(m.group(1)), p) for m, p in matches if m]
  if not files:
    raise FileNotFoundError(f'no {split} predictions in {stage_dir}/predictions')
  rows = json.loads(max(files)[1].read_text())
  return {row['id']: row['prediction'] for row in rows}


def score_row(predictions: list[str], split, events, config, train_captions) -> dict[str, float]:
  """Caption metrics + event diagnostics + fluency proxies of one system."""
  scores, _ = evaluation.score(predictions, split, events, config.eval)
  scores.update(metrics.diversity_stats(predictions, train_captions))
  return scores


def _format_cell(key: str, value: float) -> str:
  return f'{value:.0f}' if key == 'vocab_size' else f'{value:.3f}'


def format_table(rows: dict[str, dict[str, float]]) -> str:
  """A Markdown table: one row per system, the TABLE_COLUMNS metrics."""
  header = '| system | ' + ' | '.join(title for _, title in TABLE_COLUMNS) + ' |'
  lines = [header, '|---' * (len(TABLE_COLUMNS) + 1) + '|']
  for name, scores in rows.items():
    cells = [_format_cell(key, scores.get(key, float('nan'))) for key, _ in TABLE_COLUMNS]
    lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def format_samples(split, systems: dict[str, list[str]], count: int = 5) -> str:
  """`count` clips: each system's caption beside the first two references."""
  blocks = []
  for i in range(min(count, len(split))):
    lines = [f'{split.ids[i]}']
    lines += [f'  {name:>9}: {captions[i]}' for name, captions in systems.items()]
    lines += [f'  reference: {ref}' for ref in split.references[i][:2]]
    blocks.append('\n'.join(lines))
  return '\n\n'.join(blocks)


def run_stages(config, scst_config, workdir: epath.Path, with_scst: bool) -> bool:
  """Trains (or resumes) both stages; False if a stage was preempted."""
  ce_dir = workdir / 'ce'
  start = time.time()
  result = trainer.train_and_evaluate(config, str(ce_dir))
  logging.info('Cross-entropy stage %s in %.0f s', result.reason, time.time() - start)
  if result.reason == 'preempted':
    return False
  if not with_scst:
    return True
  scst_config.train.init_from = str(ce_dir)
  scst_config.dataset.data_dir = config.dataset.data_dir
  start = time.time()
  scst_result = scst_trainer.run_scst(scst_config, str(workdir / 'scst'))
  logging.info(
    'SCST stage %s in %.0f s (%s)', scst_result.reason, time.time() - start, scst_result.timing
  )
  return scst_result.reason != 'preempted'


def build_report(config, workdir: epath.Path, with_scst: bool) -> tuple[str, dict]:
  """Scores baseline / CE / SCST on the test split; returns (text, rows)."""
  dataset = config.dataset
  split = sources.read_eval_split(
    sources.open_source(dataset, dataset.test_split), dataset.test_split
  )
  events = evaluation.read_events(dataset, split)
  train_captions = sources.load_split_captions(dataset, dataset.train_split)
  constant = most_frequent_caption(train_captions)
  systems = {'baseline': [constant] * len(split)}
  for name in ('ce', 'scst') if with_scst else ('ce',):
    by_id = latest_test_predictions(workdir / name, dataset.test_split)
    systems[name.upper()] = [by_id[clip_id] for clip_id in split.ids]
  rows = {
    name: score_row(captions, split, events, config, train_captions)
    for name, captions in systems.items()
  }
  report = (
    f'Test split: {len(split)} clips of {dataset.name}/{dataset.builder_config}. '
    f'Baseline = the most frequent training caption: "{constant}"\n\n'
    f'{format_table(rows)}\n\nSample captions:\n\n{format_samples(split, systems)}\n'
  )
  return report, rows


def check_configs(config, scst_config, workdir: epath.Path, with_scst: bool) -> None:
  """Both stages' configs, checked before the first stage starts (see `run_stages`)."""
  config_validation.validate(config, 'train', jax.device_count())
  if with_scst:
    scst_config.train.init_from = str(workdir / 'ce')
    scst_config.dataset.data_dir = config.dataset.data_dir
    config_validation.validate(scst_config, 'scst', jax.device_count())


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logs.quiet_console()
  workdir = epath.Path(FLAGS.workdir)

  def check_and_run() -> bool:
    check_configs(FLAGS.config, FLAGS.scst_config, workdir, FLAGS.scst)
    return run_stages(FLAGS.config, FLAGS.scst_config, workdir, FLAGS.scst)

  status, finished = trainer.exit_status(check_and_run)
  if status:
    return status
  if not finished:
    print('Preempted: checkpoint saved; rerun the same command to continue.')
    return 0
  report, rows = build_report(FLAGS.config, workdir, FLAGS.scst)
  files.write_text(workdir / 'results.md', report)
  files.write_text(workdir / 'results.json', json.dumps(rows, indent=2))
  print('\n' + report)
  print(f'(written to {workdir / "results.md"})')
  return 0


def run() -> None:
  config_path.add_config_root_to_path(sys.argv)
  app.run(main, flags_parser=config_path.parse_flags)


if __name__ == '__main__':
  sys.exit(run())
