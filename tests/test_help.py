"""What an installed command's --help says: every file it names is one the wheel ships (the
package, ``flax_resnet/``), not a script of the checkout (``train/train.py``) that a user
who ran ``pip install flax-resnet`` does not have."""

import contextlib
import importlib
import io
import re
import tomllib
from pathlib import Path

import pytest

from flax_resnet.commands.bench import BENCHMARKS

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
SHIPPED = "flax_resnet/"  # [tool.setuptools.packages.find]: the wheel holds the package only
# A file's path as a reader takes it, from the checkout's root: train/shards.py, a/b.md.
PATH = re.compile(r"(?<![\w./-])((?:[\w.-]+/)+[\w-]+\.(?:py|sh|md|toml))\b")
TORCH = "train-torch"  # imports torch to answer (seconds): a test of its own, in conftest's SLOW
HELPS = [(name, ()) for name in sorted(SCRIPTS)] + [
  ("flax-resnet-bench", (benchmark,)) for benchmark in BENCHMARKS if benchmark != TORCH
]


def help_text(script: str, args: tuple[str, ...]) -> str:
  """What ``script ARGS --help`` prints, from its entry point's function in this process."""
  module, _, function = SCRIPTS[script].partition(":")
  out = io.StringIO()
  with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as done:
    exit_code = getattr(importlib.import_module(module), function)([*args, "--help"])
    raise SystemExit(exit_code)  # flax-resnet-bench's listing returns its code
  assert done.value.code in (0, None), f"{script} {' '.join(args)} --help: {done.value.code}"
  return out.getvalue()


def test_a_path_is_read_as_from_the_checkout_and_only_the_package_s_are_shipped():
  said = "python train/shards.py ... (flax_resnet/training/data.py, README.md) a/b/c.py x.py"
  assert PATH.findall(said) == ["train/shards.py", "flax_resnet/training/data.py", "a/b/c.py"]


def unshipped_files(script: str, args: tuple[str, ...]) -> list[str]:
  """The files ``script ARGS --help`` names that are not in the wheel."""
  text = help_text(script, args)
  assert "usage:" in text
  return [p for p in PATH.findall(text) if not (p.startswith(SHIPPED) and (ROOT / p).is_file())]


@pytest.mark.parametrize("script, args", HELPS, ids=[" ".join([s, *a]) for s, a in HELPS])
def test_an_installed_command_s_help_names_only_files_the_wheel_ships(script, args):
  assert unshipped_files(script, args) == []


def test_the_pytorch_reference_trainer_s_help_names_only_files_the_wheel_ships():
  assert unshipped_files("flax-resnet-bench", (TORCH,)) == []
