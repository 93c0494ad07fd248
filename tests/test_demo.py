"""The README's main job (`launch/demo.sh` -> `python -m aac_jax.demo`) at smoke size.

The same entry point a user runs, as a subprocess on one CPU device, with the
runlocal configs and the data built into an empty folder: the synthetic
dataset is built, the cross-entropy and SCST stages train, and the table of
the constant baseline, CE and SCST is printed and written.
"""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_smoke_demo_builds_trains_both_stages_and_writes_the_table(tmp_path, jax_cache):
  data_dir = tmp_path / 'tensorflow_datasets'
  workdir = tmp_path / 'demo'
  command = [sys.executable, '-m', 'aac_jax.demo', f'--workdir={workdir}']
  command += [
    '--config=configs/synthetic_demo.py:runlocal',
    f'--config.dataset.data_dir={data_dir}',
  ]
  command += ['--scst_config=configs/synthetic_demo_scst.py:runlocal']
  command += [f'--scst_config.dataset.data_dir={data_dir}']
  env = dict(os.environ, JAX_PLATFORMS='cpu', JAX_COMPILATION_CACHE_DIR=str(jax_cache))
  env['XLA_FLAGS'] = ' '.join(  # One device, as on a laptop; the session's other flags.
    [f for f in env.get('XLA_FLAGS', '').split() if 'device_count' not in f]
  )
  result = subprocess.run(
    command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900, check=False
  )
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
  assert (data_dir / 'synthetic_aac' / 'tiny').is_dir()
  table = (workdir / 'results.md').read_text()
  for row in ('| baseline |', '| CE |', '| SCST |'):
    assert row in table and row in result.stdout, row
  scores = json.loads((workdir / 'results.json').read_text())
  assert set(scores) == {'baseline', 'CE', 'SCST'}
  assert all(0.0 <= scores[s]['cider_d'] < 10.0 for s in scores)
  for stage in ('ce', 'scst'):
    assert list((workdir / stage / 'checkpoints').iterdir()), stage
