"""A run's progress: the lines it prints, TensorBoard scalars and ``metrics.jsonl``.

``metrics.jsonl`` holds one JSON object a line, ``{"step": N, "name": "train/loss",
"value": 2.3}``: ``flax-resnet-train`` and the PyTorch reference trainer write it,
``flax-resnet-plot`` reads it. JAX and tensorboardX are imported only once a run logs.
"""

from __future__ import annotations

import json
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"
LOG_SECONDS = 30  # a progress line at least this often, whatever log_every says


def append_metric(file: Path, step: int, name: str, value: float) -> None:
  """One line of ``metrics.jsonl``, the format ``read_metrics`` reads."""
  with open(file, "a") as f:
    f.write(json.dumps({"step": step, "name": name, "value": value}) + "\n")


def read_metrics(
  workdir: Path, note: Callable[[str], None] = lambda line: print(line, file=sys.stderr)
) -> dict[str, list[tuple[int, float]]]:
  """Series by name from ``workdir/metrics.jsonl`` (written by train/train.py).

  A last line cut short (a run killed while writing it) is skipped with a ``note``; any
  other line that is not a metric is a ``ValueError`` naming the file and line.
  """
  path = workdir / METRICS_FILE
  if not path.is_file():
    raise ValueError(f"{path} not found: not a train/train.py workdir, or nothing logged yet")
  series: dict[str, dict[int, float]] = defaultdict(dict)
  text = path.read_text(errors="replace")
  lines = text.splitlines()
  for number, line in enumerate(lines, 1):
    try:
      row = json.loads(line)
      series[row["name"]][row["step"]] = float(row["value"])  # a resume rewrites its last steps
    except (ValueError, TypeError, KeyError) as e:
      if number == len(lines) and not text.endswith("\n"):
        note(f"note: {path} line {number} is cut short (a run stopped while writing it): skipped")
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


class Progress:
  """Lines with loss, images/s and ETA every ``log_every`` steps and at least every
  ``LOG_SECONDS``; TensorBoard scalars and metrics.jsonl at the ``log_every`` steps only,
  so that they do not depend on the machine's speed.

  ``workdir`` None prints only: the processes of a multi-host run but the first.
  """

  def __init__(self, workdir: Path | None, global_batch: int, log_every: int, total_steps: int):
    self.global_batch, self.log_every, self.total_steps = global_batch, log_every, total_steps
    self.start = self.last = time.perf_counter()
    self.images = 0
    self.writer: Future | None = None
    self.logdir = workdir / "tensorboard" if workdir else None
    self.metrics_file = workdir / METRICS_FILE if workdir else None
    self.pending: list[tuple[str, float, int]] = []  # scalars waiting for the writer
    if self.metrics_file and repair_last_line(self.metrics_file):
      print(
        f"note: removed the last line of {self.metrics_file}, cut short when the run "
        "before stopped",
        flush=True,
      )

  def step(self, step: int, metrics: dict[str, Any], skipped: int) -> None:
    """Counts the images of train step ``step`` (1 for the first); a line when it is due."""
    if self.logdir and not self.writer:
      import jax

      # Importing tensorboardX takes 2 s of a core: not while the first step runs.
      jax.block_until_ready(metrics)
      self.writer = ThreadPoolExecutor(1).submit(_summary_writer, self.logdir)
    self.images += self.global_batch
    scheduled = step % self.log_every == 0 or step == self.total_steps
    if not scheduled and time.perf_counter() - self.last < LOG_SECONDS:
      return
    loss = float(metrics["loss"])
    self.last = time.perf_counter()
    rate = self.images / (self.last - self.start)
    eta = (self.total_steps - step) * self.global_batch / max(rate, 1e-9)
    print(
      f"step {step}/{self.total_steps} loss {loss:.4f} {rate:.1f} img/s "
      f"ETA {duration(eta)} skipped {skipped}",
      flush=True,
    )
    if scheduled:
      self.scalar(step, "train/loss", loss)
      self.scalar(step, "train/images_per_s", rate)

  def scalar(self, step: int, name: str, value: float) -> None:
    """TensorBoard (once its writer is ready), and metrics.jsonl for flax-resnet-plot."""
    if self.logdir and self.metrics_file:
      self.pending.append((name, value, step))
      append_metric(self.metrics_file, step, name, value)
      if self.writer and self.writer.done():
        self._flush()

  def _flush(self) -> None:
    assert self.writer is not None
    writer = self.writer.result()
    for name, value, step in self.pending:
      writer.add_scalar(name, value, step)
    self.pending.clear()

  def close(self) -> None:
    """Writes the scalars still pending and closes TensorBoard's file."""
    if self.writer:
      self._flush()
      self.writer.result().close()

  def images_per_s(self) -> float:
    """Images a second since the run (or its resume) started."""
    return self.images / max(time.perf_counter() - self.start, 1e-9)


def duration(seconds: float) -> str:
  """``seconds`` in minutes, hours or days, one decimal."""
  if seconds < 3600:
    return f"{seconds / 60:.1f} min"
  return f"{seconds / 3600:.1f} h" if seconds < 48 * 3600 else f"{seconds / 86400:.1f} days"


def _summary_writer(logdir: Path):
  """TensorBoard's writer. tensorboardX imports torch when it can, to take its tensors: 1.5 s
  and 480 MB in every training process for a writer of floats. Its import sees no torch,
  unless torch is loaded already."""
  hidden = "torch" not in sys.modules
  if hidden:
    sys.modules["torch"] = None  # type: ignore[assignment]  # import torch: ImportError
  try:
    from tensorboardX import SummaryWriter
  finally:
    if hidden and sys.modules.get("torch", False) is None:
      del sys.modules["torch"]
  return SummaryWriter(str(logdir))
