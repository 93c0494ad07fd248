"""Scalars from the TensorBoard event files a run writes, without TensorFlow.

The trainer writes `events.out.tfevents.*` with tensorboardX (see
`aac_jax.train.metric_writers`). Each file is a sequence of records
(TFRecord framing: uint64 length, masked CRC-32C of the length, the payload,
masked CRC-32C of the payload); each payload is an `Event` protocol buffer,
whose class tensorboardX ships. A record cut short by a killed process, or
failing its checksum, ends the reading of that file.

A resumed run writes a new file and redoes the steps after its last
checkpoint: per tag and step, the value written last wins.
"""

import os
import struct
from collections.abc import Iterator

from etils import epath
from tensorboardX.proto import event_pb2
from tensorboardX.record_writer import masked_crc32c

EVENT_FILE_GLOB = 'events.out.tfevents.*'

# tag -> [(step, value)] sorted by step.
Scalars = dict[str, list[tuple[int, float]]]


def read_records(path: epath.Path) -> Iterator[bytes]:
  """The payloads of one record file, up to the first damaged record."""
  data = path.read_bytes()
  offset = 0
  while offset + 12 <= len(data):
    header = data[offset : offset + 8]
    (length,) = struct.unpack('<Q', header)
    (length_crc,) = struct.unpack('<I', data[offset + 8 : offset + 12])
    end = offset + 12 + length + 4
    if length_crc != masked_crc32c(header) or end > len(data):
      return
    payload = data[offset + 12 : offset + 12 + length]
    if struct.unpack('<I', data[end - 4 : end])[0] != masked_crc32c(payload):
      return
    yield payload
    offset = end


def _file_order(path: epath.Path) -> tuple[int, str]:
  """tensorboardX names files `events.out.tfevents.<unix time>.<host>...`."""
  parts = path.name.split('.')
  stamp = int(parts[3]) if len(parts) > 3 and parts[3].isdigit() else 0
  return stamp, path.name


def read_scalars(logdir: str | os.PathLike) -> Scalars:
  """Every scalar in the event files directly inside `logdir`.

  Args:
    logdir: a run's workdir.

  Returns:
    tag -> `[(step, value)]` sorted by step; where a step was written more
    than once (a resumed run), the value from the newest file.
  """
  by_tag: dict[str, dict[int, float]] = {}
  for path in sorted(epath.Path(logdir).glob(EVENT_FILE_GLOB), key=_file_order):
    for payload in read_records(path):
      event = event_pb2.Event.FromString(payload)
      if not event.HasField('summary'):
        continue
      for value in event.summary.value:
        if value.HasField('simple_value'):
          by_tag.setdefault(value.tag, {})[int(event.step)] = float(value.simple_value)
  return {tag: sorted(steps.items()) for tag, steps in by_tag.items()}
