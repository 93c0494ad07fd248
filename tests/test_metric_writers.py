"""aac_jax/train/metric_writers.py: TensorBoard event files that read back whole."""

from tensorboardX.proto import event_pb2

from aac_jax.sweeps import events
from aac_jax.train import metric_writers


def test_hparams_and_scalars_land_in_one_undamaged_event_file(tmp_path):
  writer = metric_writers.TensorBoardWriter(str(tmp_path))
  # In the same second as the writer's creation, as a fresh run's step 0.
  writer.write_hparams({'optim.learning_rate': 1e-3, 'model.size': 'base', 'shape': (2, 3)})
  writer.write_scalars(1, {'train/loss': 2.5})
  writer.close()
  files = list(tmp_path.glob(f'**/{events.EVENT_FILE_GLOB}'))
  assert len(files) == 1, files
  payloads = list(events.read_records(files[0]))
  # read_records stops at the first damaged record: every byte must be in a whole one.
  assert sum(12 + len(p) + 4 for p in payloads) == files[0].stat().st_size
  parsed = [event_pb2.Event.FromString(p) for p in payloads]
  plugins = {v.metadata.plugin_data.plugin_name for e in parsed for v in e.summary.value}
  assert 'hparams' in plugins
  assert events.read_scalars(tmp_path)['train/loss'] == [(1, 2.5)]
