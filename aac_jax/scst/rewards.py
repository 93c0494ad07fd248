"""The host half of an SCST step: captions -> rewards -> baselines.

Rewards are computed on the host, per sampled caption, against all the
references of its clip, on the decoded text's words (`score_rollout`
decodes with the run's tokenizer, then `text.caption_words`), so a
subword vocabulary (a language model's BPE) is scored on words, as
evaluation scores it:

- `cider_d` (default): CIDEr-D with document frequencies counted once over
  the training references (`aac_jax.metrics.CiderDReward`).
- `spider`: (CIDEr-D + SPICE) / 2, SPICE from the official jar
  (`aac_jax.metrics.spice`); needs Java and the CoreNLP 3.6.0 jars, and
  refuses to start without them (`SpiceUnavailable`), never a fake SPICE.
- `mix`: `sum_m weight_m * metric_m` over `config.scst.reward_weights`
  (`cider_d`, `spice`, `clap`: the CLAP cosine of the caption and the clip's
  audio, `ClapTerm`, with the CLAP folder `config.scst.clap_dir`).

Any of them can be multiplied by a fluency term (`config.scst.fluency`,
`FluencyTerm`): reward x (1 - 0.9 x error), the error being a FENSE-style
error detector's P(error) ('soft') or P(error) > 0.9 ('hard', as SPIDEr-FL
and FENSE penalise), the detector read from FENSE's checker folder: the
published one converted by `tools/convert_checkpoint.py fense`, or one
trained by `tools/train_fluency.py`. It runs jitted on the device, batched
over the step's captions (word pieces on the host).

And by a repetition term (`config.scst.repetition_penalty`, default 0 =
off): reward x (1 - penalty x r), r the caption's share of 3-gram
occurrences that repeat an earlier one in it (`fluency.repeated_ngram_rate`
of that caption alone). CIDEr-D clips each n-gram's count at the
references', so a repeat earns nothing but costs little, and the policy
learns to restate a likely event or connective ("and then a ... and then
a"); the detector only learned repeats appended at the end, and a repeated
connective is fluent to it. The term prices the repeat itself.

Baselines (`baseline_rewards`): the reward of the greedy caption of the same
clip, or the mean reward of the other K - 1 samples of the clip. The
advantage itself (reward - baseline, optionally standardised) is formed on
the device, over the global batch (`aac_jax.scst.steps.compute_advantages`).
"""

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import ml_collections
import numpy as np

from aac_jax.data import text
from aac_jax.data.sources import EvalSplit
from aac_jax.data.tokenizer import Tokenizer
from aac_jax.metrics import fense, fense_models, fluency
from aac_jax.metrics import reward as reward_lib
from aac_jax.metrics import spice as spice_lib

BASELINES = ('greedy', 'mean_others')
REWARDS = ('cider_d', 'spider', 'mix')
METRICS = ('cider_d', 'spice', 'clap')
FLUENCY_MODES = ('off', 'hard', 'soft')
REPETITION_ORDER = 3  # The repetition term's n-gram order.


def baseline_rewards(
  rewards: np.ndarray, kind: str, greedy_rewards: np.ndarray | None = None
) -> np.ndarray:
  """The baseline of every sample.

  Args:
    rewards: `[b, K]` rewards of K samples per clip.
    kind: 'greedy' (the reward of the clip's greedy caption) or
      'mean_others' (the mean reward of the clip's other K - 1 samples).
    greedy_rewards: `[b]` rewards of the greedy captions ('greedy' only).

  Returns:
    float32 `[b, K]`.

  Raises:
    ValueError: unknown kind, 'mean_others' with K < 2, or 'greedy'
      without greedy rewards.
  """
  rewards = np.asarray(rewards, np.float64)
  b, k = rewards.shape
  if kind == 'greedy':
    if greedy_rewards is None:
      raise ValueError("baseline 'greedy' needs the greedy captions' rewards")
    return np.broadcast_to(np.asarray(greedy_rewards, np.float64)[:, None], (b, k)).astype(
      np.float32
    )
  if kind == 'mean_others':
    if k < 2:
      raise ValueError("baseline 'mean_others' needs num_samples >= 2")
    others = (rewards.sum(axis=1, keepdims=True) - rewards) / (k - 1)
    return others.astype(np.float32)
  raise ValueError(f'baseline must be one of {BASELINES}, got {kind!r}')


def reward_weights(scst_cfg: ml_collections.ConfigDict) -> dict[str, float]:
  """Weight of each metric in the reward, from `config.scst.reward`.

  Returns:
    `{metric: weight}` with non-zero weights only (metrics among `METRICS`).
  """
  kind = scst_cfg.reward
  if kind == 'cider_d':
    return {'cider_d': 1.0}
  if kind == 'spider':
    return {'cider_d': 0.5, 'spice': 0.5}
  if kind == 'mix':
    weights = {k: float(v) for k, v in dict(scst_cfg.reward_weights).items() if float(v) != 0.0}
    unknown = set(weights) - set(METRICS)
    if unknown or not weights:
      raise ValueError(f'reward_weights: use non-zero weights among {METRICS}, got {weights}')
    return weights
  raise ValueError(f'scst.reward must be one of {REWARDS}, got {kind!r}')


@dataclasses.dataclass(frozen=True)
class FluencyTerm:
  """The reward's fluency factor, `1 - penalty x error` per caption.

  Attributes:
    checker: captions -> P(class) float `[n, classes]`, the last class
      "any error" (`fense_models.load_error_checker`).
    mode: 'hard': error = P(error) > threshold (SPIDEr-FL); 'soft': error =
      P(error).
    threshold: the 'hard' decision threshold.
    penalty: the share of the reward a disfluent caption loses.
  """

  checker: Callable[[Sequence[str]], np.ndarray]
  mode: str
  threshold: float = fense.ERROR_THRESHOLD
  penalty: float = fense.PENALTY

  def error(self, captions: Sequence[str]) -> np.ndarray:
    """The error of each caption: float64 `[n]` in [0, 1]."""
    probs = np.asarray(self.checker(list(captions)), np.float64)[:, -1]
    return (probs > self.threshold).astype(np.float64) if self.mode == 'hard' else probs


@dataclasses.dataclass(frozen=True)
class ClapTerm:
  """CLAP audio-text cosine of captions of train clips (docs/clap.md).

  Attributes:
    text: captions -> unit text embeddings `[n, d]` (`ClapEmbedder.text`).
    audio: `[num_train_clips, d]` unit audio embeddings, by clip index.
  """

  text: Callable[[Sequence[str]], np.ndarray]
  audio: np.ndarray

  def score(self, captions: Sequence[str], clip_index: np.ndarray) -> np.ndarray:
    """float64 `[n]` cosines of each caption and its clip."""
    index = np.asarray(clip_index).reshape(-1)
    return np.einsum('nd,nd->n', self.text(list(captions)), self.audio[index]).astype(np.float64)


def embed_train_audio(source, sample_rate: int, model, chunk: int = 256) -> np.ndarray:
  """CLAP embeddings `[len(source), d]` of every clip of a source (int16 `audio` records)."""
  from aac_jax.data import audio_io

  rate = model.settings.sample_rate
  out = []
  for start in range(0, len(source), chunk):
    clips = [
      audio_io.resample(np.asarray(source[i]['audio'], np.float32) / 32768.0, sample_rate, rate)
      for i in range(start, min(start + chunk, len(source)))
    ]
    out.append(model.audio(clips))
  return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def clap_term(config: ml_collections.ConfigDict) -> ClapTerm | None:
  """The `ClapTerm` of `config.scst` (None without a `clap` weight); embeds the train audio.

  Raises:
    ValueError: a `clap` weight without `scst.clap_dir`, or a folder that does not load.
  """
  if 'clap' not in reward_weights(config.scst):
    return None
  if not config.scst.clap_dir:
    raise ValueError(
      'scst.reward_weights.clap needs scst.clap_dir (a CLAP folder: '
      'tools/convert_checkpoint.py clap, docs/clap.md)'
    )
  from aac_jax.data import sources
  from aac_jax.metrics import clap_score
  from aac_jax.metrics.clap import embedder

  try:
    model = clap_score.shared_embedder(config.scst.clap_dir, 16)
  except embedder.ModelUnavailable as e:
    raise ValueError(str(e)) from e
  d = config.dataset
  audio = embed_train_audio(sources.open_source(d, d.train_split), int(d.sample_rate), model)
  return ClapTerm(model.text, audio)


def fluency_term(scst_cfg: ml_collections.ConfigDict) -> FluencyTerm | None:
  """The `FluencyTerm` of `config.scst` (None when `fluency='off'`).

  Raises:
    fense_models.ModelUnavailable: no usable detector folder (the message
      says how to train or convert one).
  """
  if scst_cfg.fluency == 'off':
    return None
  if scst_cfg.fluency not in FLUENCY_MODES:
    raise ValueError(f'scst.fluency must be one of {FLUENCY_MODES}, got {scst_cfg.fluency!r}')
  checker = fense_models.load_error_checker(scst_cfg.fluency_dir or None)
  return FluencyTerm(
    checker, scst_cfg.fluency, float(scst_cfg.fluency_threshold), float(scst_cfg.fluency_penalty)
  )


class CaptionReward:
  """Scores captions of training clips against all their references.

  `reward(captions, clip_index)` returns one float per caption: the
  weighted metrics of `reward_weights`, each caption scored against the
  references of train clip `clip_index[i]`, times the fluency factor when
  there is a `FluencyTerm` and the repetition factor when
  `repetition_penalty` > 0.
  """

  def __init__(
    self,
    references: EvalSplit,
    weights: Mapping[str, float],
    spice_jars: str | None = None,
    fluency: FluencyTerm | None = None,
    clap: ClapTerm | None = None,
    repetition_penalty: float = 0.0,
  ):
    """Precomputes the CIDEr-D document frequencies of the references.

    Args:
      references: every train clip's references (`read_train_references`).
      weights: metric -> weight (see `reward_weights`).
      spice_jars: folder with the CoreNLP 3.6.0 jars (SPICE only; default
        `$AAC_SPICE_CORENLP_DIR`).
      fluency: the fluency factor (None: none).
      clap: the CLAP cosine (needed when `clap` is weighted).
      repetition_penalty: the share of the reward a caption whose 3-grams
        all repeat would lose (0: no repetition term).

    Raises:
      SpiceUnavailable: SPICE is weighted but cannot run here.
    """
    self._references = references.references
    self._weights = dict(weights)
    self._spice_jars = spice_jars or None
    self._fluency = fluency
    self._clap = clap
    self._repetition_penalty = float(repetition_penalty)
    if 'clap' in self._weights and clap is None:
      raise ValueError('a clap reward weight needs a ClapTerm (scst.clap_dir)')
    self._cider = reward_lib.CiderDReward(self._references)
    if 'spice' in self._weights:
      # Fail now, with the reason, rather than at the first step.
      spice_lib.find_spice_jar()
      spice_lib.find_corenlp(self._spice_jars)

  @property
  def num_clips(self) -> int:
    return len(self._references)

  def metric_scores(self, captions: Sequence[str], clip_index: np.ndarray) -> dict[str, np.ndarray]:
    """Each weighted metric per caption, 'fluency_error' and 'repetition' with their terms.

    Returns:
      `{name: float64 [n]}`.
    """
    refs = [self._references[int(i)] for i in np.asarray(clip_index).reshape(-1)]
    scores = {'cider_d': self._cider.score(list(captions), refs)}
    if 'spice' in self._weights:
      norm_refs = [[text.normalize_caption(r) for r in rs] for rs in refs]
      _, spice = spice_lib.spice_scores(list(captions), norm_refs, self._spice_jars)
      scores['spice'] = np.nan_to_num(spice, nan=0.0)
    if 'clap' in self._weights:
      scores['clap'] = self._clap.score(captions, clip_index)
    if self._fluency is not None:
      scores['fluency_error'] = self._fluency.error(captions)
    if self._repetition_penalty:
      scores['repetition'] = np.array(
        [fluency.repeated_ngram_rate([text.caption_words(c)], REPETITION_ORDER) for c in captions]
      )
    return scores

  def score(
    self, captions: Sequence[str], clip_index: np.ndarray
  ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Weighted reward per caption, and the terms it was made of.

    Args:
      captions: `[n]` captions (decoded model output).
      clip_index: int `[n]` train clip of each caption.

    Returns:
      `(reward float64 [n], metric_scores(captions, clip_index))`.
    """
    scores = self.metric_scores(captions, clip_index)
    reward = sum(w * scores[m] for m, w in self._weights.items())
    if self._fluency is not None:
      reward = fense.penalize(reward, scores['fluency_error'], self._fluency.penalty)
    if self._repetition_penalty:
      reward = fense.penalize(reward, scores['repetition'], self._repetition_penalty)
    return reward, scores

  def __call__(self, captions: Sequence[str], clip_index: np.ndarray) -> np.ndarray:
    """Weighted reward per caption: float64 `[n]` (see `score`)."""
    return self.score(captions, clip_index)[0]


def decode_captions(tokenizer: Tokenizer, tokens: np.ndarray) -> list[str]:
  """Captions of token rows: `[..., L]` -> flat list in row-major order."""
  rows = np.asarray(tokens).reshape(-1, np.asarray(tokens).shape[-1])
  return [tokenizer.decode(row.tolist()) for row in rows]


@dataclasses.dataclass(frozen=True)
class ScoredRollout:
  """Host results for one batch of samples.

  Attributes:
    rewards: float32 `[b, K]`.
    baselines: float32 `[b, K]`.
    captions: `[b * K]` sampled captions (clip-major).
    greedy_captions: `[b]` greedy captions, or None.
    greedy_rewards: float32 `[b]`, or None.
    terms: `{metric: float64 [b * K]}`, the reward's terms of each sample
      (`CaptionReward.metric_scores`: CIDEr-D, CLAP, fluency error, ...).
  """

  rewards: np.ndarray
  baselines: np.ndarray
  captions: list[str]
  greedy_captions: list[str] | None = None
  greedy_rewards: np.ndarray | None = None
  terms: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


def score_rollout(
  reward_fn: CaptionReward,
  tokenizer: Tokenizer,
  samples: np.ndarray,
  clip_index: np.ndarray,
  baseline: str,
  greedy: np.ndarray | None = None,
  log_ratio: np.ndarray | None = None,
  kl_weight: float = 0.0,
) -> ScoredRollout:
  """Decodes and scores one batch of samples, and forms the baselines.

  Args:
    reward_fn: the reward (`CaptionReward`).
    tokenizer: the run's tokenizer.
    samples: int `[b, K, L]` sampled tokens.
    clip_index: int `[b]` train clip of each row.
    baseline: 'greedy' or 'mean_others'.
    greedy: int `[b, L]` greedy tokens ('greedy' baseline).
    log_ratio: float `[b, K]`, log p(sample) under the sampling policy minus
      under the frozen reference (with `kl_weight`).
    kl_weight: the reward becomes `reward - kl_weight * log_ratio` (a
      sample estimate of the KL to the reference, as a reward term),
      logged as the term `kl`; needs the 'mean_others' baseline.

  Returns:
    The `ScoredRollout`.
  """
  if kl_weight and (log_ratio is None or baseline == 'greedy'):
    raise ValueError("kl_weight needs log_ratio and the 'mean_others' baseline")
  b, k, _ = samples.shape
  captions = decode_captions(tokenizer, samples)
  clip_index = np.asarray(clip_index).reshape(-1)
  index = np.repeat(clip_index, k)
  greedy_captions = None
  if baseline == 'greedy':
    if greedy is None:
      raise ValueError("baseline 'greedy' needs greedy tokens")
    greedy_captions = decode_captions(tokenizer, greedy)
    # One call scores both: samples first, then the greedy captions.
    scores, terms = reward_fn.score(captions + greedy_captions, np.concatenate([index, clip_index]))
    rewards, greedy_rewards = scores[: b * k].reshape(b, k), scores[b * k :]
  else:
    scores, terms = reward_fn.score(captions, index)
    rewards, greedy_rewards = scores.reshape(b, k), None
  if kl_weight:
    log_ratio = np.asarray(log_ratio, np.float64).reshape(b, k)
    rewards = rewards - kl_weight * log_ratio
    terms = {**terms, 'kl': log_ratio.reshape(-1)}
  return ScoredRollout(
    rewards=rewards.astype(np.float32),
    baselines=baseline_rewards(rewards, baseline, greedy_rewards),
    captions=captions,
    greedy_captions=greedy_captions,
    greedy_rewards=None if greedy_rewards is None else greedy_rewards.astype(np.float32),
    terms={name: values[: b * k] for name, values in terms.items()},
  )
