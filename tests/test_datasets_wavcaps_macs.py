"""Builds wavcaps_aac and macs_aac from trees in their published layouts.

The metadata follows the real schemas: WavCaps's `json_files/<source>/
*_final.json` (`{"num_captions_per_audio": 1, "data": [{"id", "caption",
"audio", "duration", ...}]}`, SoundBible as the bare list of its early
release), its blacklist format (`{"AudioSet": [...], "FreeSound": [...]}`),
and MACS.yaml (`files: - filename, annotations: [{annotator_id, sentence,
tags}]`) beside the TAU Urban Acoustic Scenes 2019 audio folder. Audio is
generated: FLAC at 32 kHz as WavCaps ships it, 24-bit stereo WAV at 48 kHz
as TAU does. Hostile rows are mixed in.
"""

import json
import pathlib

import pytest
import tensorflow_datasets as tfds
import yaml
from test_datasets_common import read_split, resampled_length, skipped, write_audio

from aac_jax.data import build_cli, build_report, macs, mixture, pipeline, tokenizer, wavcaps
from configs import base

_OPTIONS = build_report.BuildOptions(progress=False, num_workers=0)


def _build(cls, source, data_dir, **kwargs):
  builder = cls(data_dir=str(data_dir), options=_OPTIONS, **kwargs)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(source)))
  return builder


def _write_json(path: pathlib.Path, value) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(value))


def write_wavcaps_tree(root: pathlib.Path) -> dict[str, tuple[int, str]]:
  """Writes the tree; returns `{record id: (frames at 32 kHz, caption)}` of the good clips."""
  good = {}

  def clip(source, clip_id, caption, folder=None, write=True, **extra):
    folder = folder or root / f'{source}_flac'
    if write:
      frames = write_audio(folder / wavcaps.audio_name(clip_id), 0.3, 32000, seed=len(good))
      good[f'{source}/{clip_id}'] = (frames, caption)
    return {'id': clip_id, 'caption': caption, 'audio': f'{clip_id}.flac', 'duration': 0.3, **extra}

  audioset = [
    clip('AudioSet_SL', 'Yb0RFKhbpFJA.wav', 'A man speaks while a car passes.'),
    clip('AudioSet_SL', 'YvfY_TJq7n_U.wav', 'Rain falls on a roof.'),  # In the overlap list.
    clip('AudioSet_SL', 'Ymissing0001.wav', 'A dog barks.', write=False),
  ]
  good.pop('AudioSet_SL/YvfY_TJq7n_U.wav')
  audioset += [audioset[0], 'not an object', {'id': 'Ynocaption01.wav'}, {'id': 7, 'caption': 'x'}]
  _write_json(
    root / 'json_files' / 'AudioSet_SL' / 'as_final.json',
    {'num_captions_per_audio': 1, 'data': audioset},
  )
  bbc_folder = root / 'waveforms' / 'BBC_Sound_Effects_flac'
  bbc = [
    clip('BBC_Sound_Effects', '07075040', 'Birds sing in a forest.', bbc_folder, category='Birds'),
    clip('BBC_Sound_Effects', '07075041', '...', bbc_folder, category='Birds'),
  ]
  good.pop('BBC_Sound_Effects/07075041')  # Its only caption is empty: no_captions.
  _write_json(
    root / 'json_files' / 'BBC_Sound_Effects' / 'bbc_final.json',
    {'num_captions_per_audio': 1, 'data': bbc},
  )
  freesound = [
    clip('FreeSound', '180913', 'A door creaks open.', tags=['door']),
    clip('FreeSound', '180914', 'Water drips.', write=False),  # Overlap list; no audio needed.
    clip('FreeSound', '../../outside/secret', 'Leads out.', write=False),
    clip('FreeSound', 'sub/180915', 'A path as an id.', write=False),
  ]
  _write_json(
    root / 'json_files' / 'FreeSound' / 'fsd_final.json',
    {'num_captions_per_audio': 1, 'data': freesound},
  )
  # As the Hugging Face zip unpacks beside itself.
  zipped = root / 'Zip_files' / 'SoundBible' / wavcaps.ZIP_FOLDER / 'SoundBible_flac'
  soundbible = [clip('SoundBible', '2219', 'An airplane is landing.', zipped, title='Airplane')]
  _write_json(root / 'json_files' / 'SoundBible' / 'sb_final.json', soundbible)
  (root.parent / 'outside').mkdir(exist_ok=True)
  write_audio(root.parent / 'outside' / 'secret.flac', 0.2, 32000)
  _write_json(
    root / 'json_files' / 'blacklist' / 'blacklist_exclude_test_ac.json',
    {'AudioSet': ['YvfY_TJq7n_U.wav'], 'FreeSound': ['180914']},
  )
  return good


@pytest.fixture(scope='module')
def wavcaps_built(tmp_path_factory):
  root = tmp_path_factory.mktemp('wavcaps')
  good = write_wavcaps_tree(root / 'source')
  blacklist = root / 'source' / 'json_files' / 'blacklist' / 'blacklist_exclude_test_ac.json'
  builder = _build(wavcaps.WavcapsAac, root / 'source', root / 'tfds', exclude=str(blacklist))
  return builder, good


def test_wavcaps_records(wavcaps_built):
  builder, good = wavcaps_built
  records = read_split(builder, 'train')
  assert set(records) == set(good)
  for clip_id, (frames, caption) in good.items():
    record = records[clip_id]
    assert record['captions'] == [caption]
    assert record['audio'].shape == (resampled_length(frames, 32000),)
    source, raw_id = clip_id.split('/', 1)
    assert record['source'].decode() == source and record['wavcaps_id'].decode() == raw_id


def test_wavcaps_task_token_per_source(wavcaps_built, tmp_path):
  """`'wavcaps_{source}'`: each example starts with its own source's token (CoNeTTE's tasks)."""
  builder, good = wavcaps_built
  cfg = base.get_dataset_config()
  cfg.name, cfg.data_dir, cfg.build_if_missing = wavcaps.NAME, str(builder.data_dir_root), False
  cfg.max_audio_seconds, cfg.max_caption_tokens = 0.05, 8
  cfg.mixture = ((wavcaps.NAME, 'train', 1.0, 'wavcaps_{source}'),)
  vocab = tokenizer.load_or_build(cfg, None, str(tmp_path))
  expected_tasks = [f'wavcaps_{s.lower()}' for s in wavcaps.SOURCES]
  assert vocab.tokens[-4:] == [mixture.task_token(t) for t in expected_tasks]
  source = builder.as_data_source('train')
  order = mixture.positions([len(source)], [1.0], pipeline.train_seed(cfg))
  batch = next(pipeline.make_train_iterator(cfg, vocab, 2 * len(good), 0, 1))
  for g, token in enumerate(batch['task_tokens']):
    record_source = source[order[g][1]]['source'].decode()
    assert vocab.tokens[token] == f'<bos_wavcaps_{record_source.lower()}>'
  assert len(set(batch['task_tokens'].tolist())) == len({c.split('/')[0] for c in good})


def test_wavcaps_skip_reasons_and_overlap(wavcaps_built):
  builder, _ = wavcaps_built
  report = build_report.load_report(builder.report_path)
  assert skipped(report, 'train') == {
    'AudioSet_SL/Ymissing0001.wav': 'missing_file',
    'AudioSet_SL/Yb0RFKhbpFJA.wav': 'duplicate_row',
    'AudioSet_SL item 4': 'bad_row',
    'AudioSet_SL/Ynocaption01.wav': 'missing_caption_field',
    'AudioSet_SL item 6': 'bad_row',
    'BBC_Sound_Effects/07075041': 'no_captions',
    'FreeSound/../../outside/secret': 'outside_source_dir',
    'FreeSound/sub/180915': 'bad_row',
  }
  warnings = [w for w in report['splits']['train']['warnings'] if w['kind'] == 'excluded_overlap']
  assert [w['detail'].split(':')[0].split(' in ')[0] for w in warnings] == [
    '1 AudioSet_SL clips listed',
    '1 FreeSound clips listed',
  ]
  # Listed: 4 written, missing, no captions, outside; excluded clips are not listed.
  assert report['splits']['train']['clips_listed'] == 7


def test_wavcaps_bad_overlap_list_is_one_line_before_work(tmp_path, capsys):
  (tmp_path / 'src').mkdir()
  bad = tmp_path / 'list.json'
  bad.write_text('{"YouTube": ["x"]}')
  argv = ['wavcaps', '--source_dir', str(tmp_path / 'src'), '--data_dir', str(tmp_path / 'd')]
  assert build_cli.run([*argv, '--exclude', str(bad), '--no_progress']) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "unknown key 'YouTube'" in err[0] and 'AudioSet' in err[0]
  assert not (tmp_path / 'd').exists()


def test_wavcaps_source_missing_warns(tmp_path):
  source = tmp_path / 'source'
  write_audio(source / 'SoundBible_flac' / '1.flac', 0.2, 32000)
  _write_json(source / 'json_files' / 'SoundBible' / 'sb_final.json', [{'id': '1', 'caption': 'A'}])
  builder = _build(wavcaps.WavcapsAac, source, tmp_path / 'tfds')
  assert set(read_split(builder, 'train')) == {'SoundBible/1'}
  kinds = [w['kind'] for w in build_report.load_report(builder.report_path)['warnings']]
  assert kinds == ['source_not_found'] * 3


def write_macs_tree(root: pathlib.Path) -> dict[str, tuple[int, list[str], list[int]]]:
  """Writes MACS.yaml and TAU audio; returns `{id: (frames at 48 kHz, captions, annotators)}`."""
  audio = root / 'TAU-urban-acoustic-scenes-2019-development' / 'audio'
  good, files = {}, []

  def entry(name, sentences, write=True):
    annotations = [
      {'annotator_id': 100 + i, 'sentence': s, 'tags': ['adults_talking']}
      for i, s in enumerate(sentences)
    ]
    if write:
      frames = write_audio(audio / name, 0.3, 48000, 2, 'PCM_24', seed=len(good))
      kept = [(100 + i, s) for i, s in enumerate(sentences) if s and s.strip('. ')]
      good[name] = (frames, [s for _, s in kept], [i for i, _ in kept])
    return {'filename': name, 'annotations': annotations}

  files.append(entry('airport-lisbon-1000-40000-a.wav', ['adults talking', 'footsteps echo']))
  files.append(entry('park-helsinki-241-7201-a.wav', ['birds sing', '...', 'wind blows']))
  second = entry('street_traffic-london-271-8243-a.wav', ['cars pass'])
  second['annotations'].append({'annotator_id': 'x'})  # No sentence: empty_caption.
  files += [second, files[0], 'not a mapping', {'filename': 'tram-vienna-1-1-a.wav'}]
  files.append(entry('bus-milan-1-1-a.wav', ['a bus'], write=False))  # Missing audio.
  files.append(entry('../../outside/secret.wav', ['leads out'], write=False))
  (root / 'MACS.yaml').write_text(yaml.safe_dump({'files': files}, sort_keys=False))
  write_audio(root.parent / 'outside' / 'secret.wav', 0.2, 48000)
  return good


def test_macs_records_and_skip_reasons(tmp_path):
  good = write_macs_tree(tmp_path / 'source')
  builder = _build(macs.MacsAac, tmp_path / 'source', tmp_path / 'tfds')
  records = read_split(builder, 'train')
  assert set(records) == set(good)
  for name, (frames, captions, annotators) in good.items():
    record = records[name]
    assert record['captions'] == captions
    assert [int(i) for i in record['annotator_ids']] == annotators
    assert record['audio'].shape == (resampled_length(frames, 48000),)
    assert record['scene'].decode() == name.split('-')[0]
  report = build_report.load_report(builder.report_path)
  assert skipped(report, 'train') == {
    'airport-lisbon-1000-40000-a.wav': 'duplicate_row',
    'entry 4': 'bad_row',
    'tram-vienna-1-1-a.wav': 'missing_caption_field',
    'bus-milan-1-1-a.wav': 'missing_file',
    '../../outside/secret.wav': 'outside_source_dir',
  }
  dropped = [(c['id'], c['index']) for c in report['splits']['train']['skipped_captions']]
  assert dropped == [
    ('park-helsinki-241-7201-a.wav', 1),
    ('street_traffic-london-271-8243-a.wav', 1),
  ]


def test_macs_yaml_object_tags_are_refused_unrun(tmp_path):
  source = tmp_path / 'source'
  source.mkdir()
  marker = tmp_path / 'ran'
  (source / 'MACS.yaml').write_text(f'files: !!python/object/apply:os.system ["touch {marker}"]\n')
  with pytest.raises(build_report.BuildError, match='MACS.yaml is not YAML'):
    _build(macs.MacsAac, source, tmp_path / 'tfds')
  assert not marker.exists()
