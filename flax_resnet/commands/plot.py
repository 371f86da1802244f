"""Loss and accuracy curves of training runs as a PNG: one run, or several on one figure.

    flax-resnet-plot --workdir runs/cifar10 --out runs/cifar10/curves.png
    flax-resnet-plot --workdir runs/jax runs/torch --out both.png  # with train-torch

Any workdir with a ``metrics.jsonl`` of the trainer's format: ``flax-resnet-train``'s or
the PyTorch reference's.
"""

from __future__ import annotations

import sys
from pathlib import Path

from flax_resnet.cli import ArgumentParser, report
from flax_resnet.training.metrics import read_metrics
from flax_resnet.training.plot import plot


def labels(workdirs: list[Path]) -> list[str]:
  """A legend prefix per run: its folder's name, or its path where two names are the same;
  none for a single run."""
  names = [w.name for w in workdirs]
  if len(set(names)) < len(names):  # runs/a/w and runs/b/w
    names = [str(w) for w in workdirs]
  return [f"{n}: " for n in names] if len(names) > 1 else [""]


def main(argv: list[str] | None = None) -> int:
  """``flax-resnet-plot``: writes the PNG and prints its path; exit 2 on bad input."""
  p = ArgumentParser(description=__doc__)
  p.add_argument(
    "--workdir",
    type=Path,
    nargs="+",
    required=True,
    help="one run, or several to draw on one figure",
  )
  p.add_argument("--out", type=Path, help="default: the first WORKDIR/curves.png")
  args = p.parse_args(argv)
  try:
    runs = {label: read_metrics(w) for label, w in zip(labels(args.workdir), args.workdir)}
    out = args.out or args.workdir[0] / "curves.png"
    plot(runs, out)
  except (ValueError, OSError) as e:
    return report(e)
  print(out)  # what was written, for the user and for scripts
  return 0


if __name__ == "__main__":
  sys.exit(main())
