"""Export a training checkpoint as a flax-resnet model checkpoint.

    flax-resnet-train-export --workdir runs/c10 --out models/c10 [--step best|latest|N] [--ema]

The result is what ``flax-resnet-convert`` writes: ``flax_resnet.load`` rebuilds
it without the training code, ``flax-resnet-predict`` classifies images
with the run's eval preprocessing and class names, and ``flax-resnet-flax2torch``
turns it into a torchvision state dict.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# Only the light modules here: --help and usage errors answer before JAX loads.
from flax_resnet.cli import ArgumentParser, CliError, check_replaceable, report, with_flags


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  """``flax-resnet-train-export``'s arguments; usage errors exit 2 in one line."""
  p = ArgumentParser(description=__doc__)
  p.add_argument("--workdir", type=Path, required=True, help="a flax-resnet-train --workdir")
  p.add_argument("--out", type=Path, required=True, help="the model checkpoint directory to write")
  p.add_argument(
    "--step",
    default=None,
    help="'best' (by eval top-1; an error if none was evaluated), 'latest' or N; "
    "default: best, or the latest when no checkpoint was evaluated",
  )
  p.add_argument("--ema", action="store_true", help="the EMA weights (run with ema_decay > 0)")
  p.add_argument(
    "--force",
    action="store_true",
    help="replace an existing --out that is a flax-resnet checkpoint (or empty)",
  )
  return p.parse_args(argv)


def check_out(out: Path, force: bool) -> None:
  """A ``CliError`` when ``--out`` may not be written, before the restore: a user's data is
  never replaced."""
  if out.exists() and not force:
    raise CliError(f"--out {out} exists; pass --force to replace it")
  check_replaceable(out)


def main(argv: list[str] | None = None) -> int:
  """``flax-resnet-train-export``: prints the result's path and source as JSON; exit 2 on
  bad input."""
  args = parse_args(argv)
  try:
    check_out(args.out, args.force)
    from flax_resnet.saved_model import read_metadata
    from flax_resnet.training.export import export

    path = export(args.workdir, args.out, args.step, args.ema, args.force)
  except (ValueError, OSError, CliError) as e:
    return report(with_flags(e, {"which": "--step"}))  # the library names its parameters
  print(json.dumps({"out": str(path), **(read_metadata(path).source or {})}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
