"""Text-to-audio retrieval with a CLAP model: recall@1/5/10 and mAP@10 over a caption split.

  python tools/retrieval.py --clap_dir CLAP_DIR \\
      --references clotho_captions_evaluation.csv --audio_dir clotho_audio_files/evaluation

Every reference caption queries all clips of the split (DCASE language-based
audio retrieval; definitions in `aac_jax/metrics/retrieval.py`). Audio files
are found by clip id as `aac-evaluate --clap_audio_dir` finds them. Writes
the scores as JSON (`--output`) and prints them.

Exit status: 0 scored; 1 refused with one line (a missing CLAP folder, clips
without audio, an unreadable file), before any embedding; 2 bad arguments.
"""

import argparse
import json
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))

from aac_jax import files  # noqa: E402
from aac_jax.metrics import clap_score, evaluate_cli, retrieval  # noqa: E402


def make_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--clap_dir', required=True, help='CLAP folder (convert_checkpoint.py clap).')
  parser.add_argument('--references', required=True, help='Clotho or AudioCaps caption CSV.')
  parser.add_argument('--audio_dir', required=True, help='Audio files named by clip id.')
  parser.add_argument('--batch_size', type=int, default=16, help='Clips per CLAP pass.')
  parser.add_argument('--output', help='JSON output (default: none).')
  return parser


def evaluate(clap_dir: str, references: dict[str, list[str]], audio_dir: str, batch_size: int):
  """Scores retrieval of the clips of `references` by their captions.

  Returns:
    `(scores, ranks)`: metric -> value; int `[queries]` rank of each caption's clip.
  """
  ids = list(references)
  paths = evaluate_cli.clip_audio_paths(audio_dir, ids)  # Refused before any embedding.
  from aac_jax.metrics.clap import embedder

  try:
    model = clap_score.shared_embedder(str(pathlib.Path(clap_dir).expanduser()), batch_size)
  except embedder.ModelUnavailable as e:
    raise ValueError(str(e)) from e
  audio = model.audio(clap_score.read_clips(paths, model.settings.sample_rate))
  captions = [c for clip in ids for c in references[clip]]
  target = [i for i, clip in enumerate(ids) for _ in references[clip]]
  query_ranks = retrieval.ranks(model.text(captions), audio, target)
  return retrieval.retrieval_scores(query_ranks), query_ranks


def main(argv: list[str] | None = None) -> dict:
  args = make_parser().parse_args(argv)
  try:
    references = evaluate_cli.read_reference_csv(args.references)
    scores, query_ranks = evaluate(args.clap_dir, references, args.audio_dir, args.batch_size)
  except (ValueError, OSError) as e:
    raise SystemExit(f'retrieval: error: {e}') from e
  report = {'clips': len(references), 'queries': len(query_ranks), 'scores': scores}
  if args.output:
    files.write_text(pathlib.Path(args.output).expanduser(), json.dumps(report, indent=1) + '\n')
  print(f'{report["clips"]} clips, {report["queries"]} queries')
  for name, value in scores.items():
    print(f'{name:<8} {value:.4f}')
  return report


if __name__ == '__main__':
  main()
