"""Pretrain on WavCaps + AudioCaps + Clotho + MACS, then fine-tune on Clotho.

The recipe of CoNeTTE (Labbé et al., 2023, arXiv:2309.00454: the four
datasets, one task token per dataset and per WavCaps source) and SLAM-AAC (Chen et al., 2024,
arXiv:2410.09503: pretrain on WavCaps, AudioCaps, Clotho and MACS, then
fine-tune on Clotho). Build the four datasets first (docs/datasets.md,
"Pretraining on WavCaps").

  python -m aac_jax.main --config configs/pretrain_wavcaps.py \\
      --workdir workdirs/pretrain_wavcaps
  python -m aac_jax.main \\
      --config configs/pretrain_wavcaps.py:stage=finetune,init_from=workdirs/pretrain_wavcaps \\
      --workdir workdirs/finetune_clotho

Variants (after ':'):
  stage=pretrain|finetune  the mixture of four datasets, or Clotho alone from
    the pretrained run (`init_from`, whose vocabulary, task tokens included,
    it inherits).
  init_from=DIR  the pretrained run (finetune).
  runlocal       synthetic stand-ins (the three splits of synthetic_aac/tiny
    play three sources) and a smoke-run size.
"""

import ml_collections

from configs import clotho, synthetic_demo
from configs.config_args import parse_config_arg

# Weights = clip counts, so that every clip is drawn about once per pass over
# the mixture, as CoNeTTE's concatenation of the datasets does. Counts: WavCaps
# 403,050 clips (Mei et al., 2024: AudioSet_SL 108,317, BBC 31,201, FreeSound
# 262,300, SoundBible 1,232; fewer after --exclude), AudioCaps v1 train.csv
# 49,838 rows (one clip each; copies from YouTube miss some), Clotho v2.1
# development 3,839 clips, MACS 3,930 clips. Rescale them to your builds'
# clips_written (build_report.json) if they differ much.
# Task tokens as CoNeTTE's: one per dataset, and one per WavCaps source
# ('wavcaps_{source}': the record's source folder, lower-cased), i.e. the
# tasks clotho, audiocaps, macs, wavcaps_audioset_sl, wavcaps_bbc_sound_effects,
# wavcaps_freesound and wavcaps_soundbible of its released model
# (github.com/Labbeti/conette-audio-captioning, src/conette/huggingface/model.py:
# CoNeTTEConfig(task_mode='ds_src', task_names=...); Labbé et al., 2023, arXiv:2309.00454).
PRETRAIN_MIXTURE = (
  ('wavcaps_aac', 'train', 403050, 'wavcaps_{source}'),
  ('audiocaps_aac', 'train', 49838, 'audiocaps'),
  ('clotho_aac', 'development', 3839, 'clotho'),
  ('macs_aac', 'train', 3930, 'macs'),
)
# Fine-tuning keeps the Clotho task token the pretrained decoder learnt.
FINETUNE_MIXTURE = (('clotho_aac', 'development', 1.0, 'clotho'),)
LOCAL_MIXTURE = (
  ('synthetic_aac/tiny', 'train', 0.6, 'wavcaps'),
  ('synthetic_aac/tiny', 'validation', 0.25, 'audiocaps'),
  ('synthetic_aac/tiny', 'test', 0.15, 'clotho'),
)
STAGES = ('pretrain', 'finetune')


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_config_arg(arg, {'stage': 'pretrain', 'init_from': '', 'runlocal': False})
  if args['stage'] not in STAGES:
    raise ValueError(f'stage={args["stage"]!r}: choose one of {STAGES}')
  if args['runlocal']:
    config = synthetic_demo.get_config('runlocal')
    config.dataset.captions_per_clip = 1  # AudioCaps train, MACS and WavCaps: 1 per draw.
    config.dataset.mixture = LOCAL_MIXTURE if args['stage'] == 'pretrain' else LOCAL_MIXTURE[:1]
  else:
    config = clotho.get_config()  # Validation and test: Clotho's (the fine-tuning target).
    config.dataset.mixture = PRETRAIN_MIXTURE if args['stage'] == 'pretrain' else FINETUNE_MIXTURE
    # Longest clip of the mixture (Clotho: 30 s); WavCaps clips are cropped at random.
    config.dataset.max_audio_seconds = 30.0
    config.dataset.vocab_min_count = 3
    if args['stage'] == 'pretrain':
      config.train.num_steps = 200000  # ~ 28 passes over 460 k clips at batch 64.
      config.train.eval_every = 5000
    else:
      config.optim.lr = config.optim.lr / 5  # Fine-tuning from a pretrained run: smaller steps.
  config.train.init_from = args['init_from']
  return config
