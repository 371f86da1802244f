"""The layout the documentation describes (docs/development.md): its Layout table against the
real imports, commands installed, torch kept to the conversion code, no path hacks."""

import ast
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from import_graph import PACKAGE, external, graph, modules

ROOT = Path(__file__).resolve().parents[1]
# The modules that may import torch (inside their functions only): the conversion code.
TORCH_FACING = ("flax_resnet.port",)
# The torchvision twin is torch modules: imported only where a twin is needed.
TORCH_MODULES = ("flax_resnet.port.twin",)
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def layout_rows(readme: str) -> list[tuple[list[str], set[str]]]:
  """(paths, names in the imports column) for each row of the Layout table (docs/development.md)
  about the package. Paths in the first column are in backticks; one not under ``flax_resnet/``
  (``files.py``) is in the folder of the row's first path. In the imports column only module
  names are in backticks: the table's own rows (``model``, ``training``) and third-party
  packages (``jax``); the rest of the text is for people."""
  found = re.search(r"^## Layout\n(.*?)(?=^## |\Z)", readme, re.M | re.S)
  section = found[1] if found else ""
  rows = []
  for line in section.splitlines():
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    paths = re.findall(r"`([^`]+)`", cells[0]) if line.startswith("|") else []
    if paths and paths[0].startswith(f"{PACKAGE}/"):
      folder = paths[0].rstrip("/").rsplit("/", 1)[0]
      paths = [p if p.startswith(f"{PACKAGE}/") else f"{folder}/{p}" for p in paths]
      rows.append((paths, set(re.findall(r"`([^`]+)`", cells[-1]))))
  return rows


def unit_name(path: str) -> str:
  """A row's name for the imports column: ``flax_resnet/training/`` -> ``training``,
  ``flax_resnet/model.py`` -> ``model``, ``flax_resnet/__init__.py`` -> ``flax_resnet``."""
  name = path.removeprefix(f"{PACKAGE}/").removesuffix("/").removesuffix(".py")
  return PACKAGE if name == "__init__" else name.replace("/", ".")


def unit_of(module: str, units: list[str]) -> str | None:
  """The table path that holds ``module``: the file itself or the deepest folder above it."""
  path = module.replace(".", "/")
  found = [
    u
    for u in units
    if u in (f"{path}.py", f"{path}/__init__.py") or u.endswith("/") and f"{path}/".startswith(u)
  ]
  return max(found, key=len, default=None)


def expected_imports(paths: list[str], units: list[str]) -> tuple[set[str], set[str]]:
  """What the imports column of the row for ``paths`` must name: (the table's rows, the
  third-party packages)."""
  inside = [m for m in modules() if unit_of(m, units) in paths]
  own = {unit_of(target, units) for m in inside for target in EDGES[m]} - set(paths) - {None}
  return {unit_name(u) for u in own}, {name for m in inside for name in EXTERNAL[m]}


def cell(own: set[str], third_party: set[str]) -> str:
  """The imports column's text: the package's modules, then the third-party packages."""
  return (
    "; ".join(
      ", ".join(f"`{n}`" for n in sorted(names, key=str.lower))
      for names in (own, third_party)
      if names
    )
    or "standard library"
  )


EDGES, EXTERNAL = graph(), external()


LAYOUT_PAGE = ROOT / "docs" / "development.md"
LAYOUT_ROWS = layout_rows(LAYOUT_PAGE.read_text())
UNITS = [p for paths, _ in LAYOUT_ROWS for p in paths]


def test_the_layout_table_names_every_module_of_the_package():
  assert LAYOUT_ROWS, "docs/development.md: no Layout table found"
  missing = [m for m in modules() if unit_of(m, UNITS) is None]
  assert missing == [], f"docs/development.md's Layout table does not list {missing}"


@pytest.mark.parametrize("paths, listed", LAYOUT_ROWS, ids=[", ".join(p) for p, _ in LAYOUT_ROWS])
def test_the_layout_table_lists_what_each_row_imports(paths, listed):
  own, third_party = expected_imports(paths, UNITS)
  assert listed == own | third_party, (
    f"docs/development.md Layout, {paths[0]}: imports should read {cell(own, third_party)}"
  )


def test_the_layout_table_is_read_from_backticked_paths_and_names():
  readme = (
    "## Layout\n\n| path | what | imports |\n| --- | --- | --- |\n"
    "| `flax_resnet/files.py`, `cpu.py` | x `y` | `jax`, standard library |\n"
    "| `flax_resnet/training/` | z | `files` and `cpu` |\n"
    "| `tests/` | t | `flax_resnet` |\n"
    "\n## Next\n| `flax_resnet/nope.py` | | |\n"
  )
  assert layout_rows(readme) == [
    (["flax_resnet/files.py", "flax_resnet/cpu.py"], {"jax"}),
    (["flax_resnet/training/"], {"files", "cpu"}),
  ]
  units = ["flax_resnet/__init__.py", "flax_resnet/training/", "flax_resnet/model.py"]
  assert unit_of("flax_resnet.training.steps", units) == "flax_resnet/training/"
  assert unit_of("flax_resnet", units) == "flax_resnet/__init__.py"
  assert unit_of("flax_resnet.folding", units) is None
  assert [unit_name(u) for u in units] == ["flax_resnet", "training", "model"]


def imports(path: Path) -> list[tuple[str, bool]]:
  """(module, at module level) for every import in the file, also those inside functions."""
  tree = ast.parse(path.read_text())
  top = set(map(id, tree.body))
  found = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found += [(alias.name, id(node) in top) for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      found.append((node.module, id(node) in top))
  return found


LIBRARY = {
  name: path
  for name, path in modules().items()
  if not name.startswith(("flax_resnet.training", "flax_resnet.bench", "flax_resnet.commands"))
}


@pytest.mark.parametrize("name", sorted(LIBRARY))
def test_only_the_conversion_code_imports_torch_and_only_inside_functions(name):
  for module, top_level in imports(LIBRARY[name]):
    if module.split(".")[0] in ("torch", "torchvision", "safetensors"):
      assert name.startswith(TORCH_FACING), f"{name} imports {module}"
      assert not top_level or name in TORCH_MODULES, f"{name} imports {module} at module level"


def longest_functions(path: Path) -> list[tuple[int, str]]:
  """(lines, name) of every function in the file, decorators included, longest first."""
  found = [
    (node.end_lineno - min([node.lineno, *(d.lineno for d in node.decorator_list)]) + 1, node.name)
    for node in ast.walk(ast.parse(path.read_text()))
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
  ]
  return sorted(found, reverse=True)


def test_the_trainer_only_wires_the_parts_of_a_run_in_short_functions():
  # issue 35: each part of a run in a module of its own (models, optimiser, batch, steps,
  # workdir), trainer.py the wiring and the loop, no function in training/ over 50 lines
  training = ROOT / PACKAGE / "training"
  assert len((training / "trainer.py").read_text().splitlines()) <= 350
  long = [
    f"{path.relative_to(ROOT)}: {name} ({lines} lines)"
    for path in sorted(training.rglob("*.py"))
    for lines, name in longest_functions(path)
    if lines > 50
  ]
  assert long == []


def test_a_functions_length_counts_its_decorators_and_docstring(tmp_path):
  (tmp_path / "m.py").write_text(
    "@property\ndef f():\n  \"\"\"Doc.\"\"\"\n  return 1\n\n\nclass C:\n  def g(self):\n    pass\n"
  )
  assert longest_functions(tmp_path / "m.py") == [(4, "f"), (2, "g")]


def test_no_file_edits_sys_path():
  # Not the hidden folders: .git, and virtual environments (.venv, nox's .nox, .venv313 ...).
  files = [
    p
    for p in ROOT.rglob("*.py")
    if not any(part.startswith(".") or part == "build" for part in p.relative_to(ROOT).parts)
  ]
  assert files
  offenders = [
    str(p.relative_to(ROOT))
    for p in files
    if "sys.path" in p.read_text() and p.name != "test_layout.py"
  ]
  assert offenders == []


def test_the_package_version_is_pyprojects():
  from flax_resnet import __version__

  assert __version__ == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def test_every_command_is_installed_and_resolves():
  found = {
    e.name: e
    for e in metadata.entry_points(group="console_scripts")
    if e.name.startswith("flax-resnet")
  }
  assert set(found) == set(SCRIPTS), "pyproject.toml's [project.scripts] changed: reinstall"
  for entry in found.values():
    assert entry.value == SCRIPTS[entry.name], "pyproject.toml's [project.scripts]: reinstall"
    assert callable(entry.load()), entry.name


@pytest.mark.parametrize(
  "script",
  sorted(
    str(p.relative_to(ROOT)) for d in ("convert", "train", "bench") for p in (ROOT / d).glob("*.py")
  ),
)
def test_each_script_is_a_shim_over_a_package_main(script):
  tree = ast.parse((ROOT / script).read_text())
  sources = [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
  assert len(sources) == 1 and sources[0].startswith("flax_resnet."), script
  assert len(tree.body) <= 4, f"{script} holds more than a shim"


def test_a_command_runs_from_any_directory(tmp_path):
  done = subprocess.run(
    [
      str(Path(sys.executable).parent / "flax-resnet-bench"),
      "pipeline",
      "--data",
      "cifar10",
      "--data-root",
      str(tmp_path),
    ],
    cwd=tmp_path,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert done.returncode == 2 and "cifar10-jpeg.tar.gz not found" in done.stderr, done.stderr


def test_every_slow_entry_names_a_module_or_test_that_exists():
  # a renamed test left in SLOW would silently move into the fast subset
  from conftest import SLOW

  for entry in sorted(SLOW):
    module, _, test = entry.partition("::")
    source = (ROOT / "tests" / module).read_text()
    assert not test or f"def {test}(" in source, f"SLOW names {entry}, which does not exist"
