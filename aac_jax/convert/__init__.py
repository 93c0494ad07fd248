"""Checkpoint converters: published torch files -> folders aac_jax reads without torch.

Each subcommand of `tools/convert_checkpoint.py` is a module here with
`add_arguments(parser)` and `run(args)`; torch is imported only inside them
(the `convert` extra).
"""

# Subcommand -> module (imported only when that subcommand runs).
CONVERTERS = {
  'fense': 'aac_jax.convert.fense',
}
