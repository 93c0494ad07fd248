"""Converts a `jax.export` captioner to a TensorFlow SavedModel (TF Serving, Vertex AI).

  python tools/export.py --workdir workdirs/demo/ce --output exported/demo --format savedmodel

TensorFlow is needed only here and in the serving system, never by aac_jax
itself: `pip install 'aac_jax[savedmodel]'`. The `jax.export` artifact that
`aac_jax.export` wrote (`model.jax_export`) is wrapped by
`jax.experimental.jax2tf.convert` (native serialization: the same StableHLO
module runs inside TensorFlow's `XlaCallModule` op, so the tokens are the
artifact's) with a symbolic batch, and saved to `OUTPUT/savedmodel/` with
one signature, `serving_default`:

  inputs   waveform  float32 [batch, max_samples]  mono at `sample_rate`, in [-1, 1]
           paddings  float32 [batch, max_samples]  1.0 after the end of each clip
  outputs  tokens    int32   [batch, max_len]      word ids, EOS, then PAD
           captions  string  [batch]               the words before EOS, as `aac-caption` prints

Gradients are not saved (`with_gradient=False`): the function decodes
greedily and has none.
"""

import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

SAVEDMODEL_DIR = 'savedmodel'


class TensorFlowMissing(Exception):
  """TensorFlow is not installed (the message says how to install it)."""


def import_tensorflow():
  """`(tf, jax2tf)`, or TensorFlowMissing naming the extra to install."""
  try:
    import tensorflow as tf
    from jax.experimental import jax2tf
  except ImportError as error:
    raise TensorFlowMissing(
      f'--format savedmodel needs TensorFlow ({error.name} is missing): '
      "pip install 'aac_jax[savedmodel]'"
    ) from error
  return tf, jax2tf


def make_module(exported: jax.export.Exported, metadata: dict[str, Any], words: Sequence[str]):
  """A `tf.Module` whose `serve(waveform, paddings)` is the serving signature.

  Args:
    exported: the `jax.export` function (`aac_jax.export.export_model`).
    metadata: its `export.json` (max samples, token ids).
    words: the vocabulary (index = token id).
  """
  tf, jax2tf = import_tensorflow()
  tokens_fn = jax2tf.convert(
    exported.call, polymorphic_shapes=['(batch, _)', '(batch, _)'], with_gradient=False
  )
  ids = metadata['token_ids']
  spec = tf.TensorSpec([None, int(metadata['max_samples'])], tf.float32)
  module = tf.Module()
  module.vocab = tf.constant(list(words))

  @tf.function(autograph=False, input_signature=[spec, spec])
  def serve(waveform, paddings):
    tokens = tokens_fn(waveform, paddings)  # int32 [batch, max_len]
    before_eos = tf.equal(tf.cumsum(tf.cast(tf.equal(tokens, ids['eos']), tf.int32), axis=1), 0)
    is_word = before_eos & tf.not_equal(tokens, ids['pad']) & tf.not_equal(tokens, ids['bos'])
    kept = tf.ragged.boolean_mask(tf.gather(module.vocab, tokens), is_word)
    captions = tf.strings.reduce_join(kept, axis=1, separator=' ')  # [batch]
    return {'tokens': tokens, 'captions': captions}

  module.serve = serve
  return module


def save_savedmodel(
  out: str | pathlib.Path,
  exported: jax.export.Exported,
  metadata: dict[str, Any],
  words: Sequence[str],
) -> None:
  """Writes the SavedModel of `make_module(exported, metadata, words)` to `out`.

  Raises:
    TensorFlowMissing: TensorFlow is not installed.
  """
  tf, _ = import_tensorflow()
  module = make_module(exported, metadata, words)
  tf.saved_model.save(module, str(out), signatures={'serving_default': module.serve})


def check_savedmodel(
  out: str | pathlib.Path,
  exported: jax.export.Exported,
  waveform: np.ndarray,
  paddings: np.ndarray,
) -> tuple[bool, list[str]]:
  """Reloads the SavedModel at `out` and compares its tokens with `exported`'s.

  Returns:
    `(equal, captions)`: whether the tokens are identical, and the SavedModel's captions.
  """
  tf, _ = import_tensorflow()
  signature = tf.saved_model.load(str(out)).signatures['serving_default']
  result = signature(waveform=tf.constant(waveform), paddings=tf.constant(paddings))
  expected = np.asarray(exported.call(waveform, paddings))
  captions = [c.decode('utf-8') for c in result['captions'].numpy()]
  return bool(np.array_equal(result['tokens'].numpy(), expected)), captions
