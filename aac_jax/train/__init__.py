"""aac_jax.train: training on a device mesh, checkpoints, evaluation, logging.

- `trainer`: `train_and_evaluate(config, workdir)`, the orchestrator behind
  `python -m aac_jax.main`; `run` gives the process exit status.
- `steps`: the pure global-view `train_step` and `make_train_step`, which
  jits it with the mesh's shardings.
- `state`: `TrainState`, AdamW with warm-up + cosine decay.
- `parallel`: the `(data, fsdp, tensor)` mesh, batch / parameter / optimizer
  state shardings, host-to-global batch assembly.
- `checkpointing`: one orbax manager for state + Grain iterator, resume order.
- `preemption`: SIGTERM handling at step boundaries.
- `evaluation`: greedy decoding, caption metrics, prediction files.
- `metric_writers`: CLU-style writers (TensorBoard via tensorboardX, logs).
"""
