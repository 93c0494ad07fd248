"""Train state, optimizer and learning-rate schedule.

The optimizer is optax AdamW behind an optional global-norm clip, with a
linear warm-up followed by cosine decay. Weight decay skips vectors and
scalars (biases, norm scales): only matrices and kernels are decayed.
"""

from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

PyTree = Any


@flax.struct.dataclass
class TrainState:
  """What a training step reads and writes (and what a checkpoint holds).

  Attributes:
    step: int32 `[]`, optimizer updates applied so far.
    params: model parameters (float32, whatever the compute dtype).
    opt_state: optax state of the optimizer built by `create_optimizer`.
  """

  step: jax.Array
  params: PyTree
  opt_state: PyTree

  def apply_gradients(self, tx: optax.GradientTransformation, grads: PyTree) -> 'TrainState':
    """Returns the state after one optimizer update with `grads`."""
    updates, opt_state = tx.update(grads, self.opt_state, self.params)
    params = optax.apply_updates(self.params, updates)
    return self.replace(step=self.step + 1, params=params, opt_state=opt_state)


def create_learning_rate_schedule(
  optim: ml_collections.ConfigDict, num_steps: int
) -> optax.Schedule:
  """Linear warm-up from 0 to `optim.lr`, then cosine decay to `lr * end_lr_ratio`.

  Args:
    optim: `config.optim`.
    num_steps: total optimizer updates of the run (`config.train.num_steps`).

  Returns:
    A function of the int step giving the learning rate.
  """
  warmup = int(optim.warmup_steps)
  return optax.warmup_cosine_decay_schedule(
    init_value=0.0,
    peak_value=optim.lr,
    warmup_steps=warmup,
    decay_steps=max(int(num_steps), warmup + 1),
    end_value=optim.lr * optim.end_lr_ratio,
  )


def _decay_mask(params: PyTree) -> PyTree:
  return jax.tree.map(lambda p: p.ndim > 1, params)


def create_optimizer(
  optim: ml_collections.ConfigDict, num_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Builds clip + AdamW from `config.optim`.

  Args:
    optim: `config.optim` (`lr`, `warmup_steps`, `end_lr_ratio`,
      `weight_decay`, `b1`, `b2`, `clip_norm`).
    num_steps: total optimizer updates (for the cosine decay).

  Returns:
    `(tx, schedule)`.
  """
  schedule = create_learning_rate_schedule(optim, num_steps)
  parts = []
  if optim.clip_norm > 0:
    parts.append(optax.clip_by_global_norm(optim.clip_norm))
  parts.append(
    optax.adamw(
      learning_rate=schedule,
      b1=optim.b1,
      b2=optim.b2,
      weight_decay=optim.weight_decay,
      mask=_decay_mask,
    )
  )
  return optax.chain(*parts), schedule


def create_train_state(
  params: PyTree, tx: optax.GradientTransformation, step: int = 0
) -> TrainState:
  """Wraps fresh or loaded parameters with a fresh optimizer state."""
  return TrainState(step=jnp.asarray(step, jnp.int32), params=params, opt_state=tx.init(params))


def init_params(
  init_fn: Callable[[jax.Array], PyTree], rng: jax.Array, sharding: jax.sharding.Sharding
) -> PyTree:
  """Runs `init_fn(rng)` under jit with its output placed on `sharding`.

  Creating parameters inside `jit` with `out_shardings` works the same with
  one process or many (no host array ever has to be broadcast).
  """
  return jax.jit(init_fn, out_shardings=sharding)(rng)
