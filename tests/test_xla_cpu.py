"""aac_jax/xla_cpu.py: the XLA:CPU flags and the threefry lowering `import aac_jax` applies."""

import os
import subprocess
import sys

from aac_jax import xla_cpu

FLAG = '--xla_cpu_experimental_ynn_fusion_type=-individual_convolution,-individual_dot'


def test_flags_are_added_to_the_users_flags():
  assert xla_cpu.flags_with_defaults('', '0.10.2') == FLAG
  ours = xla_cpu.flags_with_defaults(' --xla_force_host_platform_device_count=8 ', '0.10.2')
  assert ours == f'--xla_force_host_platform_device_count=8 {FLAG}'


def test_the_users_choice_and_unknown_jaxlib_versions_are_left_alone():
  theirs = '--xla_cpu_experimental_ynn_fusion_type=+individual_dot'
  assert xla_cpu.flags_with_defaults(theirs, '0.10.2') == theirs
  # XLA aborts on flags it does not know: other versions get nothing added.
  assert xla_cpu.flags_with_defaults('--a=1', '0.11.0') == '--a=1'


SHOW_CONV = """
import aac_jax, jax, jax.numpy as jnp
layout = ('NHWC', 'HWIO', 'NHWC')  # As the conformer's subsampling (flax nn.Conv).
pad = ((1, 1), (1, 1))
conv = jax.jit(lambda x, w: jax.lax.conv_general_dilated(x, w, (2, 2), pad, dimension_numbers=layout))
print(conv.lower(jnp.ones((8, 501, 32, 64)), jnp.ones((3, 3, 64, 64))).compile().as_text())
"""


def _compiled_conv(xla_flags: str) -> str:
  env = dict(os.environ, XLA_FLAGS=xla_flags, JAX_PLATFORMS='cpu')
  run = subprocess.run([sys.executable, '-c', SHOW_CONV], env=env, capture_output=True, text=True)
  assert run.returncode == 0, run.stderr
  return run.stdout


def test_importing_aac_jax_applies_them():
  assert FLAG in os.environ['XLA_FLAGS'].split()  # This process (conftest set XLA_FLAGS first).
  # A convolution compiles to XLA's own kernel, not to a YNNPACK fusion,
  # which it does when the user asks for YNNPACK (their flag wins).
  assert '__ynn_fusion' not in _compiled_conv('')
  assert '__ynn_fusion' in _compiled_conv('--xla_cpu_experimental_ynn_fusion_type=+individual_dot')


# Random123's known-answer vectors for threefry2x32 (20 rounds): key, counter -> output.
THREEFRY_KATS = [
  ((0x00000000, 0x00000000), (0x00000000, 0x00000000), (0x6B200159, 0x99BA4EFE)),
  ((0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF), (0x1CB996FC, 0xBB002BE7)),
  ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0)),
]

SHAPES = ((3, 1001), (3, 30001))  # Below and above xla_cpu.UNROLL_MIN_SIZE counters.
BITS_DIGEST = """
import hashlib, jax, numpy as np
jax.config.update('jax_threefry_partitionable', True)  # As aac_jax.
for shape in {shapes}:
  bits = jax.jit(lambda k: jax.random.bits(k, shape))(jax.random.key(42))
  print(hashlib.sha256(np.asarray(bits).tobytes()).hexdigest())
"""


def test_large_threefry_calls_are_unrolled_on_cpu_and_compute_the_same_bits():
  import hashlib  # noqa: PLC0415

  import jax  # noqa: PLC0415
  import jax.extend  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415

  assert SHAPES[0][0] * SHAPES[0][1] < xla_cpu.UNROLL_MIN_SIZE <= SHAPES[1][0] * SHAPES[1][1]
  key = jax.random.key(42)
  draws = [jax.jit(lambda k, shape=shape: jax.random.bits(k, shape)) for shape in SHAPES]
  assert 'stablehlo.while' in draws[0].lower(key).as_text()  # JAX's CPU lowering: a loop.
  assert 'stablehlo.while' not in draws[1].lower(key).as_text()
  # The unrolled hash is threefry2x32: Random123's answers, each counter pair repeated.
  n = xla_cpu.UNROLL_MIN_SIZE
  threefry = jax.jit(jax.extend.random.threefry_2x32)
  for key_words, (c0, c1), (e0, e1) in THREEFRY_KATS:
    counters = np.concatenate([np.full(n, c0, np.uint32), np.full(n, c1, np.uint32)])
    out = np.asarray(threefry(np.array(key_words, np.uint32), counters))
    assert (out[:n] == e0).all() and (out[n:] == e1).all()
  # The same bits as JAX's own (rolled) CPU lowering, in a process without aac_jax.
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  script = BITS_DIGEST.format(shapes=SHAPES)
  run = subprocess.run([sys.executable, '-c', script], env=env, capture_output=True, text=True)
  assert run.returncode == 0, run.stderr
  ours = [hashlib.sha256(np.asarray(draw(key)).tobytes()).hexdigest() for draw in draws]
  assert run.stdout.split() == ours
