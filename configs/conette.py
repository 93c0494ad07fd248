"""CoNeTTE (Labbé et al., 2024) in aac_jax: the published captioner, then fine-tuning and SCST.

  python tools/convert_checkpoint.py conette --input conette_hf --output workdirs/conette
  aac-caption --workdir workdirs/conette clip.wav
  python -m aac_jax.main --config configs/conette.py:init_from=workdirs/conette \\
      --workdir workdirs/conette_clotho
  python -m aac_jax.scst.main --config configs/conette.py:init_from=workdirs/conette_clotho,scst \\
      --workdir workdirs/conette_clotho_scst

Without `init_from` this is the published model's layout (conette 0.3.2
`huggingface/config.py` defaults and `pl_modules/conette.py`): ConvNeXt-Tiny
with CoNeTTE's stem, the "lin768" projection to d_model 256, a 6-layer
post-norm decoder (8 heads, feed-forward 2048, GELU, dropout 0.2), the
dataset task token, beam 3 with its stop-word repetition ban, 3 to 20 words.
Validation, the best-checkpoint choice and the test scores use that same
beam search (`config.eval.decode` = `config.decode`), as CoNeTTE's own
validation and test steps do (`pl_modules/conette.py`: `method="generate"`).
`tools/convert_checkpoint.py conette` fills the vocabulary-dependent fields
(task token, repeatable tokens) from the checkpoint and saves the result as
the run's `config.json`.

Variants (after ':'):
  init_from=DIR  a converted (or fine-tuned) CoNeTTE run folder: its model,
                 front end and decoding sections are used as they are (the
                 parameters and vocabulary must fit), and training starts
                 from its parameters.
  data=NAME      'clotho' (default) or 'audiocaps', built at 32 kHz
                 (`aac-build-dataset clotho --source_dir DIR --sample_rate 32000`);
                 for your own data override --config.dataset.name etc.
  scst           the SCST stage (sampling, CIDEr-D reward, no dropout).
  runlocal       a smoke run: a few steps of small batches on short clips.
"""

import json
import pathlib

import ml_collections

from configs import base
from configs.config_args import parse_config_arg

_DATASETS = {'clotho': ('clotho_aac', 'development', 'validation', 'evaluation'),
             'audiocaps': ('audiocaps_aac', 'train', 'val', 'test')}  # fmt: skip


def set_published_model(config: ml_collections.ConfigDict) -> None:
  """The published CoNeTTE's architecture and decoding (config.json of the hub folder)."""
  m = config.model
  m.encoder = 'convnext'  # preprocessor.py: convnext_tiny(..., waveform_input=True).
  m.convnext_stem = 'conette'  # preprocessor.py: after_stem_dim=[252, 56].
  m.encoder_freeze = 'all'  # CoNeTTE trained its decoder on stored ConvNeXt frame embeddings.
  m.encoder_projection = True  # proj_name='lin768': Dropout, Linear(768, d_model), ReLU, Dropout.
  m.projection_dropout = 0.5  # build_proj_lin's dropout_p.
  m.encoder_layers = 0
  m.encoder_dim = m.decoder_dim = 256  # d_model.
  m.decoder_style = 'conette'  # AACTransformerDecoder.
  m.decoder_layers = 6  # num_decoder_layers.
  m.decoder_heads = 8  # nhead.
  m.decoder_ff_dim = 2048  # dim_feedforward.
  m.dropout = m.attention_dropout = 0.2  # decoder_dropout_p.
  m.max_decode_len = 32
  d = config.decode
  d.method = 'conette_beam'  # nn/decoding/beam.py generate.
  d.beam_size = 3  # beam_size.
  d.min_len = 3  # min_pred_size.
  d.max_len = 21  # max_pred_size 20 words, then EOS.
  d.ban_repeated_content_words = True  # forbid_rep_mask 'content_words' (NLTK stop words repeat).
  # d.repeatable_tokens: filled from the checkpoint's forbid_rep_mask by the converter.
  config.optim.label_smoothing = 0.2  # label_smoothing.


def _from_run(config: ml_collections.ConfigDict, run_dir: str) -> None:
  """Takes model, front end and decoding from a converted or fine-tuned run's config.json."""
  path = pathlib.Path(run_dir).expanduser() / 'config.json'
  if not path.is_file():
    raise FileNotFoundError(
      f'{path} not found: init_from must be a run folder written by '
      '`tools/convert_checkpoint.py conette` or by training'
    )
  saved = json.loads(path.read_text())
  for section in ('model', 'frontend', 'decode'):
    config[section] = ml_collections.ConfigDict(saved[section])
  config.train.init_from = run_dir


def _set_data(config: ml_collections.ConfigDict, name: str) -> None:
  if name not in _DATASETS:
    raise ValueError(f'data must be one of {sorted(_DATASETS)}, got {name!r}')
  ds = config.dataset
  ds.name, ds.train_split, ds.validation_split, ds.test_split = _DATASETS[name]
  ds.builder_config = '32000hz'  # Built with --sample_rate 32000 (the ConvNeXt's rate).
  ds.sample_rate = 32000
  ds.build_if_missing = False  # Built from the user's files.
  ds.max_audio_seconds = 30.0  # CoNeTTE was trained on 1-30 s clips.
  ds.max_caption_tokens = 21


def _set_scst(config: ml_collections.ConfigDict) -> None:
  config.scst.enabled = True
  config.scst.num_samples = 5
  config.scst.baseline = 'mean_others'
  config.model.dropout = config.model.attention_dropout = 0.0  # Sampled policy = updated one.
  config.model.projection_dropout = 0.0
  config.optim.lr = 1e-5
  config.optim.label_smoothing = 0.0


def _shrink(config: ml_collections.ConfigDict) -> None:
  ds = config.dataset
  ds.max_audio_seconds = 2.0
  config.scst.num_samples = 2
  t = config.train
  t.batch_size = 8
  t.num_steps = t.eval_every = t.checkpoint_every = 2
  t.log_every = 1
  config.eval.batch_size = 8
  config.eval.max_examples = 8
  config.eval.test_at_end = False


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_config_arg(
    arg, {'init_from': '', 'data': 'clotho', 'scst': False, 'runlocal': False}
  )
  config = base.get_base_config()
  set_published_model(config)
  _set_data(config, args['data'])
  config.optim.lr = 5e-5  # Fine-tuning a trained model: a tenth of CoNeTTE's 5e-4.
  config.optim.warmup_steps = 100
  config.train.num_steps = 5000
  config.train.eval_every = 500
  config.frontend.spec_augment = False
  if args['init_from']:
    _from_run(config, args['init_from'])
  if args['scst']:
    _set_scst(config)
  if args['runlocal']:
    _shrink(config)
  base.score_with_decode(config)
  return config
