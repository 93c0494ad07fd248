"""Reads the text files users hand us (manifests, caption CSVs, predictions).

Text is UTF-8, with or without a byte-order mark (Excel writes one). A file
that is not valid UTF-8 is never re-read wholesale in another encoding:
only the lines that fail UTF-8 are decoded with the fallback encoding
(ISO-8859-1 by default, which decodes any byte), so `café` written in UTF-8
stays `café` next to a line saved in Latin-1. Whenever the fallback is used
the result carries a warning naming the file, the byte offset of the first
bad byte and the encoding used; callers record or print it. A NUL byte is
refused (`ValueError` naming the file and line): Python's csv module passes
it through into captions, where it would be stored and scored unseen.
"""

import csv
import io
import os
import pathlib
from typing import NamedTuple

FALLBACK_ENCODING = 'iso-8859-1'
_BOM = b'\xef\xbb\xbf'


class DecodedText(NamedTuple):
  """A decoded file.

  Attributes:
    text: the text, without a byte-order mark.
    warning: '' for valid UTF-8, else what was read with the fallback.
  """

  text: str
  warning: str


def decode_bytes(data: bytes, name: str, fallback: str = FALLBACK_ENCODING) -> DecodedText:
  """Decodes UTF-8 (BOM allowed); lines that are not UTF-8 use `fallback`.

  Args:
    data: the file's bytes.
    name: the file's name, for the warning.
    fallback: encoding of the lines that are not UTF-8.

  Returns:
    The text and a warning ('' when every line is UTF-8).

  Raises:
    ValueError: the data holds a NUL byte (a damaged or binary file, or
      UTF-16 text): never text a caption or id may contain.
  """
  if b'\0' in data:
    at = data.index(b'\0')
    line = data.count(b'\n', 0, at) + 1
    raise ValueError(
      f'{name}: NUL byte at byte {at} (line {line}): not a UTF-8 text '
      'file (damaged, binary, or UTF-16); save it as UTF-8 text without NUL bytes'
    )
  try:
    return DecodedText(data.decode('utf-8-sig'), '')
  except UnicodeDecodeError as error:  # Its offset does not count the stripped BOM.
    first_bad = error.start + (len(_BOM) if data.startswith(_BOM) else 0)
  body = data[len(_BOM) :] if data.startswith(_BOM) else data
  lines = body.splitlines(keepends=True)
  decoded, bad_lines = [], []
  for number, line in enumerate(lines, 1):
    try:
      decoded.append(line.decode('utf-8'))
    except UnicodeDecodeError:
      decoded.append(line.decode(fallback, errors='replace'))
      bad_lines.append(number)
  line_of_bad = data.count(b'\n', 0, first_bad) + 1
  shown = ', '.join(map(str, bad_lines[:10])) + (' ...' if len(bad_lines) > 10 else '')
  warning = (
    f'{name}: not valid UTF-8 at byte {first_bad} (line {line_of_bad}, byte '
    f'0x{data[first_bad]:02x}); {len(bad_lines)} of {len(lines)} lines read as {fallback} '
    f'(lines {shown}), the others as UTF-8. Save the file as UTF-8 to be sure of its text.'
  )
  return DecodedText(''.join(decoded), warning)


def read_text(path: str | os.PathLike) -> DecodedText:
  """Reads a text file with `decode_bytes`."""
  path = pathlib.Path(path)
  return decode_bytes(path.read_bytes(), str(path))


class CsvRows(NamedTuple):
  """A CSV file's rows.

  Attributes:
    rows: `[(line_number, row_dict), ...]`: a row with missing fields has
      None there; surplus fields are under the key None.
    columns: the header names, stripped.
    warning: the encoding warning of `decode_bytes` ('' for UTF-8).
  """

  rows: list[tuple[int, dict]]
  columns: list[str]
  warning: str


def read_csv_rows(path: str | os.PathLike) -> CsvRows:
  """Reads a CSV with a header row (see `decode_bytes` for the encoding).

  Quoted fields (commas, quotes, new lines inside captions or file names)
  are handled by the csv module. Blank lines are skipped.

  Args:
    path: the CSV file.

  Returns:
    The rows, header and encoding warning.

  Raises:
    ValueError: the file cannot be parsed as CSV.
  """
  text, warning = read_text(path)
  reader = csv.DictReader(io.StringIO(text, newline=''))
  columns = [name.strip() for name in reader.fieldnames or []]
  reader.fieldnames = columns
  rows = []
  try:
    for row in reader:
      if any(value not in (None, '') for value in row.values()):
        rows.append((reader.line_num, row))
  except csv.Error as error:  # The file is not a CSV past this point.
    raise ValueError(f'{path}: line {reader.line_num}: {error}') from error
  return CsvRows(rows, columns, warning)
