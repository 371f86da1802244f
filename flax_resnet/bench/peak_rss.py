"""Peak resident memory of a command and of all its child processes together (Linux).

    flax-resnet-bench peak-rss --out rss.jsonl -- flax-resnet-train --config ... --workdir W

Samples /proc every ``--every`` seconds: the peak of the summed RSS of the process tree
(the trainer and its decoding workers), and the peak of the top process alone. One JSON
line (the watched command in ``watched``), printed and appended to ``--out``; the exit code
is the command's.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from flax_resnet.bench.results import emit
from flax_resnet.cli import ArgumentParser


def rss_mb(pid: int) -> float:
  """Resident memory of one process in MB, 0 if it is gone."""
  try:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
      if line.startswith("VmRSS:"):
        return int(line.split()[1]) / 1024
  except (FileNotFoundError, ProcessLookupError):
    pass
  return 0.0


def descendants(pid: int) -> list[int]:
  """``pid`` and every process below it."""
  found, todo = [], [pid]
  while todo:
    p = todo.pop()
    found.append(p)
    for task in Path(f"/proc/{p}/task").glob("*"):  # children of every thread
      try:
        todo += [int(c) for c in (task / "children").read_text().split()]
      except (FileNotFoundError, ProcessLookupError):
        pass
  return found


def watch(command: list[str], every: float) -> dict:
  """Runs ``command`` to its end; its exit code, wall time and peak memory."""
  start = time.perf_counter()
  proc = subprocess.Popen(command)
  tree = top = 0.0
  while proc.poll() is None:
    top = max(top, rss_mb(proc.pid))
    tree = max(tree, sum(rss_mb(p) for p in descendants(proc.pid)))
    time.sleep(every)
  return {
    "returncode": proc.returncode,
    "wall_s": round(time.perf_counter() - start, 1),
    "peak_rss_tree_mb": round(tree),
    "peak_rss_main_mb": round(top),
  }


def main(argv=None) -> int:
  p = ArgumentParser(description=__doc__)
  p.add_argument("--every", type=float, default=0.1, help="seconds between samples")
  p.add_argument("--out", type=Path, help="append the JSON line here")
  p.add_argument("command", nargs="+", help="the command, after --")
  args = p.parse_args(argv)
  result = {
    "bench": "peak_rss",
    **watch(args.command, args.every),
    "watched": " ".join(args.command),
  }
  emit([result], args.out)
  return result["returncode"]


if __name__ == "__main__":
  sys.exit(main())
