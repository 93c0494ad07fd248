"""The docs stay honest: links resolve, documented commands exist and answer `--help`.

Reads README.md and docs/*.md. Every relative link and image (outside code)
must name an existing file, and an anchor one of its headings; every
repository file named in code (`configs/...`, `tools/...`, `tests/...`)
must exist. Every
`python tools/X.py`, `python -m aac_jax...` and `aac-*` command in a code
block or inline code must name an entry point that exists (the tools file,
the package's module file, a console script declared in setup.py), and each
distinct entry point is started once with `--help`, in parallel, and must exit
0 (for a console script: the function setup.py names). The checkers take the repository root, so the last tests break a copy of
the docs on purpose and require them to notice.
"""

import dataclasses
import importlib
import json
import os
import pathlib
import re
import runpy
import shutil
import signal
import subprocess
import sys
import tempfile
import traceback

REPO = pathlib.Path(__file__).resolve().parents[1]
HELP_TIMEOUT_S = 300  # All entry points together.
# Imported once before the --help children fork: what most entry points import.
PRELOAD = (
  'aac_jax',
  'flax.linen',
  'optax',
  'orbax.checkpoint',
  'grain',
  'tensorflow_datasets',
  'tensorboardX',
  'ml_collections.config_flags',
  'absl.app',
)

FENCE = re.compile(r'^[ \t]*```[^\n]*\n(.*?)^[ \t]*```[ \t]*$', re.M | re.S)
INLINE_CODE = re.compile(r'`([^`]+)`')
LINK = re.compile(r'!?\[[^\]]*\]\(([^)\s]+)(?:\s+"[^"]*")?\)')
HEADING = re.compile(r'^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$', re.M)
TOOL = re.compile(r'\bpython3?[ \t]+(tools/[\w-]+\.py)\b')
MODULE = re.compile(r'\bpython3?[ \t]+-m[ \t]+(aac_jax(?:\.\w+)*)')
# A console script where a command starts: line start, `$ `, after ; && || |.
SCRIPT = re.compile(r'(?:^|[;&|][ \t]*|\$[ \t]+)(aac-[a-z][a-z0-9-]*)\b', re.M)
# A file of the repository named in code: `configs/clotho.py:model=small`, `launch/demo.sh`.
REPO_PATH = re.compile(
  r'(?<![\w/.-])((?:aac_jax|configs|launch|tools|tests|docs)/[\w/.-]*\w\.(?:py|sh|md|png))\b'
)
EXAMPLE_PATHS = {'tests/test_x.py'}  # A made-up name in a command pattern, not a file.
CONSOLE_SCRIPT = re.compile(r"""['"](aac-[\w-]+)\s*=\s*([\w.]+):(\w+)['"]""")


@dataclasses.dataclass(frozen=True)
class EntryPoint:
  """One documented command: `kind` is 'tool', 'module' or 'script'."""

  kind: str
  name: str


def doc_files(root: pathlib.Path) -> list[pathlib.Path]:
  """README.md and every page under docs/."""
  return [root / 'README.md', *sorted((root / 'docs').glob('*.md'))]


def split_code(text: str) -> tuple[list[str], str]:
  """The code of a markdown text, and the text with its code removed.

  Returns:
    (code, prose): fenced blocks (continuation lines joined) and inline code
    spans; the rest of the text, where links are read.
  """
  blocks = [block.replace('\\\n', ' ') for block in FENCE.findall(text)]
  rest = FENCE.sub('', text)
  spans = [' '.join(span.split()) for span in INLINE_CODE.findall(rest)]
  return blocks + spans, INLINE_CODE.sub('', rest)


def slug(heading: str) -> str:
  """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as '-'."""
  return re.sub(r'[^\w\- ]', '', heading.strip().lower()).replace(' ', '-')


def anchors(path: pathlib.Path) -> set[str]:
  """The anchors of a markdown file's headings (outside code blocks)."""
  return {slug(h) for h in HEADING.findall(FENCE.sub('', path.read_text()))}


def broken_links(root: pathlib.Path) -> list[str]:
  """Every relative link or image of the docs that does not resolve, as 'file: target (why)'."""
  problems = []
  for page in doc_files(root):
    _, prose = split_code(page.read_text())
    for target in LINK.findall(prose):
      if re.match(r'[a-z][a-z0-9+.-]*:', target):  # https:, mailto:: not ours to check.
        continue
      path_part, _, anchor = target.partition('#')
      path = (page.parent / path_part).resolve() if path_part else page
      where = f'{page.relative_to(root)}: {target}'
      if not path.is_file():
        problems.append(f'{where} (no such file)')
      elif anchor and path.suffix == '.md' and anchor not in anchors(path):
        problems.append(f'{where} (no heading with this anchor)')
  return problems


def documented_entry_points(root: pathlib.Path) -> dict[EntryPoint, list[str]]:
  """The entry points the docs' code names, each with the files naming it."""
  found: dict[EntryPoint, list[str]] = {}
  for page in doc_files(root):
    code, _ = split_code(page.read_text())
    for text in code:
      points = [EntryPoint('tool', m) for m in TOOL.findall(text)]
      points += [EntryPoint('module', m) for m in MODULE.findall(text)]
      points += [EntryPoint('script', m) for m in SCRIPT.findall(text)]
      for point in points:
        found.setdefault(point, [])
        if page.name not in found[point]:
          found[point].append(page.name)
  return found


def missing_paths(root: pathlib.Path) -> list[str]:
  """Every repository file the docs' code names that does not exist, as 'file: path'."""
  problems = []
  for page in doc_files(root):
    code, _ = split_code(page.read_text())
    for path in sorted({p for text in code for p in REPO_PATH.findall(text)} - EXAMPLE_PATHS):
      if not (root / path).is_file():
        problems.append(f'{page.relative_to(root)}: {path}')
  return problems


def console_scripts(root: pathlib.Path) -> dict[str, tuple[str, str]]:
  """setup.py's console scripts: name -> (module, function)."""
  return {n: (m, f) for n, m, f in CONSOLE_SCRIPT.findall((root / 'setup.py').read_text())}


def missing_entry_points(root: pathlib.Path) -> list[str]:
  """Every documented entry point that does not exist, as 'command (named in files)'."""
  scripts = console_scripts(root)
  problems = []
  for point, pages in documented_entry_points(root).items():
    if point.kind == 'tool':
      exists = (root / point.name).is_file()
    elif point.kind == 'module':  # `python -m` runs a module file or a package's __main__.
      path = root.joinpath(*point.name.split('.'))
      exists = path.with_suffix('.py').is_file() or (path / '__main__.py').is_file()
    else:
      exists = point.name in scripts
    if not exists:
      problems.append(f'{point.kind} {point.name} (named in {", ".join(pages)})')
  return problems


def serve_help(specs: list[list], workers: int, preload: list[str]) -> list[dict]:
  """Starts every entry point with `--help`, each in its own forked process.

  Runs in a process of its own (`failing_help`): it imports `preload` once
  (JAX and the libraries every entry point needs: most of a `--help`'s time)
  and forks a child per entry point, `workers` at a time, so the children
  only import their own modules. A child sees the command line of the
  documented command (`sys.argv`, `sys.path[0]`, `__main__`) and writes its
  output to a file of its own.

  Args:
    specs: `[kind, name, (module, function) of a console script or None]`.
    workers: children running at once.
    preload: modules imported before the first fork.

  Returns:
    Per entry point: kind, name, exit status and the last lines of output.
  """
  for module in preload:
    importlib.import_module(module)
  logs = pathlib.Path(tempfile.mkdtemp(prefix='docs_help_'))
  results, running, pending = [], {}, list(enumerate(specs))
  while pending or running:
    while pending and len(running) < workers:
      index, spec = pending.pop(0)
      sys.stdout.flush()
      sys.stderr.flush()
      pid = os.fork()
      if pid == 0:
        _help_child(spec, logs / f'{index}.log')
      running[pid] = (spec, logs / f'{index}.log')
    pid, status = os.wait()
    (kind, name, _), log = running.pop(pid)
    tail = log.read_text(errors='replace').strip().splitlines()[-3:]
    results.append(dict(kind=kind, name=name, status=os.waitstatus_to_exitcode(status), tail=tail))
  shutil.rmtree(logs)
  return results


def _help_child(spec: list, log: pathlib.Path) -> None:
  """In the forked child: runs one entry point with `--help`; never returns."""
  kind, name, target = spec
  code = 1
  try:
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.argv = [name, '--help']
    if kind == 'tool':  # As `python tools/X.py`: the script's folder first on the path.
      sys.path[0] = str(pathlib.Path(name).resolve().parent)
      runpy.run_path(name, run_name='__main__')
    elif kind == 'module':  # As `python -m`: the current folder first.
      sys.path[0] = os.getcwd()
      runpy.run_module(name, run_name='__main__', alter_sys=True)
    else:  # As the console script setup.py declares: sys.exit(function()).
      module, function = target
      sys.exit(getattr(importlib.import_module(module), function)())
    code = 0
  except SystemExit as stop:
    code = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
    if isinstance(stop.code, str):
      print(stop.code, file=sys.stderr)
  except BaseException:  # noqa: BLE001 - reported as the entry point's failure.
    traceback.print_exc()
  finally:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def failing_help(
  points: list[EntryPoint], root: pathlib.Path, preload: tuple[str, ...] = PRELOAD
) -> list[str]:
  """The entry points whose `--help` does not exit 0 with some output, with their output.

  One `serve_help` process (started as this file) runs them all from `root`.
  """
  scripts = console_scripts(root)
  specs = [[p.kind, p.name, scripts.get(p.name)] for p in points]
  workers = max(2, min(8, os.cpu_count() or 2))
  this = str(pathlib.Path(__file__).resolve())
  command = [sys.executable, this, json.dumps(specs), str(workers), json.dumps(preload)]
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  with subprocess.Popen(
    command,
    cwd=root,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    start_new_session=True,
  ) as server:
    try:
      out, err = server.communicate(timeout=HELP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
      os.killpg(server.pid, signal.SIGKILL)  # The server and its children.
      server.communicate()
      return [f'--help of {len(points)} entry points: no answer in {HELP_TIMEOUT_S} s']
  if server.returncode != 0:
    return [f'the --help runner failed ({server.returncode}): {err.strip()[-2000:]}']
  return [
    f'{r["name"]} --help: exit status {r["status"]}: {" | ".join(r["tail"]) or "printed nothing"}'
    for r in json.loads(out.strip().splitlines()[-1])
    if r['status'] != 0 or not r['tail']
  ]


def test_relative_links_resolve():
  assert not broken_links(REPO), broken_links(REPO)


def test_named_repository_files_exist():
  assert not missing_paths(REPO), missing_paths(REPO)


def test_documented_entry_points_exist():
  found = documented_entry_points(REPO)
  # The extraction itself works: commands every version of the docs shows.
  for point in [
    EntryPoint('tool', 'tools/evaluate.py'),
    EntryPoint('module', 'aac_jax.main'),
    EntryPoint('script', 'aac-caption'),
  ]:
    assert point in found, point
  assert not missing_entry_points(REPO), missing_entry_points(REPO)


def test_documented_entry_points_answer_help():
  points = sorted(documented_entry_points(REPO), key=lambda p: (p.kind, p.name))
  failures = failing_help(points, REPO)
  assert not failures, '\n'.join(failures)


@dataclasses.dataclass
class _Copy:
  root: pathlib.Path

  def edit(self, name: str, old: str, new: str) -> None:
    path = self.root / name
    text = path.read_text()
    assert old in text, (name, old)
    path.write_text(text.replace(old, new, 1))


def _copy_docs(tmp_path: pathlib.Path) -> _Copy:
  """README.md, docs/ (with images), setup.py and tools/ copied for breaking; the rest linked."""
  shutil.copy(REPO / 'README.md', tmp_path / 'README.md')
  for name in ['aac_jax', 'configs', 'launch', 'tests']:
    (tmp_path / name).symlink_to(REPO / name)
  shutil.copy(REPO / 'setup.py', tmp_path / 'setup.py')
  shutil.copytree(REPO / 'docs', tmp_path / 'docs')
  shutil.copytree(REPO / 'tools', tmp_path / 'tools', ignore=shutil.ignore_patterns('__pycache__'))
  return _Copy(tmp_path)


def test_checks_notice_broken_links(tmp_path):
  docs = _copy_docs(tmp_path)
  assert not broken_links(docs.root)
  docs.edit('README.md', '(docs/datasets.md)', '(docs/dataset.md)')
  docs.edit('docs/training.md', '(ablations.md)', '(ablations.md#no-such-heading)')
  image = next((docs.root / 'docs' / 'images').glob('*.png'))
  image.unlink()
  docs.edit('docs/training.md', '`configs/clotho_scst.py`', '`configs/clotho_scts.py`')
  assert missing_paths(docs.root) == ['docs/training.md: configs/clotho_scts.py']
  problems = broken_links(docs.root)
  assert any('README.md: docs/dataset.md (no such file)' in p for p in problems), problems
  assert any('ablations.md#no-such-heading (no heading' in p for p in problems), problems
  assert any(image.name in p for p in problems), problems


def test_checks_notice_broken_commands(tmp_path):
  docs = _copy_docs(tmp_path)
  assert not missing_entry_points(docs.root)
  (docs.root / 'tools' / 'evaluate.py').unlink()
  docs.edit('README.md', 'python -m aac_jax.main ', 'python -m aac_jax.mian ')
  docs.edit('setup.py', "'aac-caption=", "'aac-captions=")
  problems = missing_entry_points(docs.root)
  for name in ['tools/evaluate.py', 'aac_jax.mian', 'aac-caption']:
    assert any(f' {name} (named in' in p for p in problems), (name, problems)
  # A tool whose --help fails is reported with its exit status.
  (docs.root / 'tools' / 'caption.py').write_text('import sys\nsys.exit(3)\n')
  failures = failing_help([EntryPoint('tool', 'tools/caption.py')], docs.root, preload=())
  assert failures and 'exit status 3' in failures[0], failures


if __name__ == '__main__':  # The --help runner of `failing_help`.
  print(json.dumps(serve_help(json.loads(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3]))))
