"""Checkpoints on disk: exact resume, best/latest retention, init_from.

These run the real trainer (`train_and_evaluate`) on the tiny `toy_aac`
dataset with real orbax files; no mocks. A persistent compilation cache
shared by the runs of the session keeps repeated compiles cheap.
"""

import dataclasses
import json
import pathlib
import re

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import toy_dataset

from aac_jax.data import pipeline
from aac_jax.train import checkpointing, parallel, trainer
from aac_jax.train import state as state_lib
from configs import base, clotho_llm


@pytest.fixture(scope='module')
def toy_config(tmp_path_factory):
  """The runlocal demo config pointed at a fresh `toy_aac` copy."""
  cache = tmp_path_factory.getbasetemp() / 'jax_cache'
  previous = jax.config.jax_compilation_cache_dir
  jax.config.update('jax_compilation_cache_dir', str(cache))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
  config = toy_dataset.demo_config(str(tmp_path_factory.mktemp('tfds')))
  config.train.num_steps = 100  # Fixes the lr schedule; runs stop at `stop_at_step`.
  config.train.log_every = 1
  config.train.checkpoint_every = 2
  config.train.eval_every = 4
  config.eval.test_at_end = False
  yield config
  jax.config.update('jax_compilation_cache_dir', previous)


def _run(config, workdir, stop_at_step, **train_overrides):
  config = config.copy_and_resolve_references()
  config.train.stop_at_step = stop_at_step
  config.train.update(train_overrides)
  return trainer.train_and_evaluate(config, str(workdir))


@pytest.fixture(scope='module')
def straight_run(toy_config, tmp_path_factory):
  workdir = tmp_path_factory.mktemp('straight')
  return workdir, _run(toy_config, workdir, 4)


def _assert_trees_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _iterator_state(path: pathlib.Path) -> dict[str, int]:
  """The saved data position of one checkpoint, e.g. `{'next_position': 32, ...}`."""
  return json.loads((path / 'metadata').read_text())


def test_restart_from_disk_equals_straight_run(straight_run, toy_config, tmp_path):
  straight_dir, straight = straight_run
  assert (straight.step, straight.reason) == (4, 'stopped')

  first = _run(toy_config, tmp_path, 2)
  assert first.step == 2
  ckpt = checkpointing.checkpoint_dir(tmp_path)
  assert sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit()) == [2]
  resumed = _run(toy_config, tmp_path, 4)
  assert resumed.step == 4 and int(resumed.state.step) == 4

  _assert_trees_equal(resumed.state.params, straight.state.params)
  _assert_trees_equal(resumed.state.opt_state, straight.state.opt_state)
  # Same batches seen, so the saved iterator positions are identical too.
  straight_iter = _iterator_state(checkpointing.checkpoint_dir(straight_dir) / '4' / 'data_iter')
  assert straight_iter and straight_iter == _iterator_state(ckpt / '4' / 'data_iter')
  assert straight_iter != _iterator_state(ckpt / '2' / 'data_iter')


def test_lora_language_model_run_resumes_bit_exactly(toy_config, tmp_path):
  # A LoRA decoder's optimizer state has frozen (zero-update) leaves beside the adapters'.
  config = clotho_llm.get_config('runlocal')
  config.dataset.update(toy_config.dataset)
  config.train.update(num_steps=100, log_every=1, checkpoint_every=2, eval_every=0)
  config.eval.test_at_end = False
  config.model.llm.update(dict(train='lora', lora_rank=2, lora_targets=['q', 'v', 'down']))
  straight = _run(config, tmp_path / 'straight', 4)
  assert _run(config, tmp_path / 'resumed', 2).step == 2
  resumed = _run(config, tmp_path / 'resumed', 4)
  assert resumed.step == 4 and int(resumed.state.step) == 4
  _assert_trees_equal(resumed.state.params, straight.state.params)
  _assert_trees_equal(resumed.state.opt_state, straight.state.opt_state)


def test_evaluation_writes_predictions_and_ranks_checkpoint(straight_run):
  workdir, _ = straight_run
  rows = json.loads((workdir / 'predictions' / 'validation_step4.json').read_text())
  assert len(rows) == toy_dataset.DEFAULT_SPLITS['validation']
  assert {'id', 'prediction', 'references', 'scores'} <= set(rows[0])
  assert all(len(r['references']) == 5 for r in rows)
  metrics = json.loads(
    (checkpointing.checkpoint_dir(workdir) / '4' / 'metrics' / 'metrics').read_text()
  )
  for name in ('bleu_4', 'rouge_l', 'cider_d'):
    assert np.isfinite(metrics[name])
  assert (workdir / 'config.json').exists() and (workdir / 'vocab.txt').exists()
  log = (workdir / 'train.log').read_text()
  assert re.search(r'\[4\] .*train/loss=', log)
  assert re.search(r'Evaluated validation \(.+\) at step 4 ', log)  # (the source it scored)
  assert 'CheckpointManager' in log  # Library lines are kept in train.log (not on the console).
  assert list(workdir.glob('**/events.out.tfevents.*'))


def test_init_from_loads_params_with_fresh_optimizer(straight_run, toy_config, tmp_path):
  source_dir, straight = straight_run
  config = toy_config.copy_and_resolve_references()
  config.train.init_from = str(source_dir)
  exp = trainer.start_experiment(config, str(tmp_path))
  assert (tmp_path / 'vocab.txt').read_text() == (source_dir / 'vocab.txt').read_text()
  manager = checkpointing.create_checkpoint_manager(tmp_path, config.train)
  train_iter = pipeline.make_train_iterator(config.dataset, exp.tokenizer, config.train.batch_size)
  state = trainer.restore_state(exp, manager, train_iter)
  manager.close()
  assert int(state.step) == 0
  _assert_trees_equal(state.params, straight.state.params)
  assert state.params['decoder']['embed']['embedding'].sharding.is_fully_replicated


def test_keeps_latest_n_plus_best(tmp_path):
  train_cfg = base.get_train_config()
  train_cfg.keep_checkpoints = 2
  mesh = parallel.create_mesh()
  tx, _ = state_lib.create_optimizer(base.get_optim_config(), 10)
  state = jax.device_put(
    state_lib.create_train_state({'w': jnp.ones((2, 3))}, tx), parallel.replicated(mesh)
  )
  data_iter = iter(grain.MapDataset.range(50).batch(2).to_iter_dataset())
  manager = checkpointing.create_checkpoint_manager(tmp_path, train_cfg)
  scores = {2: 0.9, 4: 0.3, 6: 0.5}
  for step in range(1, 9):
    next(data_iter)
    metrics = {'cider_d': scores[step]} if step in scores else None
    checkpointing.save_checkpoint(manager, step, state, data_iter, metrics)
  manager.wait_until_finished()
  assert manager.best_step() == 2
  assert sorted(manager.all_steps()) == [2, 7, 8]
  manager.close()


def test_saving_on_cpu_devices_compiles_nothing_per_array(tmp_path):
  # Orbax's replica-parallel writes slice every replicated array on each
  # device: one compilation per shape, slice and device at a run's first save
  # (20 s of the synthetic demo's 21-s first save on 8 CPU devices).
  mesh = parallel.create_mesh()
  tx, _ = state_lib.create_optimizer(base.get_optim_config(), 10)
  params = {f'w{i}': jnp.ones((8 * (i + 1), 3)) for i in range(5)}  # Rows split 8 ways.
  state = jax.device_put(state_lib.create_train_state(params, tx), parallel.replicated(mesh))
  data_iter = iter(grain.MapDataset.range(50).batch(2).to_iter_dataset())
  manager = checkpointing.create_checkpoint_manager(tmp_path, base.get_train_config())
  checkpointing.save_checkpoint(manager, 1, state, data_iter)  # Compiles the checksums.
  manager.wait_until_finished()
  params = {f'w{i}': jnp.ones((16 * (i + 1), 5)) for i in range(5)}  # Shapes not seen yet.
  state = jax.device_put(state_lib.create_train_state(params, tx), parallel.replicated(mesh))
  compiled = []
  listener = lambda event, duration, **kw: compiled.append(event)  # noqa: E731
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    checkpointing.save_checkpoint(manager, 2, state, data_iter)
    manager.wait_until_finished()
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  manager.close()
  backend_compiles = [e for e in compiled if e == '/jax/core/compile/backend_compile_duration']
  assert len(backend_compiles) <= 2, len(backend_compiles)  # The two checksum functions.


def _train_losses(workdir: pathlib.Path) -> dict[int, float]:
  """`{step: train/loss}` from a run's train.log (the last line of each step)."""
  found = re.findall(r'\[(\d+)\] .*?train/loss=([0-9.eE+-]+)', (workdir / 'train.log').read_text())
  return {int(step): float(loss) for step, loss in found}


def _with_mesh(config, data, fsdp, tensor=1):
  config = config.copy_and_resolve_references()
  config.mesh.update(data=data, fsdp=fsdp, tensor=tensor)
  return config


def _restore_on(config, workdir, single_device=False):
  """The newest checkpoint of `workdir` read onto `config.mesh` (or one device)."""
  exp = trainer.start_experiment(config, str(workdir))
  if single_device:
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    exp = dataclasses.replace(exp, state_sharding=jax.tree.map(lambda _: one, exp.state_sharding))
  manager = checkpointing.create_checkpoint_manager(workdir, config.train)
  train_iter = pipeline.make_train_iterator(config.dataset, exp.tokenizer, config.train.batch_size)
  state = trainer.restore_state(exp, manager, train_iter)
  manager.close()
  for leaf, want in zip(
    jax.tree.leaves(state.params), jax.tree.leaves(exp.state_sharding.params), strict=True
  ):
    assert leaf.sharding.is_equivalent_to(want, leaf.ndim)
  return state


def test_checkpoint_of_a_sharded_run_restores_on_other_meshes(straight_run, toy_config, tmp_path):
  straight_dir, _ = straight_run
  first = _run(_with_mesh(toy_config, 2, 4), tmp_path, 2)
  assert not first.state.params['decoder']['embed']['embedding'].sharding.is_fully_replicated
  # Saved on data 2 x fsdp 4; read onto (1, 8, 1), (8, 1, 1) and one device:
  # bit-identical parameters and optimizer state each time.
  restored = [
    _restore_on(_with_mesh(toy_config, 1, 8), tmp_path),
    _restore_on(toy_config, tmp_path),
    _restore_on(toy_config, tmp_path, single_device=True),
  ]
  for state in restored:
    assert int(state.step) == 2
    _assert_trees_equal(state.params, first.state.params)
    _assert_trees_equal(state.opt_state, first.state.opt_state)
  # Resumed on 8 x 1 x 1: the losses of the straight 8 x 1 x 1 run (the
  # reduction order differs between meshes, so equal to float rounding).
  resumed = _run(toy_config, tmp_path, 4)
  assert resumed.step == 4
  straight_losses, losses = _train_losses(straight_dir), _train_losses(tmp_path)
  for step in (1, 2, 3, 4):
    np.testing.assert_allclose(losses[step], straight_losses[step], rtol=1e-4, err_msg=step)
