"""Loss and accuracy curves of training runs as a PNG: one run, or several on one figure.

    python train/plot.py --workdir runs/cifar10 --out runs/cifar10/curves.png
    python train/plot.py --workdir runs/jax runs/torch --out both.png   # flax-resnet-bench train-torch

Any workdir with a ``metrics.jsonl`` of the trainer's format: ``flax-resnet-train``'s or
the PyTorch reference's.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

from flax_resnet.cli import ArgumentParser, report
from flax_resnet.files import atomic_path


def append_metric(file: Path, step: int, name: str, value: float) -> None:
  """One line of ``metrics.jsonl``, the format ``read_metrics`` reads."""
  with open(file, "a") as f:
    f.write(json.dumps({"step": step, "name": name, "value": value}) + "\n")


def read_metrics(workdir: Path, note=lambda line: print(line, file=sys.stderr)
                 ) -> dict[str, list[tuple[int, float]]]:
  """Series by name from ``workdir/metrics.jsonl`` (written by train/train.py).

  A last line cut short (a run killed while writing it) is skipped with a ``note``; any
  other line that is not a metric is a ``ValueError`` naming the file and line.
  """
  path = workdir / "metrics.jsonl"
  if not path.is_file():
    raise ValueError(f"{path} not found: not a train/train.py workdir, or nothing logged yet")
  series = defaultdict(dict)
  text = path.read_text(errors="replace")
  lines = text.splitlines()
  for number, line in enumerate(lines, 1):
    try:
      row = json.loads(line)
      series[row["name"]][row["step"]] = float(row["value"])  # a resume rewrites its last steps
    except (ValueError, TypeError, KeyError) as e:
      if number == len(lines) and not text.endswith("\n"):
        note(f"note: {path} line {number} is cut short (a run stopped while writing it): "
             "skipped")
        continue
      raise ValueError(f"{path} line {number} is not a metric ({type(e).__name__}: {e})") from e
  return {name: sorted(points.items()) for name, points in series.items()}


def repair_last_line(file: Path) -> bool:
  """Truncates a last line of ``file`` that was cut short (no newline: a run killed while
  writing it), so that the next line appended does not run into it; whether it did."""
  try:
    with open(file, "rb+") as f:
      data = f.read()  # a line per logged scalar: small
      if not data or data.endswith(b"\n"):
        return False
      f.truncate(data.rfind(b"\n") + 1)
      return True
  except FileNotFoundError:
    return False


def plot(runs: dict[str, dict], out: Path) -> None:
  """The series of each run (by label) on two panels: losses, and eval accuracies.

  Every point is marked, so that a run of a few logged steps still shows; a run that
  has not been evaluated yet says so in the accuracy panel instead of an empty plot.
  """
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4))
  for label, series in runs.items():
    for name, ax in [("train/loss", loss_ax), ("eval/loss", loss_ax), ("eval/top1", acc_ax),
                     ("eval/top5", acc_ax)]:
      if series.get(name):
        steps, values = zip(*series[name])
        ax.plot(steps, values, label=f"{label}{name}", marker=".")
  loss_ax.set(xlabel="step", ylabel="loss", title="loss")
  acc_ax.set(xlabel="step", ylabel="accuracy", title="eval accuracy", ylim=(0, 1))
  if not acc_ax.lines:
    acc_ax.text(0.5, 0.5, "no evaluation yet\n(the first comes at the end of an epoch)",
                ha="center", va="center", transform=acc_ax.transAxes)
  for ax in (loss_ax, acc_ax):
    ax.grid(alpha=0.3)
    if ax.lines:
      ax.legend()
  save_figure(fig, out)


def save_figure(fig, out: Path) -> None:
  """Writes ``fig`` as a PNG through a temporary file renamed to ``out``."""
  fig.tight_layout()
  with atomic_path(out) as tmp:
    fig.savefig(tmp, dpi=110, format="png")


def main(argv=None) -> int:
  p = ArgumentParser(description=__doc__)
  p.add_argument("--workdir", type=Path, nargs="+", required=True,
                 help="one run, or several to draw on one figure")
  p.add_argument("--out", type=Path, help="default: the first WORKDIR/curves.png")
  args = p.parse_args(argv)
  names = [w.name for w in args.workdir]
  if len(set(names)) < len(names):  # runs/a/w and runs/b/w
    names = [str(w) for w in args.workdir]
  labels = [f"{n}: " for n in names] if len(names) > 1 else [""]
  try:
    runs = {label: read_metrics(w) for label, w in zip(labels, args.workdir)}
    out = args.out or args.workdir[0] / "curves.png"
    plot(runs, out)
  except (ValueError, OSError) as e:
    return report(e)
  print(out)  # what was written, for the user and for scripts
  return 0


if __name__ == "__main__":
  sys.exit(main())
