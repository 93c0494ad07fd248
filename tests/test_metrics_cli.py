"""`aac-evaluate` on CSV, JSON and TFDS inputs."""

import csv
import importlib.util
import io
import json
import os
import pathlib
import shutil
import sys

import pytest
import toy_dataset

from aac_jax.metrics import compute_caption_metrics, evaluate_cli, meteor


def _write_csv(path, header, rows):
  with open(path, 'w', encoding='utf-8', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(header)
    writer.writerows(rows)
  return str(path)


CLOTHO = [
  ('a b.wav', 'A dog barks.', 'A dog is barking loudly.', 'Barking.', 'A dog.', 'Dog, barking'),
  ('c,d.wav', 'Rain falls on a roof.', 'Rain on the roof.', 'Raindrops.', 'Rain.', 'Heavy rain'),
]


def test_clotho_csv(tmp_path, capsys):
  refs = _write_csv(
    tmp_path / 'refs.csv', ['file_name'] + [f'caption_{i}' for i in range(1, 6)], CLOTHO
  )
  preds = _write_csv(
    tmp_path / 'preds.csv',
    ['file_name', 'caption_predicted'],
    [('c,d.wav', 'rain falls'), ('a b.wav', 'a dog\nbarks')],  # A quoted line break.
  )
  out = tmp_path / 'scores.json'
  report = evaluate_cli.main(
    ['--predictions', preds, '--references', refs, '--output', str(out), '--per_clip']
  )
  expected = compute_caption_metrics(['a dog\nbarks', 'rain falls'], [list(r[1:]) for r in CLOTHO])
  assert report['corpus'] == expected.corpus
  assert json.loads(out.read_text()) == report
  assert report['per_clip']['c,d.wav']['cider_d'] == expected.per_clip['cider_d'][1]
  printed = capsys.readouterr().out
  assert 'cider_d' in printed and 'not requested' in printed and '2 clips' in printed


def test_audiocaps_csv_and_json_predictions(tmp_path):
  rows = [
    (1, 'vid1', 30, 'A man speaks'),
    (2, 'vid1', 30, 'Someone talks'),
    (3, 'vid2', 0, 'Wind blows'),
    (4, 'vid2', 10, 'Birds chirp'),  # Same video, other clip: ids vid2_0, vid2_10.
  ]
  refs = _write_csv(
    tmp_path / 'test.csv', ['audiocap_id', 'youtube_id', 'start_time', 'caption'], rows
  )
  preds = tmp_path / 'preds.json'
  preds.write_text(json.dumps({'vid1': 'a man talks', 'vid2_0': 'wind', 'vid2_10': 'birds'}))
  report = evaluate_cli.main(
    ['--predictions', str(preds), '--references', refs, '--output', str(tmp_path / 'o.json')]
  )
  expected = compute_caption_metrics(
    ['a man talks', 'wind', 'birds'],
    [['A man speaks', 'Someone talks'], ['Wind blows'], ['Birds chirp']],
  )
  assert report['num_clips'] == 3 and report['corpus'] == expected.corpus


def test_trainer_json_with_embedded_references(tmp_path):
  rows = [
    {'id': 'x', 'prediction': 'a dog barks', 'references': ['a dog barks', 'dog']},
    {'id': 'y', 'prediction': 'rain', 'references': ['rain falls']},
  ]
  preds = tmp_path / 'validation_step100.json'
  preds.write_text(json.dumps(rows))
  report = evaluate_cli.main(['--predictions', str(preds)])
  assert report['num_clips'] == 2
  assert (tmp_path / 'validation_step100.json.scores.json').exists()


def test_mismatched_ids_and_bad_files(tmp_path):
  refs = _write_csv(
    tmp_path / 'refs.csv', ['file_name'] + [f'caption_{i}' for i in range(1, 6)], CLOTHO
  )
  preds = _write_csv(
    tmp_path / 'preds.csv', ['file_name', 'caption_predicted'], [('a b.wav', 'a dog')]
  )
  with pytest.raises(ValueError, match='1 clips have no prediction'):
    evaluate_cli.main(['--predictions', preds, '--references', refs])
  other = _write_csv(tmp_path / 'other.csv', ['name', 'text'], [('a', 'b')])
  with pytest.raises(ValueError, match='neither a Clotho nor an AudioCaps'):
    evaluate_cli.main(['--predictions', preds, '--references', other])
  with pytest.raises(ValueError, match='no id column'):
    evaluate_cli.main(['--predictions', other, '--references', refs])
  twice = _write_csv(
    tmp_path / 'twice.csv', ['id', 'caption'], [('a b.wav', 'x'), ('a b.wav', 'y')]
  )
  with pytest.raises(ValueError, match='predicted twice'):
    evaluate_cli.main(['--predictions', twice, '--references', refs])


def test_tfds_split(tmp_path):
  name = toy_dataset.build_toy_dataset(str(tmp_path / 'tfds'), splits={'test': 4})
  references = evaluate_cli.read_tfds_references(name, 'test', str(tmp_path / 'tfds'))
  assert sorted(references) == [f'test_{i:04d}' for i in range(4)]
  preds = tmp_path / 'preds.json'
  preds.write_text(json.dumps({k: refs[0] for k, refs in references.items()}))
  report = evaluate_cli.main(
    [
      '--predictions',
      str(preds),
      '--tfds',
      name,
      '--split',
      'test',
      '--data_dir',
      str(tmp_path / 'tfds'),
    ]
  )
  assert report['num_clips'] == 4 and report['corpus']['bleu_1'] > 0.99


def _clotho_refs(tmp_path, encoding='utf-8') -> str:
  header = ['file_name'] + [f'caption_{i}' for i in range(1, 6)]
  with open(tmp_path / 'refs.csv', 'w', encoding=encoding, newline='') as f:
    csv.writer(f).writerows([header, *CLOTHO])
  return str(tmp_path / 'refs.csv')


def test_non_string_predictions_are_rejected_with_the_id(tmp_path):
  refs = _clotho_refs(tmp_path)
  cases = {
    'null.json': (
      json.dumps({'a b.wav': None, 'c,d.wav': 'rain'}),
      "the prediction of clip 'a b.wav' is null (or a missing CSV field), not a string",
    ),
    'records.json': (
      json.dumps([{'id': 'a b.wav', 'caption': 3}, {'id': 'c,d.wav', 'caption': 'rain'}]),
      "the prediction of clip 'a b.wav' is int, not a string",
    ),
    'short.csv': ('file_name,caption\n"c,d.wav",rain\na b.wav\n', "clip 'a b.wav' is null"),
    'refs.json': (
      json.dumps([{'id': 'x', 'caption': 'a', 'references': ['b', None]}]),
      "the reference of clip 'x' is null",
    ),
  }
  for name, (text, message) in cases.items():
    (tmp_path / name).write_text(text)
    with pytest.raises(ValueError, match=message.replace('(', r'\(').replace(')', r'\)')):
      evaluate_cli.main(['--predictions', str(tmp_path / name), '--references', refs])
  assert not list(tmp_path.glob('*.scores.json'))  # Nothing scored.


def test_excel_bom_csv_and_latin1_byte(tmp_path, capsys):
  refs = _clotho_refs(tmp_path, encoding='utf-8-sig')  # Excel's "CSV UTF-8".
  preds = tmp_path / 'preds.csv'
  data = b'\xef\xbb\xbffile_name,caption_predicted\n"a b.wav",a dog barks\n"c,d.wav",rain caf\xe9\n'
  preds.write_bytes(data)
  out = tmp_path / 'o.json'
  report = evaluate_cli.main(
    ['--predictions', str(preds), '--references', refs, '--output', str(out)]
  )
  expected = compute_caption_metrics(['a dog barks', 'rain café'], [list(r[1:]) for r in CLOTHO])
  assert report['corpus'] == expected.corpus
  offset = data.index(b'\xe9')
  warning = (
    f'{preds}: not valid UTF-8 at byte {offset} (line 3, byte 0xe9); 1 of 3 lines read as '
    'iso-8859-1 (lines 3), the others as UTF-8. Save the file as UTF-8 to be sure of its text.'
  )
  assert report['warnings'] == [warning]
  assert f'aac-evaluate: warning: {warning}' in capsys.readouterr().err


def test_scores_written_before_the_table(tmp_path, monkeypatch):
  """`aac-evaluate ... | head -1` closes the pipe: the JSON must already be there."""
  refs = _clotho_refs(tmp_path)
  preds = _write_csv(
    tmp_path / 'p.csv', ['file_name', 'caption'], [('a b.wav', 'a dog'), ('c,d.wav', 'rain')]
  )

  class ClosedPipe(io.StringIO):
    def write(self, text):
      raise BrokenPipeError(32, 'Broken pipe')

  monkeypatch.setattr(sys, 'stdout', ClosedPipe())
  out = tmp_path / 'o.json'
  with pytest.raises(BrokenPipeError):
    evaluate_cli.main(['--predictions', preds, '--references', refs, '--output', str(out)])
  assert json.loads(out.read_text())['num_clips'] == 2


def test_relative_java_path_is_made_absolute(tmp_path, monkeypatch):
  (tmp_path / 'bin').mkdir()
  fake = tmp_path / 'bin' / 'java'
  fake.write_text('#!/bin/sh\nexit 1\n')
  fake.chmod(0o755)
  monkeypatch.chdir(tmp_path)
  assert meteor.find_java('bin/java') == str(fake)  # METEOR runs from the jar's folder.
  assert meteor.find_java('./bin/java') == str(fake)


def test_relative_java_runs_meteor(tmp_path, monkeypatch):
  java = shutil.which('java')
  if java is None or importlib.util.find_spec('pycocoevalcap') is None:
    pytest.skip('METEOR needs Java and pycocoevalcap')
  refs = _clotho_refs(tmp_path)
  preds = _write_csv(
    tmp_path / 'p.csv', ['file_name', 'caption'], [('a b.wav', 'a dog'), ('c,d.wav', 'rain')]
  )
  (tmp_path / 'jre').mkdir()
  (tmp_path / 'jre' / 'java').symlink_to(os.path.realpath(java))
  monkeypatch.chdir(tmp_path)
  report = evaluate_cli.main(
    ['--predictions', preds, '--references', refs, '--meteor', '--java', 'jre/java']
  )
  assert 0 < report['corpus']['meteor'] <= 1 and 'meteor' not in report['unavailable']


@pytest.mark.parametrize(
  ('name', 'data', 'message'),
  [
    ('list.json', b'[1, 2, 3]', '3 list items are not records (the first is 1)'),
    ('p.json', b'', 'empty file, expected JSON predictions'),
    ('cut.json', b'{"a b.wav": "a dog', 'not valid JSON (Unterminated string'),
    ('nul.csv', b'file_name,caption\na b.wav,a d\0og\n', 'NUL byte at byte 29 (line 2)'),
    (
      'nul.json',
      b'{"a b.wav": "a d\\u0000og"}',
      "the prediction of clip 'a b.wav' contains a NUL character",
    ),
  ],
)
def test_bad_prediction_files_are_one_line_naming_the_file(
  tmp_path, monkeypatch, name, data, message
):
  refs = _clotho_refs(tmp_path)
  (tmp_path / name).write_bytes(data)
  argv = ['aac-evaluate', '--predictions', str(tmp_path / name), '--references', refs]
  monkeypatch.setattr(sys, 'argv', argv)
  with pytest.raises(SystemExit) as exit_:  # Python prints its text and exits 1.
    evaluate_cli.run()
  printed = exit_.value.code
  assert printed.startswith(f'aac-evaluate: {tmp_path / name}: {message}'), printed
  assert '\n' not in printed
  assert not list(tmp_path.glob('*.scores.json'))


def test_nul_byte_in_a_reference_caption_is_refused(tmp_path):
  refs = pathlib.Path(_clotho_refs(tmp_path))
  data = refs.read_bytes().replace(b'Rain.', b'Ra\0in.')
  refs.write_bytes(data)
  preds = tmp_path / 'p.json'
  preds.write_text(json.dumps({'a b.wav': 'a dog', 'c,d.wav': 'rain'}))
  at = data.index(b'\0')
  with pytest.raises(ValueError, match=f'{refs}: NUL byte at byte {at} '):
    evaluate_cli.main(['--predictions', str(preds), '--references', str(refs)])
