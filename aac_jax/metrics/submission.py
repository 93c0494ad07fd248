"""The DCASE audio-captioning submission file: `file_name,caption_predicted`.

One row per clip, the clip's file name (e.g. `clip.wav`, as in the Clotho
caption CSVs) and its predicted caption, with a header; the CSV module
quotes captions holding commas. Both `aac-evaluate --submission` and
`aac-caption --format dcase` write it with `write_dcase_submission`.
"""

import csv
import io
import os
import pathlib
from collections.abc import Sequence

HEADER = ('file_name', 'caption_predicted')


def dcase_submission_text(file_names: Sequence[str], captions: Sequence[str]) -> str:
  """The submission CSV as text.

  Raises:
    ValueError: lengths differ, a file name repeats or is empty, or a caption
      spans lines.
  """
  if len(file_names) != len(captions):
    raise ValueError(f'{len(file_names)} file names but {len(captions)} captions')
  seen = set()
  for name, caption in zip(file_names, captions, strict=True):
    if not name or name in seen:
      raise ValueError(f'file name {name!r} is empty or repeated')
    if '\n' in caption or '\r' in caption:
      raise ValueError(f'caption of {name!r} spans several lines')
    seen.add(name)
  out = io.StringIO(newline='')
  writer = csv.writer(out, lineterminator='\n')
  writer.writerow(HEADER)
  writer.writerows(zip(file_names, captions, strict=True))
  return out.getvalue()


def write_dcase_submission(
  path: str | os.PathLike, file_names: Sequence[str], captions: Sequence[str]
) -> pathlib.Path:
  """Writes the submission CSV atomically (temporary file, then rename); returns its path."""
  text = dcase_submission_text(file_names, captions)
  path = pathlib.Path(path).expanduser()
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
  tmp.write_text(text, encoding='utf-8', newline='')
  tmp.replace(path)
  return path
