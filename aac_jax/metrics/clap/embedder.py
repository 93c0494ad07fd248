"""Loads a CLAP folder and embeds audio and text with it, batched and jitted.

A CLAP folder is a Hugging Face `ClapModel` folder (`laion/clap-htsat-unfused`,
`laion/clap-htsat-fused`, `laion/larger_clap_general`, ...) with
`model.safetensors`, `config.json`, `preprocessor_config.json` and the
tokenizer's `tokenizer.json`; `tools/convert_checkpoint.py clap` writes one
from a folder holding `pytorch_model.bin` instead. Neither torch nor
transformers is imported here.
"""

import dataclasses
import json
import os
import pathlib
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from aac_jax.audio import clap_frontend as frontend
from aac_jax.metrics import fense_models
from aac_jax.metrics.clap import model as clap_model
from aac_jax.metrics.clap import weights

HINT = (
  'download a CLAP folder (e.g. huggingface-cli download laion/clap-htsat-unfused '
  '--local-dir DIR) and convert it with python tools/convert_checkpoint.py clap --input DIR '
  '--output CLAP_DIR'
)
CONVERT = 'python tools/convert_checkpoint.py clap --input {folder} --output CLAP_DIR'
ModelUnavailable = fense_models.ModelUnavailable


class _TextTower:
  """`fense_models.BertRunner`'s module: `(ids, mask, type ids)` -> unit text embeddings."""

  def __init__(self, config: clap_model.ClapConfig):
    self.module = clap_model.Clap(config)

  def apply(self, variables, ids, mask, types):
    del types  # RoBERTa has one token type.
    return self.module.apply(variables, ids, mask, method='text_embeds')


@dataclasses.dataclass
class ClapEmbedder:
  """Audio and text embeddings of one CLAP checkpoint (unit vectors, float32).

  Attributes:
    config: the model's sizes.
    settings: its front end (sample rate, clip length, fusion).
    variables: `{'params', 'batch_stats'}`.
    text_runner: caption -> embedding runner (de-duplicating, length-bucketed batches).
    batch_size: clips per forward pass.
  """

  config: clap_model.ClapConfig
  settings: frontend.ClapFrontendSettings
  variables: dict
  text_runner: fense_models.BertRunner
  batch_size: int = 16

  def __post_init__(self):
    self.variables = jax.device_put(self.variables)
    self._audio = jax.jit(self._audio_step)

  @property
  def logit_scale(self) -> float:
    """exp of the audio-side logit scale (`logits_per_audio = scale * cosine`)."""
    return float(np.exp(self.variables['params']['logit_scale_a']))

  def _audio_step(self, variables, waveform, lengths):
    mel = frontend.log_mel(waveform, lengths, self.settings)
    return clap_model.Clap(self.config).apply(variables, mel, method='audio_embeds')

  def text(self, captions: Sequence[str]) -> np.ndarray:
    """`[len(captions), projection_dim]` unit embeddings."""
    if not captions:
      return np.zeros((0, self.config.projection_dim), np.float32)
    return self.text_runner(list(captions))

  def audio(self, clips: Sequence[np.ndarray]) -> np.ndarray:
    """`[len(clips), projection_dim]` unit embeddings of mono float clips at `settings.sample_rate`.

    Unfused models cut clips longer than `max_length_s` at their start;
    fused ones refuse them (`frontend.check_lengths`).
    """
    lengths = np.array([len(c) for c in clips], np.int64)
    frontend.check_lengths(lengths, self.settings)
    out = np.zeros((len(clips), self.config.projection_dim), np.float32)
    n = self.settings.max_samples
    for start in range(0, len(clips), self.batch_size):
      part = clips[start : start + self.batch_size]
      rows = fense_models.bucket_rows(len(part), self.batch_size)
      wave = np.zeros((rows, n), np.float32)
      size = np.ones((rows,), np.int32)
      for i, clip in enumerate(part):
        clip = np.asarray(clip, np.float32)[:n]
        wave[i, : len(clip)], size[i] = clip, max(len(clip), 1)
      embeds = self._audio(self.variables, jnp.asarray(wave), jnp.asarray(size))
      out[start : start + len(part)] = np.asarray(embeds)[: len(part)]
    return out


def _read_json(path: pathlib.Path) -> dict:
  if not path.is_file():
    raise ModelUnavailable(f'{path} is missing: {HINT}')
  return json.loads(path.read_text(encoding='utf-8'))


def read_configs(
  folder: pathlib.Path,
) -> tuple[clap_model.ClapConfig, frontend.ClapFrontendSettings]:
  """A CLAP folder's sizes (`config.json`) and front end (`preprocessor_config.json`).

  Raises:
    ModelUnavailable: a file is missing; ValueError: an unsupported setting.
  """
  config = clap_model.ClapConfig.from_hf(_read_json(folder / 'config.json'))
  settings = frontend.ClapFrontendSettings.from_hf(_read_json(folder / 'preprocessor_config.json'))
  return config, settings


def max_text_length(folder: pathlib.Path, config: clap_model.ClapConfig) -> int:
  """Word pieces read: the tokenizer's `model_max_length`, within the position table."""
  limit = config.text.max_positions - config.pad_token_id - 1
  path = folder / 'tokenizer_config.json'
  if path.is_file():
    limit = min(limit, int(_read_json(path).get('model_max_length', limit)))
  return limit


def load(path: str | os.PathLike, batch_size: int = 16, text_batch_size: int = 128) -> ClapEmbedder:
  """The CLAP model of a folder (see the module docstring).

  Raises:
    ModelUnavailable: the folder is missing, incomplete or does not match its config.
  """
  folder = pathlib.Path(path).expanduser()
  if not folder.is_dir():
    raise ModelUnavailable(f'CLAP folder {folder} does not exist: {HINT}')
  try:
    config, settings = read_configs(folder)
    tensors = fense_models.load_safetensors(folder, HINT, CONVERT.format(folder=folder))
    variables = weights.variables_from_hf(tensors, config)
  except (KeyError, ValueError) as e:
    raise ModelUnavailable(f'CLAP folder {folder} is damaged ({e}): {HINT}') from e
  max_length = max_text_length(folder, config)
  tokenizer = fense_models.load_wordpiece(folder, max_length, HINT)
  runner = fense_models.BertRunner(
    _TextTower(config), variables['params'], tokenizer, max_length, text_batch_size
  )
  return ClapEmbedder(config, settings, variables, runner, batch_size)
