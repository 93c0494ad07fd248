"""Captions audio files with a trained model; same as the `aac-caption` command.

  python tools/caption.py --workdir workdirs/demo/ce clips/ street.mp3
  python tools/caption.py --workdir RUN --method beam --beam_size 5 --output captions.csv clips/

See `aac_jax/caption_cli.py` for every flag.
"""

from aac_jax import caption_cli

if __name__ == '__main__':
  caption_cli.run()
