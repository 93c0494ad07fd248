"""Metric writers with CLU's interface, without TensorFlow.

`clu.metric_writers` imports TensorFlow when the package is imported, so this
module re-implements the small part of its interface the trainer uses
(`write_scalars`, `write_texts`, `write_hparams`, `flush`, `close`) with two
backends: TensorBoard event files through tensorboardX, and plain `absl`
logging. `create_default_writer` writes on process 0 only, like CLU's.
"""

import abc
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from absl import logging


class MetricWriter(abc.ABC):
  """The subset of `clu.metric_writers.MetricWriter` used here."""

  @abc.abstractmethod
  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    """Writes scalar values (Python, numpy or 0-d JAX numbers) for `step`."""

  @abc.abstractmethod
  def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
    """Writes text snippets for `step`."""

  @abc.abstractmethod
  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    """Writes a flat mapping of hyper-parameters (once per run)."""

  def flush(self) -> None:  # noqa: B027 - optional for subclasses, like CLU's.
    """Makes everything written so far durable."""

  def close(self) -> None:
    """Flushes and releases resources; the writer is unusable afterwards."""
    self.flush()


def _to_float(value: Any) -> float:
  return float(np.asarray(value))


class LoggingWriter(MetricWriter):
  """Writes readable lines through `absl.logging`."""

  def __init__(self, collection: str = ''):
    self._prefix = f'[{collection}] ' if collection else ''

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    values = ', '.join(f'{k}={_to_float(v):.6g}' for k, v in sorted(scalars.items()))
    logging.info('%s[%d] %s', self._prefix, step, values)

  def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
    for key, text in sorted(texts.items()):
      logging.info('%s[%d] %s: %s', self._prefix, step, key, text)

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    for key, value in sorted(hparams.items()):
      logging.info('%s[hparams] %s = %r', self._prefix, key, value)


class TensorBoardWriter(MetricWriter):
  """Writes TensorBoard event files with tensorboardX."""

  def __init__(self, logdir: str):
    # Imported here so that a process which never writes (process > 0) does
    # not pay for it.
    import tensorboardX

    self._writer = tensorboardX.SummaryWriter(logdir=logdir)

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    for key, value in scalars.items():
      self._writer.add_scalar(key, _to_float(value), global_step=step)

  def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
    for key, text in texts.items():
      self._writer.add_text(key, text, global_step=step)

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    # TensorBoard's hparams plugin accepts only numbers, strings and bools.
    from tensorboardX.summary import hparams as hparams_summaries  # noqa: PLC0415

    clean = {
      k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in hparams.items()
    }
    # Into this writer's own file: `add_hparams` opens a second writer in the
    # same folder, and tensorboardX names files by second and host only, so a
    # second writer opened in the same second as this one rewrote this file
    # under it (a corrupt event file).
    for summary in hparams_summaries(clean, {}):
      self._writer.file_writer.add_summary(summary)

  def flush(self) -> None:
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()


class MultiWriter(MetricWriter):
  """Forwards every call to several writers."""

  def __init__(self, writers: Sequence[MetricWriter]):
    self._writers = list(writers)

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    for w in self._writers:
      w.write_scalars(step, scalars)

  def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
    for w in self._writers:
      w.write_texts(step, texts)

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    for w in self._writers:
      w.write_hparams(hparams)

  def flush(self) -> None:
    for w in self._writers:
      w.flush()

  def close(self) -> None:
    for w in self._writers:
      w.close()


class NoOpWriter(MetricWriter):
  """Drops everything (processes other than 0)."""

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    del step, scalars

  def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
    del step, texts

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    del hparams


def create_default_writer(
  logdir: str, *, just_logging: bool = False, collection: str = ''
) -> MetricWriter:
  """Creates the writer for one run, in the manner of CLU's.

  Args:
    logdir: Folder for TensorBoard event files.
    just_logging: Only log lines, no event files.
    collection: Name shown in log lines and used as a sub-folder of `logdir`
      (e.g. `'train'`, `'eval'`).

  Returns:
    A `MultiWriter` of TensorBoard and logging backends on process 0, a
    `NoOpWriter` elsewhere.
  """
  if jax.process_index() > 0:
    return NoOpWriter()
  writers: list[MetricWriter] = [LoggingWriter(collection)]
  if not just_logging:
    path = f'{logdir}/{collection}' if collection else logdir
    writers.append(TensorBoardWriter(path))
  return MultiWriter(writers)
