"""Loss and accuracy curves of training runs as a PNG: one run, or several on one figure.

The series come from ``metrics.read_metrics``; ``flax-resnet-plot`` is
``flax_resnet.commands.plot``. matplotlib is imported only when a figure is drawn.
"""

from __future__ import annotations

from pathlib import Path

from flax_resnet.files import atomic_path


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
    for name, ax in [
      ("train/loss", loss_ax),
      ("eval/loss", loss_ax),
      ("eval/top1", acc_ax),
      ("eval/top5", acc_ax),
    ]:
      if series.get(name):
        steps, values = zip(*series[name])
        ax.plot(steps, values, label=f"{label}{name}", marker=".")
  loss_ax.set(xlabel="step", ylabel="loss", title="loss")
  acc_ax.set(xlabel="step", ylabel="accuracy", title="eval accuracy", ylim=(0, 1))
  if not acc_ax.lines:
    acc_ax.text(
      0.5,
      0.5,
      "no evaluation yet\n(the first comes at the end of an epoch)",
      ha="center",
      va="center",
      transform=acc_ax.transAxes,
    )
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
