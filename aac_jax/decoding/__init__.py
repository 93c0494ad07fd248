"""aac_jax.decoding: greedy, beam and sampled captions with fixed shapes.

Every search calls a step function once per position:

    step_fn(tokens [rows, 1] int32, cache) -> (logits [rows, vocab], cache)

built from a model, its parameters and the encoder output by
`make_step_fn` (Linen KV cache) or `make_uncached_step_fn` (full re-run,
for tests and benchmarks); any other callable with that signature works too
(the tests use a Markov transition table). Searches return `DecodeOutput`
with tokens `[batch, max_len]`: words, EOS, then PAD. `method='conette_beam'`
is CoNeTTE's own beam search (`conette_beam`). Settings come from
`config.decode` via `make_decode_settings(config.decode, **overrides)`.
"""

from aac_jax.decoding.beam import beam_search, length_penalty
from aac_jax.decoding.conette_beam import conette_beam_search
from aac_jax.decoding.constraints import NEG_INF, apply_constraints
from aac_jax.decoding.generate import (
  decode_encoded,
  generate,
  make_generate_fn,
  make_sharded_generate_fn,
)
from aac_jax.decoding.search import DecodeOutput, filter_top_k, filter_top_p, greedy_search, sample
from aac_jax.decoding.settings import (
  FUNCTION_WORDS,
  METHODS,
  DecodeSettings,
  make_decode_settings,
  make_repeat_ban_mask,
  model_decode_settings,
  repeat_ban_mask_for,
)
from aac_jax.decoding.steps import (
  StepFn,
  eval_model,
  init_cache,
  make_step_fn,
  make_uncached_step_fn,
  repeat_rows,
)

__all__ = [
  'FUNCTION_WORDS',
  'METHODS',
  'NEG_INF',
  'DecodeOutput',
  'DecodeSettings',
  'StepFn',
  'apply_constraints',
  'beam_search',
  'conette_beam_search',
  'decode_encoded',
  'eval_model',
  'filter_top_k',
  'filter_top_p',
  'generate',
  'greedy_search',
  'init_cache',
  'length_penalty',
  'make_decode_settings',
  'make_generate_fn',
  'make_repeat_ban_mask',
  'make_sharded_generate_fn',
  'make_step_fn',
  'make_uncached_step_fn',
  'model_decode_settings',
  'repeat_ban_mask_for',
  'repeat_rows',
  'sample',
]
