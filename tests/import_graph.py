"""The package's import graph, read from the code with ``ast``: for the layering and Layout tests.

Every ``import`` counts, at module level and inside functions (a function-level import is
how a cycle hides). Relative imports are resolved. Importing ``a.b.c`` also runs the
``__init__`` of ``a`` and ``a.b``; those implicit edges are left out, as every module would
otherwise depend on ``flax_resnet/__init__.py``, whose names are imported lazily by string.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

PACKAGE = "flax_resnet"
ROOT = Path(__file__).resolve().parents[1]

Graph = Mapping[str, set[str]]


def module_name(path: Path, root: Path = ROOT) -> str:
  """``flax_resnet/training/steps.py`` -> ``flax_resnet.training.steps``; a package's
  ``__init__.py`` is the package."""
  parts = list(path.relative_to(root).with_suffix("").parts)
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(root: Path = ROOT, package: str = PACKAGE) -> dict[str, Path]:
  """Every module of ``package`` under ``root``, by dotted name."""
  return {module_name(p, root): p for p in sorted((root / package).rglob("*.py"))}


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
  """The module ``from ... import`` names, relative levels resolved against ``module``."""
  if not node.level:
    return node.module or ""
  base = module.split(".")
  base = base[: len(base) - node.level + (1 if is_package else 0)]
  return ".".join(base + ([node.module] if node.module else []))


def imported(path: Path, module: str, known: Iterable[str]) -> set[str]:
  """Every module that ``path`` (the module ``module``) imports, at any depth in the file.

  ``from pkg import name`` names the module ``pkg.name`` where that is one of ``known``,
  else ``pkg``. External modules are kept by their full dotted name.
  """
  known = set(known)
  is_package = path.name == "__init__.py"
  found = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      found |= {alias.name for alias in node.names}
    elif isinstance(node, ast.ImportFrom):
      source = _absolute(node, module, is_package)
      subs = {f"{source}.{alias.name}" for alias in node.names} & known
      found |= subs or {source}
  return found - {module}


def graph(root: Path = ROOT, package: str = PACKAGE) -> dict[str, set[str]]:
  """{module: the package's modules it imports} for every module of ``package``."""
  found = modules(root, package)
  return {
    name: {m for m in imported(path, name, found) if m in found} for name, path in found.items()
  }


def external(root: Path = ROOT, package: str = PACKAGE) -> dict[str, set[str]]:
  """{module: the top-level names of the third-party packages it imports} (no stdlib)."""
  found = modules(root, package)
  return {
    name: {m.split(".")[0] for m in imported(path, name, found)}
    - {package}
    - set(sys.stdlib_module_names)
    for name, path in found.items()
  }


def cycles(edges: Graph) -> list[list[str]]:
  """Cycles (``[a, b, ..., a]``) found by depth-first search: at least one wherever there is
  one; a module is in at most one of them."""
  found: list[list[str]] = []
  done: set[str] = set()
  for start in sorted(edges):
    if start not in done:
      cycle = _cycle_from(start, edges, done)
      if cycle:
        found.append(cycle)
        done |= set(cycle)
  return found


def _cycle_from(start: str, edges: Graph, done: set[str]) -> list[str] | None:
  """Depth-first from ``start`` (iteratively: no recursion limit); the first cycle met."""
  path, on_path, stack = [start], {start}, [iter(sorted(edges.get(start, ())))]
  while stack:
    nxt = next(stack[-1], None)
    if nxt is None:  # every path out of this module explored: no cycle through it
      node = path.pop()
      on_path.discard(node)
      done.add(node)
      stack.pop()
      continue
    if nxt in on_path:
      return path[path.index(nxt) :] + [nxt]
    if nxt not in done:
      path.append(nxt)
      on_path.add(nxt)
      stack.append(iter(sorted(edges.get(nxt, ()))))
  return None


def layer_of(module: str, layers: Iterable[tuple[str, tuple[str, ...]]]) -> int | None:
  """The index of the layer that holds ``module``: the longest name in the table equal to it
  or to a package above it (the top-level package only stands for its ``__init__``). None
  when the table does not name it."""
  best, best_len = None, -1
  for index, (_, names) in enumerate(layers):
    for name in names:
      inside = "." in name and module.startswith(name + ".")
      if (module == name or inside) and len(name) > best_len:
        best, best_len = index, len(name)
  return best


def upward(edges: Graph, layers: list[tuple[str, tuple[str, ...]]]) -> list[str]:
  """Every import from a module into a higher layer, as ``a (layer) -> b (layer)`` lines."""
  found = []
  for source in sorted(edges):
    low = layer_of(source, layers)
    for target in sorted(edges[source]):
      high = layer_of(target, layers)
      if low is not None and high is not None and high > low:
        found.append(f"{source} ({layers[low][0]}) -> {target} ({layers[high][0]})")
  return found
