"""Run-level set-up of a pretrained tagger encoder: front end, checkpoint, freezing.

- `resolve_encoder_frontend(config)`: with `model.encoder` a tagger, the
  front end follows the encoder (its converted folder's `settings.json`, or
  the published model's settings without `encoder_init`; for 'htsat' the
  CLAP folder's `preprocessor_config.json`, whose `config.json` must have
  `model.htsat`'s sizes), and a dataset at another sample rate is refused
  before any work starts.
- `load_encoder_init(params, model_cfg)`: puts the converted tagger params
  into a freshly initialised params tree (checked leaf by leaf).
- `load_llm_init(params, model_cfg)`: puts a converted language model
  (`model.llm.init`) into `params['decoder']['llm']`; `load_converted_init`
  does both where set (a run's fresh start).
- `freeze_optimizer(tx, model_cfg)`: frozen parameters get zero updates
  (no weight decay either), so they stay bit-identical.
"""

import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from aac_jax.audio.clap_frontend import ClapFrontendSettings
from aac_jax.audio.pann_frontend import PannFrontendSettings
from aac_jax.data import embeddings
from aac_jax.models import llm, llm_bridge, pretrained, pretrained_store
from aac_jax.models.config import CaptionerConfig, htsat_config
from aac_jax.models.htsat_encoder import load_tagger_params, read_folder

# Published front-end settings per encoder (what `tools/convert_checkpoint.py` writes).
DEFAULT_FRONTENDS = {
  'convnext': PannFrontendSettings(n_mels=224),
  'cnn14': PannFrontendSettings(n_mels=64),
}
_BUILDERS = {'clotho_aac': 'clotho', 'audiocaps_aac': 'audiocaps'}


def encoder_frontend(model_cfg: ml_collections.ConfigDict) -> PannFrontendSettings:
  """Front-end settings of `model.encoder` (from `model.encoder_init` where set)."""
  encoder = model_cfg.encoder
  path = model_cfg.encoder_init
  if not path:
    return DEFAULT_FRONTENDS[encoder]
  settings = pretrained_store.load_settings(path)
  if settings.get('encoder') != encoder:
    raise ValueError(
      f'model.encoder_init={path} holds a converted {settings.get("encoder")!r} model '
      f'but model.encoder is {encoder!r}'
    )
  return PannFrontendSettings.from_dict(settings['frontend'])


def _check_sample_rate(dataset_cfg: ml_collections.ConfigDict, encoder: str, rate: int) -> None:
  if int(dataset_cfg.sample_rate) == rate:
    return
  builder = _BUILDERS.get(dataset_cfg.name, 'clotho|audiocaps|custom')
  raise ValueError(
    f'model.encoder={encoder!r} takes {rate} Hz audio but config.dataset.sample_rate is '
    f'{dataset_cfg.sample_rate}: build the dataset at {rate} Hz with '
    f'`aac-build-dataset {builder} --source_dir DIR --sample_rate {rate}` and set '
    f'--config.dataset.sample_rate={rate} --config.dataset.builder_config={rate}hz'
  )


def resolve_encoder_frontend(
  config: ml_collections.ConfigDict, check_embeddings: bool = True
) -> None:
  """Makes `config.frontend` the tagger's front end (in place); no-op for the conformer.

  With `dataset.embeddings` set (and `check_embeddings`), also checks the
  stored embeddings against the run and sets `dataset.embeddings_dir`.

  Raises:
    ValueError: the dataset's sample rate is not the encoder's (the message
      names the build command with `--sample_rate`), `encoder_init` holds
      another model, or stored embeddings do not fit the run.
  """
  encoder = config.model.encoder
  if encoder == 'conformer':
    if config.dataset.embeddings:
      raise ValueError(
        'dataset.embeddings needs a pretrained model.encoder (convnext, cnn14 or htsat)'
      )
    return
  if encoder == 'htsat':
    _resolve_clap_frontend(config)
  elif encoder in DEFAULT_FRONTENDS:
    _resolve_pann_frontend(config)
  else:
    raise ValueError(
      f'model.encoder must be conformer, htsat or one of {sorted(DEFAULT_FRONTENDS)}'
    )
  if check_embeddings and config.dataset.embeddings:
    _resolve_embeddings(config)


def _resolve_pann_frontend(config: ml_collections.ConfigDict) -> None:
  settings = encoder_frontend(config.model)
  _check_sample_rate(config.dataset, config.model.encoder, settings.sample_rate)
  with config.unlocked():
    f = config.frontend
    f.kind = 'pann'
    f.n_fft = f.win_length = settings.n_fft
    f.hop_length = settings.hop_length
    f.n_mels = settings.n_mels
    f.fmin, f.fmax, f.amin = float(settings.fmin), float(settings.fmax), float(settings.amin)
    # The tagger normalises its own input (its first BatchNorm).
    f.feature_stats, f.feature_mean, f.feature_std = 'fixed', 0.0, 1.0


def _resolve_clap_frontend(config: ml_collections.ConfigDict) -> None:
  """The 'clap' front end of `encoder_init`'s CLAP folder (published defaults without one)."""
  settings = ClapFrontendSettings()
  if config.model.encoder_init:
    clap_config, settings = read_folder(config.model.encoder_init)
    wanted = htsat_config(config.model.htsat)
    differ = [
      f'{k}={getattr(clap_config.audio, k)!r}'
      for k in wanted.__dataclass_fields__
      if getattr(clap_config.audio, k) != getattr(wanted, k)
    ]
    if differ:
      raise ValueError(
        f'model.encoder_init={config.model.encoder_init} holds an HTS-AT with '
        f'{", ".join(differ)}: set those model.htsat fields'
      )
  _check_sample_rate(config.dataset, 'htsat', settings.sample_rate)
  with config.unlocked():
    f = config.frontend
    f.kind = 'clap'
    f.n_fft = f.win_length = settings.n_fft
    f.hop_length, f.n_mels = settings.hop_length, settings.n_mels
    f.fmin, f.fmax = float(settings.fmin), float(settings.fmax)
    f.clap_max_length_s, f.clap_htk = settings.max_length_s, settings.fusion
    # The tower normalises its own input (its first BatchNorm).
    f.feature_stats, f.feature_mean, f.feature_std = 'fixed', 0.0, 1.0


def _resolve_embeddings(config: ml_collections.ConfigDict) -> None:
  if config.model.encoder_freeze != 'all':
    raise ValueError(
      "dataset.embeddings (stored tagger frames) needs model.encoder_freeze='all', got "
      f'{config.model.encoder_freeze!r}'
    )
  if not config.model.encoder_init:
    raise ValueError(
      'dataset.embeddings needs model.encoder_init (the converted tagger they came from)'
    )
  if int(config.dataset.captions_per_clip) != 1:
    raise ValueError(
      'dataset.embeddings reads one caption per clip: set dataset.captions_per_clip=1'
    )
  if float(config.optim.keyword_loss_weight):
    raise ValueError('dataset.embeddings does not support the keyword loss')
  path = embeddings.check_stored(config)
  with config.unlocked():
    config.dataset.embeddings_dir = path


def make_tagger_and_params(config: ml_collections.ConfigDict) -> tuple[Any, Any]:
  """The run's tagger alone and its parameters (`encoder_init`, else random), for extraction."""
  model_cfg = CaptionerConfig(
    vocab_size=4,
    encoder=config.model.encoder,
    convnext_stem=config.model.convnext_stem,
    encoder_layers=0,
    encoder_init=config.model.encoder_init,
    htsat=htsat_config(config.model.htsat) if config.model.encoder == 'htsat' else None,
    deterministic=True,
  )
  tagger = pretrained.make_tagger(model_cfg)
  if config.model.encoder_init:
    return tagger, converted_tagger_params(model_cfg)
  mel = jnp.zeros((1, pretrained.MIN_INPUT_FRAMES, config.frontend.n_mels), jnp.float32)
  pads = jnp.zeros(mel.shape[:2], jnp.float32)
  init = jax.jit(tagger.init)(jax.random.key(int(config.seed)), mel, pads)
  return tagger, nn.unbox(init['params'])


def _paths(tree: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
  if isinstance(tree, dict) or hasattr(tree, 'items'):
    out = {}
    for name, value in tree.items():
      out.update(_paths(value, prefix + (name,)))
    return out
  return {prefix: tree}


def converted_tagger_params(model_cfg: CaptionerConfig) -> dict[str, Any]:
  """The tagger parameters of `model_cfg.encoder_init` (numpy; a CLAP folder for htsat)."""
  if model_cfg.encoder == 'htsat':
    return load_tagger_params(model_cfg.encoder_init)
  converted, settings = pretrained_store.load_converted(model_cfg.encoder_init)
  if settings.get('encoder') != model_cfg.encoder:
    raise ValueError(
      f'{model_cfg.encoder_init} holds a converted {settings.get("encoder")!r} model, '
      f'not {model_cfg.encoder!r}'
    )
  return converted


def load_encoder_init(params: Any, model_cfg: CaptionerConfig) -> Any:
  """Returns `params` with `params['encoder']['tagger']` from `model_cfg.encoder_init`.

  The converted folder also holds the clip-tagging head (a CLAP folder: its
  text tower), which the captioner does not use; every tagger leaf of
  `params` must be in the folder with the same shape, else a ValueError
  names the first one that is not.
  """
  source = _paths(converted_tagger_params(model_cfg))
  tagger = params['encoder']['tagger']
  for path, leaf in _paths(tagger).items():
    if path not in source or tuple(source[path].shape) != tuple(leaf.shape):
      found = None if path not in source else tuple(source[path].shape)
      raise ValueError(
        f'{model_cfg.encoder_init}: tagger parameter {"/".join(path)} has shape {found}, '
        f'the model needs {tuple(leaf.shape)}'
      )
  loaded = jax.tree_util.tree_map_with_path(
    lambda kp, leaf: jnp.asarray(source[tuple(k.key for k in kp)], leaf.dtype), tagger
  )
  encoder = dict(params['encoder'], tagger=loaded)
  return dict(params, encoder=encoder)


def load_converted_init(params: Any, model_cfg: CaptionerConfig) -> Any:
  """`params` with the converted tagger (`encoder_init`) and language model (`llm_init`) set."""
  if model_cfg.encoder_init:
    params = load_encoder_init(params, model_cfg)
  if model_cfg.llm_init:
    params = load_llm_init(params, model_cfg)
  return params


def load_llm_init(params: Any, model_cfg: CaptionerConfig) -> Any:
  """Returns `params` with `params['decoder']['llm']` from `model_cfg.llm_init` (checked by leaf).

  The token ids are the run's (`llm_bridge.caption_tokenizer`: the
  checkpoint's with PAD/BOS/EOS/UNK swapped in), so the embedding rows and
  output columns are reordered to match. LoRA adapters (absent from the
  folder) keep their fresh values.
  """
  converted, _ = pretrained_store.load_converted(model_cfg.llm_init)
  order = llm_bridge.caption_tokenizer(model_cfg.llm_init).order
  source = _paths(llm.reorder_vocab(converted, order))

  def pick(path, leaf):
    keys = tuple(k.key for k in path)
    if keys[-1] in ('lora_a', 'lora_b'):
      return leaf
    if keys not in source or tuple(source[keys].shape) != tuple(leaf.shape):
      found = None if keys not in source else tuple(source[keys].shape)
      raise ValueError(
        f'{model_cfg.llm_init}: language-model parameter {"/".join(keys)} has shape {found}, '
        f'the model needs {tuple(leaf.shape)}'
      )
    return jnp.asarray(source[keys], leaf.dtype)

  loaded = jax.tree_util.tree_map_with_path(pick, params['decoder']['llm'])
  return dict(params, decoder=dict(params['decoder'], llm=loaded))


def _stage_of(keys: list[str], model_cfg: CaptionerConfig) -> int:
  """Stage index of a tagger parameter (its path below the tagger; -1: after all stages)."""
  if model_cfg.encoder == 'htsat':
    return _htsat_stage_of(keys[1], len(model_cfg.htsat.depths))
  name = keys[0]
  if name in ('bn0', 'stem', 'stem_norm'):
    return 0
  match = re.fullmatch(r'(stages|blocks)_(\d+)(_\d+)?', name)
  if match:
    return int(match.group(2))
  match = re.fullmatch(r'down_(norms|convs)_(\d+)', name)
  if match:  # The downsampling into stage i + 1 belongs to it.
    return int(match.group(2)) + 1
  return -1


def _htsat_stage_of(name: str, stages: int) -> int:
  """HTS-AT: patch embedding (and fusion) 0, `stage{i}_block{j}` i, the merge after stage i
  i + 1, the final norm (it makes the frames) the last stage."""
  match = re.fullmatch(r'stage(\d+)_(block\d+|merge)', name)
  if match:
    return int(match.group(1)) + (match.group(2) == 'merge')
  return stages - 1 if name == 'norm' else 0


def frozen_mask(params: Any, model_cfg: CaptionerConfig) -> Any:
  """Bool tree like `params`: True for frozen leaves (tagger stages, a LoRA run's base LM)."""
  count = model_cfg.frozen_stages

  def frozen(path, _leaf):
    keys = [k.key for k in path]
    if count == 0 or keys[:2] != ['encoder', 'tagger']:
      return False
    stage = _stage_of(keys[2:], model_cfg)
    return 0 <= stage < count

  tagger = jax.tree_util.tree_map_with_path(frozen, params)
  return jax.tree.map(
    lambda a, b: a or b, tagger, llm_bridge.frozen_mask(params, model_cfg.llm_train)
  )


def freeze_optimizer(
  tx: optax.GradientTransformation, model_cfg: CaptionerConfig
) -> optax.GradientTransformation:
  """`tx` for trainable leaves, zero updates for frozen ones (none frozen: `tx` itself)."""
  if model_cfg.frozen_stages == 0 and model_cfg.llm_train != 'lora':
    return tx

  def labels(params):
    return jax.tree.map(lambda f: 'frozen' if f else 'train', frozen_mask(params, model_cfg))

  return optax.multi_transform({'train': tx, 'frozen': optax.set_to_zero()}, labels)
