"""aac_jax/xla_cpu.py: the XLA:CPU flags aac_jax sets before JAX starts."""

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
