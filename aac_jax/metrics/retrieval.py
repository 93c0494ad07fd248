"""Text-to-audio retrieval scores as DCASE's language-based audio retrieval task reports them.

Every caption is a query; the clips are ranked by the similarity of their
audio embedding to the caption's text embedding (highest first; equal
scores keep clip order, as a stable sort does). Each query has exactly one
relevant clip, its own, so:

- recall@k: fraction of queries whose clip ranks k-th or better;
- mAP@10: mean over queries of the average precision over the top 10, which
  with one relevant item is `1 / rank` when `rank <= 10`, else 0.
"""

import numpy as np

KS = (1, 5, 10)


def ranks(text: np.ndarray, audio: np.ndarray, target: np.ndarray, chunk: int = 1024) -> np.ndarray:
  """1-based rank of each query's own clip.

  Args:
    text: `[queries, dim]` query embeddings.
    audio: `[clips, dim]` clip embeddings.
    target: int `[queries]` index of each query's clip.
    chunk: queries scored at once (bounds memory to `chunk x clips`).

  Returns:
    int64 `[queries]`.
  """
  text, audio = np.asarray(text, np.float32), np.asarray(audio, np.float32)
  target = np.asarray(target, np.int64)
  out = np.empty(len(target), np.int64)
  clip = np.arange(audio.shape[0])
  for start in range(0, len(target), chunk):
    scores = text[start : start + chunk] @ audio.T  # [chunk, clips]
    t = target[start : start + chunk]
    own = scores[np.arange(len(t)), t][:, None]
    before = (scores > own) | ((scores == own) & (clip[None, :] < t[:, None]))
    out[start : start + chunk] = 1 + before.sum(axis=1)
  return out


def retrieval_scores(query_ranks: np.ndarray) -> dict[str, float]:
  """`R@1`, `R@5`, `R@10` and `mAP@10` of the ranks of the relevant clips."""
  r = np.asarray(query_ranks, np.float64)
  scores = {f'R@{k}': float(np.mean(r <= k)) if len(r) else 0.0 for k in KS}
  scores['mAP@10'] = float(np.mean(np.where(r <= 10, 1.0 / r, 0.0))) if len(r) else 0.0
  return scores
