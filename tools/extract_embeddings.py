"""Runs a frozen pretrained encoder once over a built training split and stores its frames.

  python tools/extract_embeddings.py --config configs/clotho_convnext.py:encoder_init=pretrained/convnext
  python -m aac_jax.main --config configs/clotho_convnext.py:encoder_init=pretrained/convnext \\
      --config.dataset.embeddings=auto --workdir workdirs/clotho_convnext

Writes `aac_embeddings/<name>` (TFDS array_record) under the config's
dataset.data_dir; `<name>` is `dataset.embeddings` or, when that is '' or
'auto', `<dataset>_<builder config>_<encoder>`. See aac_jax/data/embeddings.py.
"""

import sys

from absl import app
from ml_collections import config_flags

from aac_jax import config_path
from aac_jax.data import embeddings
from aac_jax.models import pretrained_setup

_CONFIG = config_flags.DEFINE_config_file(
  'config', None, 'The run config (configs/*.py[:variant]).'
)


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  config = _CONFIG.value
  pretrained_setup.resolve_encoder_frontend(config, check_embeddings=False)
  if config.model.encoder == 'conformer':
    raise app.UsageError('model.encoder is the conformer: nothing pretrained to extract')
  tagger, params = pretrained_setup.make_tagger_and_params(config)
  path, count = embeddings.extract_train_embeddings(config, tagger, params)
  print(f'wrote {count} clips of {config.model.encoder} frames to {path}')
  return 0


if __name__ == '__main__':
  config_path.add_config_root_to_path(sys.argv)
  app.run(main, flags_parser=config_path.parse_flags)
