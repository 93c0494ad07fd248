"""Where the train step's time goes: each part of the model, aac_jax against PyTorch.

`tools/bench_train.py --compare_torch` times the whole step; this script
times its parts on their own, each in aac_jax (jitted) and in the same model
in eager PyTorch (`tools/torch_captioner.py`, loaded with aac_jax's initial
parameters), interleaved round by round as bench_train does:

  front end      log-mel + SpecAugment, forward (no parameters)
  subsampling    conv2d subsampling, forward + backward
  block          one conformer block, forward + backward (the model has
                 `encoder_layers` of them)
  decoder+loss   teacher-forced decoder and label-smoothed loss, fwd + bwd
  optimizer      global-norm clip + AdamW update of all parameters
  attention mm   the kernel alone: one batched attention-score matmul of the
                 encoder's shape, [batch x heads, frames, head_dim] x its
                 transpose (forward)
  dense mm       the kernel alone: the feed-forward input matmul,
                 [batch x frames, dim] x [dim, ff_dim] (forward)

Each part's parameter count is checked equal on both sides before timing;
`tests/test_torch_captioner.py` proves the two models compute the same
function (logits, loss, every gradient, AdamW updates). The last column
gives PyTorch's median over aac_jax's (above 1 = aac_jax faster), and a last
line the sum over the model's parts (blocks counted `encoder_layers` times).

  python tools/bench_train_parts.py --configs=demo
  python tools/bench_train_parts.py --configs=base --batch_size=8 --rounds=5
"""

import os
import pathlib
import sys
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

_REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_REPO))
sys.path.insert(0, str(_REPO / 'tools'))

import bench_train  # noqa: E402 (its flags: --configs, --batch_size, --rounds, --pause_s, ...)
import torch  # noqa: E402
import torch_captioner  # noqa: E402

from aac_jax import config_path, models  # noqa: E402
from aac_jax.data import tokenizer  # noqa: E402
from aac_jax.models import conformer  # noqa: E402
from aac_jax.train import state, steps  # noqa: E402

Part = tuple[Callable[[], None], Callable[[], None], int]  # aac_jax run, PyTorch run, parameters.


def _jax_run(fn: Callable, *args) -> Callable[[], None]:
  """`fn(*args)` compiled once, as a run that waits for its result."""
  compiled = jax.jit(fn).lower(*args).compile()
  return lambda: jax.block_until_ready(compiled(*args))


def _square_sum_grad(apply: Callable, argnums) -> Callable:
  """Gradient of `sum(apply(...)**2)`: a forward + backward with a scalar loss."""
  return jax.grad(lambda *a: jnp.sum(jnp.square(apply(*a))), argnums=argnums)


def build_parts(config, vocab: int, batch_np: dict[str, np.ndarray]) -> dict[str, Part]:
  """Every part's aac_jax and PyTorch runs on `batch_np` (see the module docstring)."""
  cfg = models.make_captioner_config(config.model, vocab)
  model = models.Captioner(cfg)
  params = models.init_params(model, jax.random.key(0), num_mels=config.frontend.n_mels)
  twin = torch_captioner.from_config(config, vocab)
  torch_captioner.load_jax_params(twin, params)
  twin.train()
  rngs = {'dropout': jax.random.key(2)}
  parts = {}

  batch = {k: jnp.asarray(v) for k, v in batch_np.items()}
  audio, audio_pads = (
    torch.from_numpy(batch_np['audio']),
    torch.from_numpy(batch_np['audio_paddings']),
  )

  def features(b):
    return steps.compute_features(
      b, jax.random.key(1), config.frontend, config.dataset.sample_rate, augment=True
    )

  def torch_features():
    with torch.no_grad():
      twin.features(audio, audio_pads)

  parts['front end'] = (_jax_run(features, batch), torch_features, 0)

  feats, feat_pads = features(batch)
  t_feats, t_feat_pads = torch.from_numpy(np.array(feats)), torch.from_numpy(np.array(feat_pads))
  sub = conformer.ConvSubsampling(cfg)
  sub_params = {'params': params['encoder']['subsampling']}

  def sub_out(p, f):
    return sub.apply(p, f, feat_pads, rngs=rngs)[0]

  def torch_sub():
    x, _ = twin.encoder.subsampling(t_feats, t_feat_pads)
    x.square().sum().backward()

  parts['subsampling'] = (
    _jax_run(_square_sum_grad(sub_out, 0), sub_params, feats),
    torch_sub,
    models.count_params(sub_params),
  )

  x, x_pads = sub.apply(sub_params, feats, feat_pads, rngs=rngs)
  block = conformer.ConformerBlock(cfg)
  block_params = {'params': params['encoder']['block0']}
  t_x = torch.from_numpy(np.array(x)).requires_grad_()
  t_x_pads = torch.from_numpy(np.array(x_pads))
  keep = (1.0 - t_x_pads)[:, :, None]
  mask = torch_captioner.key_mask(t_x_pads)
  head_dim = cfg.encoder_dim // cfg.encoder_heads
  rotary = torch_captioner.rotary_tables(t_x.shape[1], head_dim, 'cpu')

  def torch_block():
    twin.encoder.block0(t_x, keep, mask, rotary).square().sum().backward()

  parts['block'] = (
    _jax_run(
      _square_sum_grad(lambda p, v: block.apply(p, v, x_pads, rngs=rngs), (0, 1)), block_params, x
    ),
    torch_block,
    models.count_params(block_params),
  )

  targets = jnp.asarray(batch_np['targets'])
  encoded = jnp.asarray(np.random.default_rng(1).normal(size=x.shape[:2] + (cfg.encoder_dim,)))
  encoded = encoded.astype(jnp.float32)
  enc_pads = jnp.zeros(encoded.shape[:2], jnp.float32)
  smoothing = config.optim.label_smoothing

  def decoder_loss(decoder_params, enc):
    logits = model.apply(
      {'params': {**params, 'decoder': decoder_params}},
      enc,
      enc_pads,
      tokenizer.shift_right(targets),
      method=lambda m, e, ep, t: m._decode_references(e, ep, t),
      rngs=rngs,
    )
    return steps.token_loss_sum(logits, targets, smoothing)[0]

  t_enc = torch.from_numpy(np.array(encoded)).requires_grad_()
  t_enc_pads = torch.from_numpy(np.array(enc_pads))
  t_targets = torch.from_numpy(batch_np['targets']).long()

  def torch_decoder_loss():
    inputs = torch_captioner.shift_right(t_targets)
    logits = twin.decoder(t_enc, t_enc_pads, inputs.reshape(-1, inputs.shape[-1]))
    logits = logits.reshape(*t_targets.shape, -1)
    torch_captioner.token_loss(logits, t_targets, smoothing).backward()

  parts['decoder+loss'] = (
    _jax_run(jax.grad(decoder_loss, argnums=(0, 1)), params['decoder'], encoded),
    torch_decoder_loss,
    models.count_params(params['decoder']),
  )

  tx, _ = state.create_optimizer(config.optim, config.train.num_steps)
  train_state = state.create_train_state(params, tx)
  ones = jax.tree.map(jnp.ones_like, params)
  torch_step = torch_captioner.make_train_step(
    twin, config.optim, config.train.num_steps, smoothing
  )
  for p in twin.parameters():
    p.grad = torch.ones_like(p)

  def torch_update():
    torch.nn.utils.clip_grad_norm_(twin.parameters(), torch_step.clip_norm, foreach=True)
    torch_step.optimizer.step()

  parts['optimizer'] = (
    _jax_run(lambda s, g: s.apply_gradients(tx, g), train_state, ones),
    torch_update,
    models.count_params(params),
  )

  rng = np.random.default_rng(2)
  frames = rng.normal(size=(x.shape[0] * cfg.encoder_heads, x.shape[1], head_dim))
  frames = frames.astype(np.float32)
  t_frames = torch.from_numpy(frames)
  parts['attention mm'] = (
    _jax_run(lambda q: jnp.einsum('bqd,bkd->bqk', q, q), jnp.asarray(frames)),
    lambda: torch.bmm(t_frames, t_frames.transpose(1, 2)),
    0,
  )
  rows = rng.normal(size=(x.shape[0] * x.shape[1], cfg.encoder_dim)).astype(np.float32)
  kernel = rng.normal(size=(cfg.encoder_dim, cfg.encoder_ff_dim)).astype(np.float32)
  t_rows, t_kernel = torch.from_numpy(rows), torch.from_numpy(kernel)
  parts['dense mm'] = (
    _jax_run(jnp.matmul, jnp.asarray(rows), jnp.asarray(kernel)),
    lambda: torch.mm(t_rows, t_kernel),
    0,
  )
  torch_counts = {
    'subsampling': torch_captioner.count_params(twin.encoder.subsampling),
    'block': torch_captioner.count_params(twin.encoder.block0),
    'decoder+loss': torch_captioner.count_params(twin.decoder),
    'optimizer': torch_captioner.count_params(twin),
  }
  for name, count in torch_counts.items():
    if count != parts[name][2]:
      raise ValueError(f'{name}: PyTorch has {count} parameters, aac_jax {parts[name][2]}')
  return parts


MODEL_PARTS = ('front end', 'subsampling', 'block', 'decoder+loss', 'optimizer')


def bench_parts(name: str) -> list[str]:
  """Table rows of config `name`'s parts, timed interleaved."""
  config = bench_train.get_bench_config(name)
  vocab = bench_train.vocab_size(name)
  batch_np = bench_train.random_batch(config, vocab, np.random.default_rng(0))
  parts = build_parts(config, vocab, batch_np)
  rows, totals = [], {'aac_jax': 0.0, 'torch': 0.0}
  for part, (jax_run, torch_run, count) in parts.items():
    times = bench_train.interleaved_times(
      {'aac_jax': jax_run, 'torch': torch_run},
      flags.FLAGS.rounds,
      pause_s=flags.FLAGS.pause_s,
    )
    medians = {k: float(np.median(v)) for k, v in times.items()}
    decimals = 2 if medians['aac_jax'] < 0.01 else 0
    if part in MODEL_PARTS:
      repeat = config.model.encoder_layers if part == 'block' else 1
      for k in totals:
        totals[k] += repeat * medians[k]
    rows.append(
      f'| {name} | {part} | {count:,} | {bench_train.spread(times["aac_jax"], decimals)} '
      f'| {bench_train.spread(times["torch"], decimals)} | {medians["torch"] / medians["aac_jax"]:.2f}x |'
    )
  rows.append(
    f'| {name} | model parts summed | | {totals["aac_jax"] * 1e3:.0f} | {totals["torch"] * 1e3:.0f} '
    f'| {totals["torch"] / totals["aac_jax"]:.2f}x |'
  )
  return rows


def main(argv):
  del argv
  print(
    bench_train.describe_machine()
    + f', torch {torch.__version__}, {torch.get_num_threads()} threads'
  )
  rows = [row for name in flags.FLAGS.configs for row in bench_parts(name)]
  print(f'\nInterleaved, {flags.FLAGS.rounds} rounds, median [25th-75th percentile] in ms:')
  bench_train.print_table(
    '| config | part | parameters | aac_jax | PyTorch eager | PyTorch / aac_jax |'
  )
  print('\n'.join(rows))
  print(f'load average at the end: {os.getloadavg()[0]:.2f}')


if __name__ == '__main__':
  app.run(main, flags_parser=config_path.parse_flags)
