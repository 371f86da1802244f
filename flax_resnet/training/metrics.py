"""A run's progress: the lines it prints, TensorBoard scalars and ``metrics.jsonl``.

``metrics.jsonl`` holds one JSON object a line, ``{"step": N, "name": "train/loss",
"value": 2.3}``: ``flax-resnet-train`` and the PyTorch reference trainer write it,
``flax-resnet-plot`` reads it. Both also write ``summary.json`` (``summary``), by one rule of
what the best eval is (``score``). JAX and tensorboardX are imported only once a run logs.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from flax_resnet.files import write_atomic

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
LOG_SECONDS = 30  # a progress line at least this often, whatever log_every says


def append_metric(file: Path, step: int, name: str, value: float) -> None:
  """One line of ``metrics.jsonl``, the format ``read_metrics`` reads."""
  with open(file, "a") as f:
    f.write(json.dumps({"step": step, "name": name, "value": value}) + "\n")


def score(metrics: dict[str, float]) -> float:
  """What "best" means: eval top-1 of the EMA weights when kept (as timm), else of the model.
  The trainer ranks its checkpoints by it; both trainers' ``best_top1`` is its highest."""
  return metrics.get("ema_top1", metrics["top1"])


def best_top1(best: float | None, metrics: dict[str, float]) -> float:
  """The best score (``score``) so far once an eval gave ``metrics`` (``best``: None before)."""
  return max(best or 0.0, score(metrics))


def summary(cfg: Any, steps: tuple[int, int], last_eval: dict, best: float | None, **rest) -> dict:
  """A run's ``summary.json``, as both trainers write it: ``steps`` = (step reached, total
  steps), its last eval's metrics, ``best_top1`` (``best_top1``) and what it ranks
  (``best_of``), ``rest`` (wall time, images per second and each trainer's own), and the
  config (``cfg``, a ``training.config.Config``)."""
  return {
    "step": steps[0],
    "total_steps": steps[1],
    "last_eval": last_eval,
    "best_top1": best,
    "best_of": "ema_top1" if cfg.ema_decay else "top1",
    **rest,
    "config": cfg.to_json(),
  }


def write_summary(workdir: Path, summary: dict) -> None:
  """``workdir/summary.json`` (``summary``), written whole or not at all."""
  write_atomic(workdir / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")


def read_metrics(
  workdir: Path, note: Callable[[str], None] = lambda line: print(line, file=sys.stderr)
) -> dict[str, list[tuple[int, float]]]:
  """Series by name from ``workdir/metrics.jsonl`` (written by flax-resnet-train).

  A last line cut short (a run killed while writing it) is skipped with a ``note``; any
  other line that is not a metric is a ``ValueError`` naming the file and line.
  """
  path = workdir / METRICS_FILE
  if not path.is_file():
    raise ValueError(f"{path} not found: not a flax-resnet-train workdir, or nothing logged yet")
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
  """Lines with the mean loss and train top-1 since the line before, the learning rate,
  images/s and ETA every ``log_every`` steps and at least every ``LOG_SECONDS``; TensorBoard
  scalars and metrics.jsonl at the ``log_every`` steps only, their means over the steps
  since the scalars before, so that they do not depend on the machine's speed.

  The sums stay on the device, added to after each step without waiting for it, and are
  read only when a line is due. Train top-1 counts each image's own label (MixUp and
  CutMix's too: torchvision counts the mixed target's larger share). ``learning_rate(n)``
  is the rate of the step after ``n`` steps (the schedule's).

  ``workdir`` None prints only: the processes of a multi-host run but the first.
  """

  def __init__(
    self,
    workdir: Path | None,
    global_batch: int,
    log_every: int,
    total_steps: int,
    learning_rate: Callable[[int], float] | None = None,
  ):
    self.global_batch, self.log_every, self.total_steps = global_batch, log_every, total_steps
    self.learning_rate = learning_rate
    self.start = self.last = time.perf_counter()
    self.images = 0
    self.sums: dict[str, Any] | None = None  # on the device: loss and top-1 since the line
    self.since_line = 0  # steps in ``sums``
    self.since_scalars = [0.0, 0.0, 0]  # loss, top-1 and steps since the scalars, as read
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
    """Counts the images of train step ``step`` (1 for the first) and adds its loss and
    top-1 to the sums; a line when it is due."""
    if self.logdir and not self.writer:
      import jax

      # Importing tensorboardX takes 2 s of a core: not while the first step runs.
      jax.block_until_ready(metrics)
      self.writer = ThreadPoolExecutor(1).submit(_summary_writer, self.logdir)
    self.images += self.global_batch
    self._add(metrics)
    scheduled = step % self.log_every == 0 or step == self.total_steps
    if not scheduled and time.perf_counter() - self.last < LOG_SECONDS:
      return
    loss, top1 = self._read()
    self.last = time.perf_counter()
    rate = self.images / (self.last - self.start)
    eta = (self.total_steps - step) * self.global_batch / max(rate, 1e-9)
    lr = self.learning_rate(step - 1) if self.learning_rate else None
    print(
      f"step {step}/{self.total_steps} loss {loss:.4f} top1 {top1:.4f} "
      + (f"lr {lr:.4g} " if lr is not None else "")
      + f"{rate:.1f} img/s ETA {duration(eta)} skipped {skipped}",
      flush=True,
    )
    if scheduled:
      loss_sum, top1_sum, steps = self.since_scalars
      self.since_scalars = [0.0, 0.0, 0]
      self.scalar(step, "train/loss", loss_sum / steps)
      self.scalar(step, "train/top1", top1_sum / (steps * self.global_batch))
      if lr is not None:
        self.scalar(step, "train/lr", lr)
      self.scalar(step, "train/images_per_s", rate)

  def _add(self, metrics: dict[str, Any]) -> None:
    """Adds the step's loss and top-1 count to the device's sums: dispatched, not waited on."""
    now = {"loss": metrics["loss"], "top1": metrics["top1"]}
    self.sums = now if self.sums is None else _add_sums()(self.sums, now)
    self.since_line += 1

  def _read(self) -> tuple[float, float]:
    """The mean loss and top-1 since the last line, read from the device (its one wait);
    their sums carried over to the scalars."""
    assert self.sums is not None
    loss_sum, top1_sum = float(self.sums["loss"]), float(self.sums["top1"])
    steps, self.sums, self.since_line = self.since_line, None, 0
    self.since_scalars = [
      self.since_scalars[0] + loss_sum,
      self.since_scalars[1] + top1_sum,
      self.since_scalars[2] + steps,
    ]
    return loss_sum / steps, top1_sum / (steps * self.global_batch)

  def scalar(self, step: int, name: str, value: float) -> None:
    """TensorBoard (once its writer is ready), and metrics.jsonl for flax-resnet-plot."""
    if self.logdir and self.metrics_file:
      self.pending.append((name, value, step))
      append_metric(self.metrics_file, step, name, value)
      if self.writer and self.writer.done():
        self._flush()

  def evaluated(self, step: int, epoch: int, metrics: dict[str, float]) -> None:
    """An eval's line (on every process) and its scalars (``eval/top1`` ...)."""
    print(f"epoch {epoch} eval " + " ".join(f"{k} {v:.4f}" for k, v in metrics.items()), flush=True)
    for k, v in metrics.items():
      self.scalar(step, f"eval/{k}", v)

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


@functools.cache
def _add_sums() -> Callable:
  """One jitted addition of two dicts of arrays (JAX loads only once a run logs)."""
  import jax
  import jax.numpy as jnp

  return jax.jit(lambda a, b: jax.tree.map(jnp.add, a, b))


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
