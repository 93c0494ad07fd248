"""Trains a small FENSE-style fluency error detector and saves it as FENSE's checker folder.

The detector is `bert.ErrorChecker` (BERT, [CLS] state, one linear layer,
a sigmoid per class of `fluency_corruptions.CLASS_NAMES`) initialised at a
small size and trained from scratch with a multi-label binary cross-entropy
on captions corrupted by FENSE's rules. Its folder holds what
`tools/convert_checkpoint.py fense` writes for the published checker
(`config.json`, `echecker.json`, `model.safetensors` with the same key
names, the word-piece `vocab.txt`), so `fense_models.load_error_checker`
(`--echecker_dir`) reads it, and texts are tokenized here by the same
loader the FENSE path uses.
"""

import dataclasses
import json
import pathlib
from collections.abc import Sequence

import jax
import numpy as np
import optax

from aac_jax.metrics import bert, fense_models
from aac_jax.metrics.fluency_corruptions import CLASS_NAMES

# BERT's special-token layout (bert-base-uncased): [PAD] 0, [UNK] 100,
# [CLS] 101, [SEP] 102, [MASK] 103.
SPECIAL_TOKENS = (
  '[PAD]',
  *(f'[unused{i}]' for i in range(99)),
  '[UNK]',
  '[CLS]',
  '[SEP]',
  '[MASK]',
)
NOT_FOUND_HINT = 'train it with python tools/train_fluency.py'


@dataclasses.dataclass(frozen=True)
class DetectorSize:
  """Sizes of the detector's BERT.

  Attributes:
    vocab_size: word pieces learned from the training captions (at most).
    hidden_size: model width.
    num_layers: transformer layers.
    num_heads: attention heads.
    intermediate_size: feed-forward width.
  """

  vocab_size: int = 2000
  hidden_size: int = 64
  num_layers: int = 2
  num_heads: int = 2
  intermediate_size: int = 256


@dataclasses.dataclass(frozen=True)
class TrainSettings:
  """Optimisation of the detector.

  Attributes:
    steps: optimizer steps.
    batch_size: texts per step.
    lr: peak AdamW learning rate (linear warm-up over 5 %, cosine decay).
    weight_decay: AdamW weight decay.
    seed: initialisation and batch order.
    log_every: steps between printed losses (0: none).
  """

  steps: int = 4000
  batch_size: int = 64
  lr: float = 2e-3
  weight_decay: float = 0.01
  seed: int = 0
  log_every: int = 200


def write_wordpiece(captions: Sequence[str], folder: pathlib.Path, vocab_size: int):
  """Learns a lower-cased word-piece vocabulary from `captions` into `folder/vocab.txt`.

  Returns:
    The folder's tokenizer as `fense_models.load_error_checker` will read it.
  """
  from tokenizers.implementations import BertWordPieceTokenizer

  trainer = BertWordPieceTokenizer(lowercase=True)
  trainer.train_from_iterator(
    list(captions), vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False
  )
  vocab = sorted(trainer.get_vocab().items(), key=lambda kv: kv[1])
  folder.mkdir(parents=True, exist_ok=True)
  (folder / 'vocab.txt').write_text(''.join(f'{w}\n' for w, _ in vocab), encoding='utf-8')
  (folder / 'tokenizer_config.json').write_text(json.dumps({'do_lower_case': True}) + '\n')
  return fense_models.load_wordpiece(folder, fense_models.ECHECKER_MAX_LENGTH, NOT_FOUND_HINT)


def encode(tokenizer, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(ids, mask, type ids), each int32 [len(texts), length], zero-padded to a multiple of 8.

  Texts go through `fense_models.echecker_text` first, as in the FENSE path.
  """
  encodings = tokenizer.encode_batch([fense_models.echecker_text(t) for t in texts])
  length = -(-max(len(e.ids) for e in encodings) // 8) * 8
  ids, mask, types = (np.zeros((len(texts), length), np.int32) for _ in range(3))
  for row, e in enumerate(encodings):
    n = len(e.ids)
    ids[row, :n], mask[row, :n], types[row, :n] = e.ids, e.attention_mask, e.type_ids
  return ids, mask, types


def make_detector(size: DetectorSize, vocab_size: int) -> bert.ErrorChecker:
  """The detector module: `size`, with the tokenizer's actual vocabulary."""
  config = bert.BertConfig(
    vocab_size=vocab_size,
    hidden_size=size.hidden_size,
    num_layers=size.num_layers,
    num_heads=size.num_heads,
    intermediate_size=size.intermediate_size,
    max_positions=fense_models.ECHECKER_MAX_LENGTH,
  )
  return bert.ErrorChecker(config, len(CLASS_NAMES))


def bce_loss(module: bert.ErrorChecker, params: dict, batch: tuple) -> jax.Array:
  """Mean binary cross-entropy over texts and classes; batch = (ids, mask, types, labels)."""
  ids, mask, types, labels = batch
  logits = module.apply({'params': params}, ids, mask, types, method=module.logits)
  return optax.sigmoid_binary_cross_entropy(logits, labels).mean()


def train(
  module: bert.ErrorChecker,
  inputs: tuple[np.ndarray, np.ndarray, np.ndarray],
  labels: np.ndarray,
  settings: TrainSettings,
) -> dict:
  """Trains from a fresh initialisation; returns the parameters.

  Args:
    module: `make_detector`'s module.
    inputs: `encode`'s arrays for the training texts.
    labels: float32 [texts, classes].
    settings: steps, batch, optimizer, seed.
  """
  rng = np.random.default_rng(settings.seed)
  params = module.init(jax.random.key(settings.seed), *(a[:1] for a in inputs))['params']
  schedule = optax.warmup_cosine_decay_schedule(
    0.0, settings.lr, max(1, settings.steps // 20), max(settings.steps, 2)
  )
  optimizer = optax.adamw(schedule, weight_decay=settings.weight_decay)
  opt_state = optimizer.init(params)

  @jax.jit
  def train_step(params, opt_state, batch):
    loss, grads = jax.value_and_grad(lambda p: bce_loss(module, p, batch))(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  order = np.zeros(0, np.int64)
  for step in range(1, settings.steps + 1):
    if len(order) < settings.batch_size:  # Epochs of shuffled rows, every batch full.
      order = np.concatenate([order, rng.permutation(len(labels))])
    picked, order = order[: settings.batch_size], order[settings.batch_size :]
    # Cut to the batch's longest text (a multiple of 8: a few compiled shapes).
    length = -(-int(inputs[1][picked].sum(1).max()) // 8) * 8
    batch = (*(a[picked, :length] for a in inputs), labels[picked])
    params, opt_state, loss = train_step(params, opt_state, batch)
    if settings.log_every and step % settings.log_every == 0:
      print(f'step {step}: loss {float(loss):.4f}', flush=True)
  return jax.device_get(params)


def predict(module: bert.ErrorChecker, params: dict, inputs: tuple, batch_size: int = 256):
  """P(class) float32 [texts, classes] from in-memory parameters."""
  apply = jax.jit(module.apply)
  outs = [
    np.asarray(apply({'params': params}, *(a[i : i + batch_size] for a in inputs)))
    for i in range(0, len(inputs[0]), batch_size)
  ]
  return np.concatenate(outs)


def save_detector(folder: pathlib.Path, module: bert.ErrorChecker, params: dict, meta: dict):
  """Writes config.json, echecker.json and model.safetensors next to the vocabulary.

  Keys are those of FENSE's checkpoint (`encoder.` BERT, `clf.` linear).
  """
  from safetensors.numpy import save_file

  tensors = bert.params_to_hf(params['encoder'], module.config, 'encoder.')
  tensors['clf.weight'] = np.asarray(params['classifier']['kernel'], np.float32).T
  tensors['clf.bias'] = np.asarray(params['classifier']['bias'], np.float32)
  save_file(
    {k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(folder / 'model.safetensors')
  )
  (folder / 'config.json').write_text(json.dumps(bert.config_to_hf(module.config), indent=1) + '\n')
  echecker = {'model_type': 'bert', 'num_classes': module.num_classes, 'classes': CLASS_NAMES}
  (folder / 'echecker.json').write_text(json.dumps({**echecker, **meta}, indent=1) + '\n')


def precision_recall(
  probs: np.ndarray, labels: np.ndarray, threshold: float = 0.5
) -> dict[str, dict[str, float]]:
  """Per class of `CLASS_NAMES`: precision, recall and positives of `probs > threshold`.

  Args:
    probs: float [texts, classes].
    labels: {0, 1} [texts, classes].
    threshold: decision threshold.

  Returns:
    class -> {'precision', 'recall', 'positives'} (a ratio with no
    denominator is nan).
  """
  predicted, truth = probs > threshold, labels > 0.5
  result = {}
  for k, name in enumerate(CLASS_NAMES):
    hits = float(np.sum(predicted[:, k] & truth[:, k]))
    said, real = float(predicted[:, k].sum()), float(truth[:, k].sum())
    result[name] = {
      'precision': hits / said if said else float('nan'),
      'recall': hits / real if real else float('nan'),
      'positives': real,
    }
  return result
