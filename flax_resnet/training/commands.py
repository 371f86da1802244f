"""The training command's entry point, which parses its arguments before importing JAX.

Importing JAX, Flax and orbax takes 2-3 s of a core: ``--help`` and usage errors answer
without them. ``flax-resnet-train`` (and ``train/train.py``) is ``train`` here; the run
itself is ``trainer.run_command``.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import sys
from pathlib import Path

from flax_resnet.cli import ArgumentParser


def module_doc(module: str) -> str:
  """A module's docstring, read from its source without importing the module."""
  source = Path(importlib.util.find_spec(module).origin).read_text()
  return ast.get_docstring(ast.parse(source)) or ""


def train_parser() -> ArgumentParser:
  """The arguments of ``flax-resnet-train``; its help is the trainer's docstring."""
  p = ArgumentParser(description=module_doc("flax_resnet.training.trainer"))
  p.add_argument("--config", required=True, help="a preset file such as train/configs/*.py")
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                 help="override a config field (repeatable)")
  p.add_argument("--workdir", type=Path, required=True)
  p.add_argument("--coordinator", help="host:port of process 0, for multi-process runs")
  p.add_argument("--num-processes", type=int)
  p.add_argument("--process-id", type=int)
  return p


def parse_train_args(argv=None) -> argparse.Namespace:
  """``flax-resnet-train``'s arguments; usage errors exit 2 in one line."""
  return train_parser().parse_args(argv)


def train(argv=None) -> int:
  """``flax-resnet-train``: parse, then import the trainer and run (exit codes: README)."""
  args = parse_train_args(argv)
  from flax_resnet.training import trainer
  return trainer.run_command(args)


if __name__ == "__main__":
  sys.exit(train())
