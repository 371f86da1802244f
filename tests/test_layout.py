"""The layout README describes: what may import what, commands installed, no path hacks."""

import ast
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = sorted([*(ROOT / "flax_resnet").glob("*.py"),
                  *(ROOT / "flax_resnet" / "port").glob("*.py")])
TORCH_FACING = {"torch_files.py", "parity.py", "twin.py"}
TORCH_MODULES = {"twin.py"}  # the torchvision twin is torch modules: imported only where needed
COMMANDS = {"flax-resnet-convert", "flax-resnet-flax2torch", "flax-resnet-export",
            "flax-resnet-predict", "flax-resnet-train", "flax-resnet-train-export",
            "flax-resnet-plot",
            "flax-resnet-bench", "flax-resnet-shards"}


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


@pytest.mark.parametrize("path", LIBRARY, ids=[p.name for p in LIBRARY])
def test_the_library_never_imports_the_trainer_benchmarks_or_commands(path):
  for module, _ in imports(path):
    assert not module.startswith(("flax_resnet.training", "flax_resnet.bench",
                                  "flax_resnet.commands")), f"{path.name} imports {module}"


@pytest.mark.parametrize("path", LIBRARY, ids=[p.name for p in LIBRARY])
def test_only_the_torch_facing_modules_import_torch_and_only_inside_functions(path):
  for module, top_level in imports(path):
    if module.split(".")[0] in ("torch", "torchvision", "safetensors"):
      assert path.name in TORCH_FACING, f"{path.name} imports {module}"
      assert not top_level or path.name in TORCH_MODULES, (
          f"{path.name} imports {module} at module level")


def test_no_file_edits_sys_path():
  files = [p for p in ROOT.rglob("*.py") if not {".venv", ".git", "build"} & set(p.parts)]
  assert files
  offenders = [str(p.relative_to(ROOT)) for p in files if "sys.path" in p.read_text()
               and p.name != "test_layout.py"]
  assert offenders == []


def test_every_command_is_installed_and_resolves():
  found = {e.name: e for e in metadata.entry_points(group="console_scripts")
           if e.name.startswith("flax-resnet")}
  assert set(found) == COMMANDS
  for entry in found.values():
    assert callable(entry.load()), entry.name


@pytest.mark.parametrize("script", sorted(str(p.relative_to(ROOT)) for d in ("convert", "train",
                                                                              "bench")
                                          for p in (ROOT / d).glob("*.py")))
def test_each_script_is_a_shim_over_a_package_main(script):
  tree = ast.parse((ROOT / script).read_text())
  modules = [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
  assert len(modules) == 1 and modules[0].startswith("flax_resnet."), script
  assert len(tree.body) <= 4, f"{script} holds more than a shim"


def test_a_command_runs_from_any_directory(tmp_path):
  done = subprocess.run([str(Path(sys.executable).parent / "flax-resnet-bench"), "pipeline",
                         "--data", "cifar10", "--data-root", str(tmp_path)], cwd=tmp_path,
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 2 and "cifar10-jpeg.tar.gz not found" in done.stderr, done.stderr
