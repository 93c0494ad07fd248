"""aac_jax.train: data-parallel training, checkpoints, evaluation, logging.

- `trainer`: `train_and_evaluate(config, workdir)`, the orchestrator behind
  `python -m aac_jax.main`; `run` gives the process exit status.
- `steps`: the pure per-device `train_step` (a pmap body over the axis
  `'data'`) and `make_train_step`, which maps it with
  `jax.jit(jax.shard_map(...))`.
- `state`: `TrainState`, AdamW with warm-up + cosine decay.
- `parallel`: the 1-D device mesh and host-to-global batch assembly.
- `checkpointing`: one orbax manager for state + Grain iterator, resume order.
- `preemption`: SIGTERM handling at step boundaries.
- `evaluation`: greedy decoding, caption metrics, prediction files.
- `metric_writers`: CLU-style writers (TensorBoard via tensorboardX, logs).
"""
