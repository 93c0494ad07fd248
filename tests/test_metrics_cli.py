"""`aac-evaluate` on CSV, JSON and TFDS inputs."""

import csv
import json

import pytest
import toy_dataset

from aac_jax.metrics import compute_caption_metrics, evaluate_cli


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
