"""The DCASE 2024 task 6 baseline (CNext-trans) on Clotho v2.1: frozen ConvNeXt-Tiny + decoder.

  python tools/convert_checkpoint.py convnext --input convnext_tiny_465mAP_BL_AC_70kit.pth \\
      --output pretrained/convnext_bl
  aac-build-dataset clotho --source_dir ~/data/clotho --sample_rate 32000
  python -m aac_jax.main --config configs/clotho_convnext.py:encoder_init=pretrained/convnext_bl \\
      --workdir workdirs/clotho_convnext

Sources of the values (Labbeti/dcase2024-task6-baseline): "README" = its
README.md "Main hyperparameters" table (commit 100bdda); "model" =
src/dcase24t6/models/trans_decoder.py (commit 219218c); "decoder" =
src/dcase24t6/nn/decoders/aac_tfmer.py; "beam" = src/dcase24t6/nn/decoding/
beam.py; "common" = src/dcase24t6/nn/decoding/common.py; "pre" =
src/dcase24t6/pre_processes/cnext.py; "ckpt" = src/dcase24t6/nn/ckpt.py;
"sched" = src/dcase24t6/optim/schedulers.py; "groups" =
src/dcase24t6/optim/utils.py; "train" = src/conf/train.yaml.

The model is the baseline's: its ConvNeXt has CoNeTTE's stem ("pre":
`after_stem_dim=[252, 56]`, the `cnext_bl_70` file of "ckpt"), its decoder
is CoNeTTE's `AACTransformerDecoder` (post-norm, GELU, untied classifier:
`model.decoder_style='conette'`), and validation and test captions come from
its beam search ("model": `method="generate"`, CoNeTTE's `generate`:
`decode.method='conette_beam'`, NLTK stop words may repeat). Known
differences: the baseline keeps the checkpoint with the lowest validation
loss (teacher-forced cross-entropy, "train": `monitor: val/loss`); aac_jax
computes no validation loss, so this recipe keeps the best validation
CIDEr-D (which the baseline also logs each epoch). The baseline's cosine
decays once per epoch ("sched" on Lightning's epoch interval), ours per
update.

Variants (after ':'):
  encoder_init=DIR  the converted ConvNeXt folder ('' = random tagger).
  freeze=all|none|N the tagger's frozen stages (baseline: all).
  embeddings=auto   train from stored frames (tools/extract_embeddings.py), as the
                    baseline trains from its HDF features; evaluation stays on audio.
  runlocal          a smoke run (tiny decoder, a few steps; used by the tests).
"""

import ml_collections

from configs import base
from configs.config_args import parse_config_arg

CLOTHO_DEV_CLIPS = 3839  # Clotho v2.1 development split.

# "common": the tokens that may repeat under the baseline's repetition ban are
# NLTK's English stop words (nltk.corpus.stopwords.words('english'), 179 words);
# every other token, special ones included, at most once per caption.
NLTK_ENGLISH_STOPWORDS = tuple(
  "i me my myself we our ours ourselves you you're you've you'll you'd your yours yourself "
  "yourselves he him his himself she she's her hers herself it it's its itself they them their "
  "theirs themselves what which who whom this that that'll these those am is are was were be "
  'been being have has had having do does did doing a an the and but if or because as until '
  'while of at by for with about against between into through during before after above below '
  'to from up down in out on off over under again further then once here there when where why '
  'how all any both each few more most other some such no nor not only own same so than too '
  "very s t can will just don don't should should've now d ll m o re ve y ain aren aren't "
  "couldn couldn't didn didn't doesn doesn't hadn hadn't hasn hasn't haven haven't isn isn't ma "
  "mightn mightn't mustn mustn't needn needn't shan shan't shouldn shouldn't wasn wasn't weren "
  "weren't won won't wouldn wouldn't".split()
)


def set_baseline_model(config: ml_collections.ConfigDict, encoder_init: str, freeze: str) -> None:
  """Encoder, projection, decoder and mixup of the baseline (shared with AudioCaps)."""
  m = config.model
  m.encoder = 'convnext'  # "model": ConvNeXt-Tiny frame embeddings (in_features=768).
  m.encoder_init = encoder_init
  m.encoder_freeze = freeze  # The baseline stores frozen ConvNeXt features in HDF files.
  m.convnext_stem = 'conette'  # "pre": convnext_tiny(after_stem_dim=[252, 56]).
  m.encoder_projection = True  # "model": Dropout(0.5), Linear(768, d_model), ReLU, Dropout(0.5).
  m.projection_dropout = 0.5  # "model".
  m.encoder_layers = 0  # "model": no layers between the projection and the decoder.
  m.encoder_dim = 256  # "README": d_model 256.
  m.decoder_dim = 256  # "README": d_model 256.
  m.decoder_style = 'conette'  # "decoder": AACTransformerDecoder (post-norm, GELU, untied).
  m.decoder_layers = 6  # "decoder": num_decoder_layers=6.
  m.decoder_heads = 8  # "decoder": nhead=8.
  m.decoder_ff_dim = 2048  # "decoder": dim_feedforward=2048.
  m.dropout = 0.2  # "decoder": dropout=0.2.
  m.attention_dropout = 0.2  # "decoder": torch's layer applies the same dropout to attention.
  m.task_token_id = -1  # "model": every caption starts with BOS (no task token).
  m.max_decode_len = 25  # max_caption_tokens + BOS.
  m.mixup_alpha = 0.4  # "README": mixup alpha 0.4 ("model": frames and decoder inputs).


def set_baseline_training(config: ml_collections.ConfigDict, train_clips: int) -> None:
  """Optimizer, schedule, batch and decoding of the baseline."""
  o = config.optim
  o.lr = 5e-4  # "README": learning rate 5e-4.
  o.weight_decay = 2.0  # "README": weight decay 2 ("groups": not on biases and 1-D params).
  o.b1, o.b2 = 0.9, 0.999  # "model": AdamW betas (0.9, 0.999).
  o.clip_norm = 1.0  # "README": gradient clipping 1.
  o.label_smoothing = 0.2  # "README": label smoothing 0.2.
  o.warmup_steps = 0  # "sched": cosine decay from the first step, no warm-up.
  o.end_lr_ratio = 0.0  # "sched": 0.5 * (1 + cos(pi * step / n)) goes to 0.
  o.grad_accum_steps = 8  # "README": gradient accumulation 8.
  t = config.train
  t.batch_size = 64 * 8  # "README": batch size 64, times 8 accumulated = one update.
  # "README": 400 epochs of the training split, in updates of 512 clips.
  t.num_steps = round(400 * train_clips / t.batch_size)
  t.eval_every = max(t.num_steps // 40, 1)
  # "train" monitors val/loss (min); aac_jax has no validation loss (see the docstring).
  t.best_metric, t.best_mode = 'cider_d', 'max'
  d = config.decode
  d.method = 'conette_beam'  # "model": validation and test use "beam" `generate`.
  d.beam_size = 3  # "README": beam size 3.
  d.min_len = 3  # "model": min_pred_size 3.
  d.max_len = 21  # "model": max_pred_size 20 words, then EOS.
  d.ban_repeated_content_words = True  # "model"/"common": forbid_rep_mask of content words.
  d.repeatable_tokens = list(NLTK_ENGLISH_STOPWORDS)  # "common".
  base.score_with_decode(config)  # "model": validation_step and test_step decode the same way.


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_config_arg(
    arg, {'encoder_init': '', 'freeze': 'all', 'embeddings': '', 'runlocal': False}
  )
  config = base.get_base_config()
  ds = config.dataset
  ds.name = 'clotho_aac'
  ds.builder_config = '32000hz'  # Built with --sample_rate 32000 (the ConvNeXt's rate).
  ds.sample_rate = 32000  # The ConvNeXt's front end runs at 32 kHz (conette convnext.py).
  ds.build_if_missing = False  # Built from the user's files (see README).
  ds.train_split, ds.validation_split, ds.test_split = 'development', 'validation', 'evaluation'
  ds.max_audio_seconds = 30.0  # Whole Clotho clips (15-30 s), as the baseline's features.
  ds.max_caption_tokens = 24
  ds.captions_per_clip = 1  # "model": one caption per clip and step (needed by mixup).
  ds.vocab_min_count = 1  # The baseline's word tokenizer keeps every training word.
  ds.num_workers = 4
  ds.embeddings = args['embeddings']  # 'auto': train from tools/extract_embeddings.py's frames.
  config.frontend.spec_augment = False  # The baseline trains on fixed (frozen) features.
  set_baseline_model(config, args['encoder_init'], str(args['freeze']))
  set_baseline_training(config, CLOTHO_DEV_CLIPS)
  config.eval.meteor = True
  if args['runlocal']:
    shrink_for_smoke_run(config)
  return config


def shrink_for_smoke_run(config: ml_collections.ConfigDict) -> None:
  """A few steps of a tiny decoder on short clips (the ConvNeXt keeps its size)."""
  ds = config.dataset
  ds.num_workers = 0
  ds.max_audio_seconds = 2.0
  m = config.model
  m.encoder_dim = m.decoder_dim = 32
  m.decoder_layers, m.decoder_heads, m.decoder_ff_dim = 1, 2, 64
  config.optim.grad_accum_steps = 1  # One clip per device with 8 test devices.
  t = config.train
  t.batch_size = 8
  t.num_steps = 3
  t.eval_every = 3
  t.checkpoint_every = 3
  t.log_every = 1
  config.eval.batch_size = 8
  config.eval.max_examples = 8
  config.eval.meteor = False
