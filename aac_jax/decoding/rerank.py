"""Re-ranking of decoded candidates by CLAP audio-text similarity (SLAM-AAC's CLAP-Refine).

With `config.decode.rerank = 'clap'`, decoding keeps N = `beam_size`
candidates per clip (all finished beams of `method='beam'`, or N samples of
`method='sample'`), and the caption chosen is the candidate with the
highest

    decoder score + rerank_weight * cos(CLAP text embedding, CLAP audio embedding)

where the decoder score is the search's own (the length-normalised beam
score, or a sample's summed log-probability). Beam slots that never
finished are never chosen. Candidates are decoded on the device in one
jitted call (`generate_candidates`); CLAP runs after, on the host's copy of
the audio resampled to the CLAP model's rate (`ClapReranker`).
"""

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from aac_jax.decoding import steps
from aac_jax.decoding.beam import beam_search
from aac_jax.decoding.constraints import NEG_INF
from aac_jax.decoding.generate import generate
from aac_jax.decoding.search import DecodeOutput
from aac_jax.decoding.settings import DecodeSettings

# (candidates [b][n] captions, clips [b] float waveforms, their rate) -> cosines [b, n].
Similarity = Callable[[Sequence[Sequence[str]], Sequence[np.ndarray], int], np.ndarray]


def generate_candidates(
  model: nn.Module,
  params: Any,
  features: jax.Array,
  feature_paddings: jax.Array,
  settings: DecodeSettings,
  *,
  rng: jax.Array | None = None,
  repeat_ban_mask: jax.Array | None = None,
) -> DecodeOutput:
  """N = `beam_size` candidate captions per clip (traceable; jit it).

  Args:
    model: a `Captioner`.
    params: its parameters.
    features: `[b, time, mels]` log-mel features.
    feature_paddings: `[b, time]`, 1 = pad.
    settings: `method` 'beam' (every finished beam, best first) or 'sample'.
    rng: PRNG key ('sample').
    repeat_ban_mask: bool `[vocab]` for `ban_repeated_content_words`.

  Returns:
    `DecodeOutput` with tokens `[b, n, max_len]`, log_probs `[b, n, max_len]`
    and scores `[b, n]` (the search's own; `NEG_INF` for empty beam slots).
  """
  n, b = settings.beam_size, features.shape[0]
  if settings.method == 'sample':
    out = generate(
      model, params, features, feature_paddings, settings,
      rng=rng, repeat_ban_mask=repeat_ban_mask, num_samples=n,
    )  # fmt: skip
    return jax.tree.map(lambda x: x.reshape(b, n, *x.shape[1:]), out)
  if settings.method != 'beam':
    raise ValueError(f"candidates need method 'beam' or 'sample', got {settings.method!r}")
  encoded, enc_paddings = steps.eval_model(model).apply(
    {'params': params}, features, feature_paddings, method='encode'
  )
  step_fn, cache = steps.make_step_fn(
    model, params, steps.repeat_rows(encoded, n), steps.repeat_rows(enc_paddings, n),
    settings.max_len,
  )  # fmt: skip
  return beam_search(step_fn, cache, b, settings, repeat_ban_mask, return_all_beams=True)


def combined_scores(decoder: np.ndarray, similarity: np.ndarray, weight: float) -> np.ndarray:
  """`decoder + weight * similarity` `[b, n]`; -inf where the decoder score is empty."""
  decoder = np.asarray(decoder, np.float64)
  total = decoder + weight * np.asarray(similarity, np.float64)
  return np.where(decoder < 0.5 * NEG_INF, -np.inf, total)  # As `constraints.is_banned`.


def choose(decoder: np.ndarray, similarity: np.ndarray, weight: float) -> np.ndarray:
  """Index `[b]` of each clip's best candidate under `combined_scores` (first on ties)."""
  return np.argmax(combined_scores(decoder, similarity, weight), axis=1)


def rerank(
  candidates: Sequence[Sequence[str]],
  decoder: np.ndarray,
  clips: Sequence[np.ndarray],
  sample_rate: int,
  similarity: Similarity,
  weight: float,
) -> tuple[list[str], np.ndarray]:
  """Each clip's chosen caption and its index among the candidates.

  Args:
    candidates: `[b][n]` decoded captions.
    decoder: `[b, n]` decoder scores.
    clips: `[b]` float waveforms.
    sample_rate: their rate.
    similarity: audio-text cosines `[b, n]` (`ClapReranker.similarity`, or
      any function with its signature).
    weight: weight of the similarity.
  """
  sims = similarity(candidates, clips, sample_rate)
  index = choose(decoder, sims, weight)
  return [list(c)[i] for c, i in zip(candidates, index, strict=True)], index


@dataclasses.dataclass
class ClapReranker:
  """CLAP cosines of candidates and their clips (`Similarity`)."""

  clap_dir: str
  batch_size: int = 16

  def __post_init__(self):
    from aac_jax.metrics import clap_score

    self.model = clap_score.shared_embedder(self.clap_dir, self.batch_size)

  def similarity(
    self, candidates: Sequence[Sequence[str]], clips: Sequence[np.ndarray], sample_rate: int
  ) -> np.ndarray:
    """`[b, n]` cosines of each clip's audio and its candidates."""
    from aac_jax.data import audio_io

    rate = self.model.settings.sample_rate
    audio = self.model.audio([audio_io.resample(np.asarray(c, np.float32), sample_rate, rate)
                              for c in clips])  # fmt: skip
    n = max(len(c) for c in candidates)
    flat = [c for row in candidates for c in row]
    text = self.model.text(flat).reshape(len(candidates), n, -1)
    return np.einsum('bd,bnd->bn', audio, text)
