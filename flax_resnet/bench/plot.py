"""Throughput against batch size, from flax-resnet-bench throughput's JSON lines, as a PNG.

    flax-resnet-bench plot --results bench/results/cpu.json --out bench/results/cpu.png

One panel per (architecture, mode, dtype); one line per framework and device. A
configuration measured twice is drawn with its latest line.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

from flax_resnet.cli import ArgumentParser, report
from flax_resnet.training.plot import save_figure


def read_series(path: Path) -> dict[tuple, dict[str, list[tuple[int, float]]]]:
  """{(arch, mode, dtype): {"framework (device)": [(batch, images/s), ...]}}, batches sorted."""
  if not path.is_file():
    raise ValueError(f"--results {path}: no such file")
  panels: defaultdict[tuple, defaultdict[str, dict[int, float]]] = defaultdict(
    lambda: defaultdict(dict)
  )
  for number, line in enumerate(path.read_text().splitlines(), 1):
    try:
      row = json.loads(line)
      line = f"{row['framework']} ({row['device']})"
      panels[row["arch"], row["mode"], row["dtype"]][line][row["batch"]] = row["images_per_s"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
      raise ValueError(f"{path}:{number}: not a flax-resnet-bench throughput line ({e})") from None
  if not panels:
    raise ValueError(f"{path} holds no results")
  return {
    key: {fw: sorted(points.items()) for fw, points in lines.items()}
    for key, lines in sorted(panels.items())
  }


def plot(panels: dict, out: Path) -> None:
  """Draws ``read_series``' panels into the PNG ``out``, written atomically."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  cols = min(len(panels), 2)
  rows = -(-len(panels) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 4 * rows), squeeze=False)
  for ax in axes.flat[len(panels) :]:
    ax.remove()
  for ax, ((arch, mode, dtype), lines) in zip(axes.flat, panels.items()):
    for framework, points in lines.items():
      batches, rates = zip(*points)
      ax.plot(batches, rates, marker="o", label=framework)
    ax.set_xscale("log", base=2)
    ax.set(xlabel="batch", ylabel="images/s", title=f"{arch} {mode} {dtype}", ylim=(0, None))
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
  save_figure(fig, out)


def main(argv=None) -> int:
  p = ArgumentParser(description=__doc__)
  p.add_argument(
    "--results", type=Path, required=True, help="JSON lines of flax-resnet-bench throughput"
  )
  p.add_argument("--out", type=Path, required=True, help="the PNG to write")
  args = p.parse_args(argv)
  try:
    plot(read_series(args.results), args.out)
  except (ValueError, OSError) as e:
    return report(e)
  return 0


if __name__ == "__main__":
  sys.exit(main())
