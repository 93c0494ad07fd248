"""FENSE test fixtures: random models of the real architectures in the published
formats, and the PyTorch reference computation written from the definitions.

- Sentence-BERT: a `paraphrase-TinyBERT-L6-v2`-shaped BERT (6 layers, 768
  wide, 12 heads, 3072 feed-forward, 30522 word pieces) saved by
  sentence-transformers itself (Transformer + mean Pooling), as
  `model.safetensors` or `pytorch_model.bin`.
- Error checker: a `bert-base-uncased`-shaped BERT plus a 6-class linear
  layer, saved as FENSE saves `echecker_clotho_audiocaps_base.ckpt`:
  `torch.save({'model_type', 'num_classes', 'state_dict'})`, with the
  `position_ids` buffer older transformers kept in state dicts.
- The word-piece vocabulary (these folders cannot be downloaded here) is
  trained on real captions, laid out as BERT's: [PAD] 0, [unused*],
  [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103.
"""

import pathlib
import re

import numpy as np
import torch
import transformers

ECHECKER_CLASSES = 6  # add_tail, repeat_event, repeat_adv, remove_conj, remove_verb, error
TINYBERT_L6 = dict(
  vocab_size=30522,
  hidden_size=768,
  num_hidden_layers=6,
  num_attention_heads=12,
  intermediate_size=3072,
  max_position_embeddings=512,
)
SPECIAL = ['[PAD]'] + [f'[unused{i}]' for i in range(99)] + ['[UNK]', '[CLS]', '[SEP]', '[MASK]']


def write_vocab(captions: list[str], folder: pathlib.Path, size: int = 6000) -> pathlib.Path:
  """Trains a BERT-layout word-piece vocabulary on `captions`; writes vocab.txt."""
  from tokenizers.implementations import BertWordPieceTokenizer

  tokenizer = BertWordPieceTokenizer(lowercase=True)
  tokenizer.train_from_iterator(
    captions, vocab_size=size, special_tokens=SPECIAL, show_progress=False
  )
  folder.mkdir(parents=True, exist_ok=True)
  vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
  (folder / 'vocab.txt').write_text(''.join(f'{w}\n' for w, _ in vocab), encoding='utf-8')
  return folder / 'vocab.txt'


def save_sbert(vocab: pathlib.Path, folder: pathlib.Path, safetensors: bool, seed: int = 0) -> None:
  """A random TinyBERT-L6 Sentence-BERT folder, written by sentence-transformers."""
  from sentence_transformers import SentenceTransformer, models

  torch.manual_seed(seed)
  hf = folder.parent / f'{folder.name}_hf'
  transformers.BertModel(transformers.BertConfig(**TINYBERT_L6)).save_pretrained(hf)
  transformers.BertTokenizerFast(vocab_file=str(vocab), do_lower_case=True).save_pretrained(hf)
  transformer = models.Transformer(str(hf), max_seq_length=128)
  pooling = models.Pooling(transformer.get_word_embedding_dimension(), 'mean')
  SentenceTransformer(modules=[transformer, pooling], device='cpu').save(str(folder))
  if not safetensors:  # The older published layout: pytorch_model.bin only.
    from safetensors.torch import load_file

    torch.save(load_file(str(folder / 'model.safetensors')), folder / 'pytorch_model.bin')
    (folder / 'model.safetensors').unlink()


class FlatClassifier(torch.nn.Module):
  """FENSE's BERTFlatClassifier from its definition: BERT, [CLS] state, dropout, linear."""

  def __init__(self, config: transformers.BertConfig, num_classes: int):
    super().__init__()
    self.encoder = transformers.BertModel(config)
    self.dropout = torch.nn.Dropout(config.hidden_dropout_prob)
    self.clf = torch.nn.Linear(config.hidden_size, num_classes)

  def features(self, input_ids, attention_mask, token_type_ids) -> torch.Tensor:
    return self.encoder(input_ids, attention_mask, token_type_ids).last_hidden_state[:, 0, :]

  def forward(self, input_ids, attention_mask, token_type_ids) -> torch.Tensor:
    return self.clf(self.dropout(self.features(input_ids, attention_mask, token_type_ids)))


def save_bert_base_dir(vocab: pathlib.Path, folder: pathlib.Path) -> None:
  """The `bert-base-uncased` folder the checker's tokenizer comes from (vocab.txt, no tokenizer.json)."""
  folder.mkdir(parents=True, exist_ok=True)
  (folder / 'config.json').write_text(transformers.BertConfig().to_json_string())
  (folder / 'vocab.txt').write_bytes(vocab.read_bytes())
  (folder / 'tokenizer_config.json').write_text('{"do_lower_case": true}')


def save_echecker(model: FlatClassifier, path: pathlib.Path) -> None:
  """`torch.save` in FENSE's checkpoint layout."""
  state = dict(model.state_dict())
  state['encoder.embeddings.position_ids'] = torch.arange(512)[None]
  torch.save(
    {'model_type': 'bert-base-uncased', 'num_classes': ECHECKER_CLASSES, 'state_dict': state}, path
  )


def echecker_batches(tokenizer, texts: list[str], batch_size: int = 32):
  """aac-metrics' checker input: punctuation removed, lower case, padded to 64 word pieces."""
  for start in range(0, len(texts), batch_size):
    chunk = [re.sub(r'[^\w\s]', '', t).lower() for t in texts[start : start + batch_size]]
    batch = tokenizer(
      chunk, truncation=True, padding='max_length', max_length=64, return_tensors='pt'
    )
    yield batch['input_ids'], batch['attention_mask'], batch['token_type_ids']


class TorchFense:
  """The PyTorch reference, loading the files as aac-metrics 0.6.0 does.

  Sentence-BERT through sentence-transformers (`encode`, unit embeddings,
  batches of 32); the checker rebuilt from the `.ckpt` (`position_ids`
  dropped, as aac-metrics does for transformers >= 4.31), its tokenizer
  from the `model_type` folder, sigmoid of the logits, last class = error.
  """

  def __init__(self, folders: dict[str, pathlib.Path]):
    from sentence_transformers import SentenceTransformer

    self.sbert = SentenceTransformer(str(folders['sbert']), device='cpu')
    states = torch.load(folders['echecker_ckpt'], map_location='cpu', weights_only=True)
    state = dict(states['state_dict'])
    state.pop('encoder.embeddings.position_ids')
    config = transformers.BertConfig.from_pretrained(str(folders['bert_dir']))
    self.checker = FlatClassifier(config, states['num_classes']).eval()
    self.checker.load_state_dict(state)
    self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(folders['bert_dir']))

  @torch.no_grad()
  def checker_features(self, texts: list[str]) -> torch.Tensor:
    """[CLS] states [n, hidden] of the checker's encoder."""
    return torch.cat([self.checker.features(*b) for b in echecker_batches(self.tokenizer, texts)])

  @torch.no_grad()
  def error_probs(self, features: torch.Tensor) -> np.ndarray:
    """P(error): sigmoid of the last class logit (dropout is off in eval mode)."""
    return torch.sigmoid(self.checker.clf(self.checker.dropout(features)))[:, -1].double().numpy()

  @torch.no_grad()
  def sbert_sim(self, candidates: list[str], references: list[list[str]]) -> np.ndarray:
    """Unit embeddings; candidate @ references, mean per clip."""

    def encode(sentences):
      return self.sbert.encode(
        sentences, convert_to_tensor=True, normalize_embeddings=True, batch_size=32
      )

    cands = encode(candidates)
    refs = encode([r for rs in references for r in rs])
    bounds = np.cumsum([0] + [len(r) for r in references])
    return np.array(
      [(cands[i] @ refs[bounds[i] : bounds[i + 1]].T).mean().item() for i in range(len(candidates))]
    )

  def score(
    self, candidates: list[str], references: list[list[str]], features=None
  ) -> dict[str, np.ndarray]:
    """Per-clip sbert_sim, fluency_error_prob, fer, fense."""
    probs = self.error_probs(self.checker_features(candidates) if features is None else features)
    sims = self.sbert_sim(candidates, references)
    fer = (probs > 0.9).astype(np.float64)
    return {
      'sbert_sim': sims,
      'fluency_error_prob': probs,
      'fer': fer,
      'fense': sims * (1 - 0.9 * fer),
    }

  def move_error_threshold(self, features: torch.Tensor, ckpt: pathlib.Path) -> None:
    """Spreads the error logits and shifts the error bias so about half the texts cross 0.9.

    With random weights the checker's logits sit anywhere; this makes both
    sides of the penalty occur, each far from the threshold. Saves the
    changed weights back into the `.ckpt`.
    """
    with torch.no_grad():
      self.checker.clf.weight[-1] *= 20.0  # Random [CLS] states are close together.
      logits = self.checker.clf(features)[:, -1].numpy()
      self.checker.clf.bias[-1] += place_threshold(logits, float(np.log(0.9 / 0.1)))
    save_echecker(self.checker, ckpt)


def place_threshold(logits: np.ndarray, threshold_logit: float) -> float:
  """Bias shift putting `threshold_logit` mid-way in the widest gap around the median logit."""
  ordered = np.sort(logits)
  n = len(ordered)
  lo, hi = n // 4, max(n // 4 + 1, 3 * n // 4)
  k = lo + int(np.argmax(np.diff(ordered[lo : hi + 1])))
  return threshold_logit - (ordered[k] + ordered[k + 1]) / 2


def build_models(
  corpora: pathlib.Path, folder: pathlib.Path, threshold_texts: list[str] | None = None
):
  """Random FENSE models in the published formats, the checker converted for aac_jax.

  Args:
    corpora: the caption corpora (the word-piece vocabulary is trained on
      the Clotho development captions).
    folder: where to write.
    threshold_texts: texts about half of which the checker should flag
      (`TorchFense.move_error_threshold`), or None.

  Returns:
    (paths, the `TorchFense` reference, the checker's [CLS] states of
    `threshold_texts` or None). Paths: 'vocab', 'sbert' (sentence-transformers
    folder, safetensors), 'bert_dir' (bert-base-uncased config and vocabulary),
    'echecker_ckpt' (FENSE's format), 'echecker' (made by
    `tools/convert_checkpoint.py fense`).
  """
  with open(corpora / 'clotho' / 'clotho_captions_development.csv', encoding='utf-8') as f:
    vocab = write_vocab(f.read().splitlines(), folder / 'vocab')
  paths = {'vocab': vocab, 'sbert': folder / 'sbert', 'bert_dir': folder / 'bert-base-uncased'}
  save_sbert(vocab, paths['sbert'], safetensors=True)
  save_bert_base_dir(vocab, paths['bert_dir'])
  torch.manual_seed(1)
  paths['echecker_ckpt'] = folder / 'echecker_clotho_audiocaps_base.ckpt'
  save_echecker(FlatClassifier(transformers.BertConfig(), ECHECKER_CLASSES), paths['echecker_ckpt'])
  reference, features = TorchFense(paths), None
  if threshold_texts is not None:
    features = reference.checker_features(threshold_texts)
    reference.move_error_threshold(features, paths['echecker_ckpt'])
  paths['echecker'] = folder / 'echecker'
  convert_echecker(paths)
  return paths, reference, features


def convert_echecker(paths: dict[str, pathlib.Path]) -> None:
  """Runs `tools/convert_checkpoint.py fense --echecker ...` into paths['echecker']."""
  from tools import convert_checkpoint

  convert_checkpoint.main(
    [
      'fense',
      '--echecker',
      str(paths['echecker_ckpt']),
      '--bert_dir',
      str(paths['bert_dir']),
      '--output',
      str(paths['echecker']),
    ]
  )
