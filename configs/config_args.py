"""Parses the variant string after ':' in `--config configs/x.py:ARGS`.

ARGS is a comma-separated list of `key=value` or bare flags, e.g.
`model=small,runlocal`. Bare flags become `True`.
"""


def parse_config_arg(arg: str | None, defaults: dict) -> dict:
  """Returns `defaults` updated from `arg`; unknown keys are an error.

  Args:
    arg: the text after ':' in the --config flag, or None.
    defaults: every accepted key with its default value.

  Returns:
    A new dict with the same keys.
  """
  values = dict(defaults)
  if not arg:
    return values
  for item in arg.split(','):
    key, sep, value = item.partition('=')
    key = key.strip()
    if key not in values:
      raise ValueError(
        f'unknown config variant {key!r} in {arg!r}; accepted: {sorted(values)} '
        '(example: --config configs/clotho.py:model=small)'
      )
    values[key] = value.strip() if sep else True
  return values
