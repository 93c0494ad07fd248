"""The package's import graph: no cycles, and no floor importing a higher one.

Read from the source (every `import`, also those inside functions), so a
lazy import that closes a circle counts too.
"""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / 'aac_jax'

# Floors, lowest first: a module may import its own floor or lower ones.
# Each top-level module or subpackage of aac_jax has its floor here.
LAYERS = (
  ('', 'xla_cpu', 'files', 'config_path', 'multihost', 'launch_flags'),
  ('audio',),
  ('data',),
  ('metrics', 'decoding'),
  ('models', 'config_validation'),
  ('train',),
  ('inference',),
  ('convert', 'export', 'export_tf', 'caption_cli', 'scst', 'sweeps'),
  ('demo', 'main', 'serving'),
)
FLOOR = {name: floor for floor, names in enumerate(LAYERS) for name in names}


def module_files() -> dict[str, pathlib.Path]:
  """`aac_jax.x.y` -> its file, for every module of the package."""
  found = {}
  for path in PACKAGE.rglob('*.py'):
    parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
    if parts[-1] == '__init__':
      parts = parts[:-1]
    found['.'.join(parts)] = path
  return found


def imported_modules(name: str, path: pathlib.Path, known: set[str]) -> set[str]:
  """The package's modules that `name` imports (a package when no module is named)."""
  package = name if path.name == '__init__.py' else name.rpartition('.')[0]
  out = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      out.update(a.name for a in node.names if a.name.split('.')[0] == 'aac_jax')
    elif isinstance(node, ast.ImportFrom):
      if node.level:
        base = package.split('.')[: len(package.split('.')) - node.level + 1]
        module = '.'.join(base + ([node.module] if node.module else []))
      else:
        module = node.module or ''
      if module.split('.')[0] != 'aac_jax':
        continue
      for alias in node.names:
        full = f'{module}.{alias.name}'
        out.add(full if full in known else module)
  return {m for m in out if m in known and m != name}


def import_graph() -> dict[str, set[str]]:
  files = module_files()
  known = set(files)
  return {name: imported_modules(name, path, known) for name, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """Strongly connected components of more than one module (Tarjan)."""
  index, low, stack, on_stack, found = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in graph[v]:
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        found.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return found


def floor_of(module: str) -> str:
  parts = module.split('.')
  return parts[1] if len(parts) > 1 else ''


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
  """`a -> b` for each import of a higher floor."""
  return [
    f'{a} -> {b}'
    for a, targets in sorted(graph.items())
    for b in sorted(targets)
    if FLOOR.get(floor_of(b), 0) > FLOOR.get(floor_of(a), 0)
  ]


def test_every_part_of_the_package_has_a_floor():
  missing = sorted({floor_of(m) for m in module_files()} - set(FLOOR))
  assert not missing, f'add these to LAYERS in {__file__}: {missing}'


def test_no_import_cycles():
  assert cycles(import_graph()) == []


def test_no_module_imports_a_higher_floor():
  assert upward_imports(import_graph()) == []


def test_the_checks_see_a_cycle_and_an_upward_import():
  graph = {'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}
  assert cycles(graph) == [['a', 'b', 'c']]
  graph = {'aac_jax.models.setup': {'aac_jax.convert.store', 'aac_jax.data.sources'}}
  assert upward_imports(graph) == ['aac_jax.models.setup -> aac_jax.convert.store']
