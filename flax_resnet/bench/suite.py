"""Everything a GPU run should measure, in one command and one report.

    flax-resnet-bench suite OUTDIR                  # one GPU: at most --budget seconds
    flax-resnet-bench suite OUTDIR --tiny --budget 300   # the plumbing, on a CPU

Each step runs in its own process group under its own time limit, cut to what is
left of ``--budget``, so that one hang loses one step rather than the run:

1. ``facts``: GPU, driver, versions, cores, /dev/shm;
2. ``train`` and ``infer``: ResNet-50, bf16, batch 256, JAX (each speed variant)
   against torch eager and torch.compile in one process (``flax-resnet-bench throughput``);
3. ``kernels``: a profile of five JAX train steps reduced to a top-kernels table,
   and the step's optimized HLO (``flax-resnet-bench kernels``);
4. ``pipeline`` and ``pipeline-v2``: the input pipeline at 8 and 16 workers
   (``flax-resnet-bench pipeline``), with crop and flip, then with the V2 recipe's
   TrivialAugmentWide and random erasing;
5. ``cifar10-jax`` and ``cifar10-torch``: the CIFAR-10 preset and its PyTorch
   reference, each only if the budget still holds its need.

OUTDIR receives four files, each at most 16 MB: ``REPORT.md`` (the tables),
``results.jsonl`` (every measured row), ``suite.log`` (every step's output) and
``train_step_hlo.txt.xz``. The machine's own data folder is ``--data`` (the
ImageNet samples, and CIFAR-10's tarball for step 5).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from flax_resnet.bench.datasets import unpack_cifar
from flax_resnet.bench.results import DATA_ENV, data_root, emit
from flax_resnet.bench.suite_report import write_report
from flax_resnet.cli import ArgumentParser, CliError, check_writable_dir, positive_float

MAX_FILE_BYTES = 16 * 2**20
RESULTS, LOG, HLO = "results.jsonl", "suite.log", "train_step_hlo.txt.xz"
# The measured sizes (issue 18): ResNet-50 bf16 at batch 256; the CPU plumbing's are tiny.
SIZES = {
  "gpu": dict(
    arch="resnet50",
    batch="256",
    image="224",
    dtype="bf16",
    steps="20",
    frameworks="jax,torch-eager,torch-compile",
    train_variants="baseline,bn_fused_backward,bn_one_pass_fused_backward",
    workers="8,16",
    pipeline_batch="256",
    pipeline_batches="64",
  ),
  "tiny": dict(
    arch="resnet18",
    batch="4",
    image="32",
    dtype="bf16",
    steps="2",
    frameworks="jax,torch-eager",
    train_variants="baseline,bn_fused_backward",
    workers="0,1",
    pipeline_batch="4",
    pipeline_batches="2",
  ),
}


@dataclass
class Step:
  """One command of the suite: ``limit_s`` at most, run only if ``needs_s`` are left."""

  name: str
  argv: list[str]
  limit_s: float
  needs_s: float = 0.0
  env: dict = field(default_factory=dict)


def parse_args(argv=None) -> argparse.Namespace:
  p = ArgumentParser(description=__doc__)
  p.add_argument("out", type=Path, help="the report's folder (created; must be empty)")
  p.add_argument(
    "--budget",
    type=positive_float,
    default=450.0,
    help="seconds for all steps together (the wrapper's install comes on top)",
  )
  p.add_argument(
    "--data",
    type=Path,
    default=data_root(),
    help=f"the data folder (default: ${DATA_ENV}, else ../shared/data from the current directory)",
  )
  p.add_argument("--tiny", action="store_true", help="tiny sizes: the plumbing, on a CPU")
  p.add_argument("--facts", action="store_true", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  empty = args.out.is_dir() and not any(args.out.iterdir())
  if not args.facts and not empty:
    try:
      check_writable_dir(args.out, force=False, flag="OUTDIR")
    except CliError as e:
      p.error(str(e))
  return args


def bench(name: str, *argv: str) -> list[str]:
  return [sys.executable, "-m", "flax_resnet.commands.bench", name, *argv]


def flags(**values) -> list[str]:
  """``--name value`` pairs, in order (``image_size`` is ``--image-size``)."""
  return [x for name, value in values.items() for x in (f"--{name.replace('_', '-')}", str(value))]


def plan(args, results: Path, work: Path) -> list[Step]:
  """The suite's steps, in order, with their time limits (seconds)."""
  s, tiny = SIZES["tiny" if args.tiny else "gpu"], args.tiny
  model = flags(arch=s["arch"], batch=s["batch"], image_size=s["image"], dtype=s["dtype"])
  common = [*model, *flags(frameworks=s["frameworks"], steps=s["steps"], rounds=2, out=results)]
  kernels = flags(steps=2 if tiny else 5, hlo=args.out / HLO, out=results)
  pipeline = flags(
    data="imagenet-samples",
    data_root=args.data,
    workers=s["workers"],
    batch=s["pipeline_batch"],
    batches=s["pipeline_batches"],
    out=results,
  )
  return [
    Step("facts", [sys.executable, "-m", "flax_resnet.bench.suite", str(args.out), "--facts"], 30),
    Step(
      "train",
      bench("throughput", "--mode", "train", "--variants", s["train_variants"], *common),
      220,
    ),
    Step("infer", bench("throughput", "--mode", "infer", "--variants", "all", *common), 80),
    Step("kernels", bench("kernels", *model, *kernels), 60),
    Step("pipeline", bench("pipeline", *pipeline), 45),
    # the V2 recipe's host work (the cores per GPU it needs): TrivialAugmentWide + erasing
    Step(
      "pipeline-v2",
      bench("pipeline", *pipeline, *flags(auto_augment="ta_wide", random_erase=0.1)),
      45,
    ),
    *cifar_steps(args, work),
  ]


def cifar_steps(args, work: Path) -> list[Step]:
  """The CIFAR-10 preset and its PyTorch reference, on a copy unpacked when they run."""
  data = work / "cifar10" / "cifar10-jpeg"
  preset = "cifar10_resnet18"
  sets = ["--set", f"data_dir={data}"]
  return [
    Step(
      f"cifar10-{which}",
      [*command, "--config", preset, "--workdir", str(work / f"run-{which}"), *sets],
      300,
      needs_s=300,
    )
    for which, command in (
      ("jax", [sys.executable, "-m", "flax_resnet.commands.train"]),
      ("torch", bench("train-torch")),
    )
  ]


def run_step(step: Step, log, deadline: float, prepare=None) -> dict:
  """Runs ``step`` within its limit and the budget; its status row (ok, failed,
  timed out, skipped)."""
  left = deadline - time.monotonic()
  row = {"bench": "suite", "step": step.name, "limit_s": step.limit_s}
  if left < max(step.needs_s, 5):
    return {**row, "status": "skipped", "why": f"needs {step.needs_s:.0f}s, {left:.0f}s left"}
  limit = min(step.limit_s, left)
  log.write(f"\n===== {step.name} (limit {limit:.0f}s): {' '.join(step.argv)}\n")
  log.flush()
  start = time.monotonic()
  if prepare:
    prepare()
  proc = subprocess.Popen(
    step.argv,
    stdout=log,
    stderr=subprocess.STDOUT,
    start_new_session=True,
    env={**os.environ, **step.env},
  )
  try:
    status = (
      "ok"
      if proc.wait(timeout=max(limit - (time.monotonic() - start), 1)) == 0
      else f"failed (exit {proc.returncode})"
    )
  except subprocess.TimeoutExpired:
    os.killpg(proc.pid, signal.SIGKILL)  # torch.compile and grain leave children behind
    proc.wait()
    status = "timed out"
  return {**row, "status": status, "seconds": round(time.monotonic() - start, 1)}


def unpack_cifar_once(data: Path, dest: Path):
  """A function that unpacks CIFAR-10's tarball into ``dest`` once."""

  def unpack():
    if not dest.exists():
      unpack_cifar(data, dest)

  return unpack


def run(args) -> int:
  """All steps, then the report; exit 0 when every step that ran ended well."""
  deadline = time.monotonic() + args.budget
  args.out.mkdir(parents=True, exist_ok=True)
  results = args.out / RESULTS
  statuses = []
  with (
    tempfile.TemporaryDirectory(prefix="flax-resnet-suite-") as work,
    open(args.out / LOG, "a") as log,
  ):
    unpack = unpack_cifar_once(args.data, Path(work) / "cifar10" / "cifar10-jpeg")
    for step in plan(args, results, Path(work)):
      row = run_step(step, log, deadline, unpack if step.name.startswith("cifar10") else None)
      statuses.append(row)
      print(
        f"{step.name}: {row['status']}"
        + (f" in {row['seconds']}s" if "seconds" in row else f" ({row.get('why')})"),
        flush=True,
      )
      if step.name.startswith("cifar10") and row["status"] == "ok":
        statuses[-1]["summary"] = _summary(Path(work) / f"run-{step.name.split('-')[1]}")
  with open(results, "a") as f:
    f.writelines(json.dumps(row) + "\n" for row in statuses)
  _cap(args.out / LOG)
  write_report(args.out, args.budget, args.tiny)
  return 0 if all(r["status"] in ("ok", "skipped") for r in statuses) else 1


def _summary(workdir: Path) -> dict | None:
  path = workdir / "summary.json"
  return json.loads(path.read_text()) if path.is_file() else None


def _cap(path: Path) -> None:
  """Keeps a log's last 16 MB: where a long log has its errors."""
  if path.stat().st_size > MAX_FILE_BYTES:
    with open(path, "rb") as f:
      f.seek(-MAX_FILE_BYTES + 100, os.SEEK_END)
      tail = f.read()
    path.write_bytes(b"[... the start of this log was cut to keep it under 16 MB ...]\n" + tail)


def facts(out: Path) -> int:
  """One JSON line of the machine: GPU and driver, jax's devices, cores, /dev/shm, and the
  versions (``results.stamp``)."""
  import shutil

  import jax

  row = {
    "bench": "facts",
    "jax_devices": [f"{d.platform}:{d.device_kind}" for d in jax.devices()],
    "cpu_count": os.cpu_count(),
    "dev_shm_bytes": shutil.disk_usage("/dev/shm").total if Path("/dev/shm").is_dir() else None,
  }
  try:
    row["nvidia_smi"] = subprocess.run(
      [
        "nvidia-smi",
        "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
        "--format=csv,noheader",
      ],
      capture_output=True,
      text=True,
      timeout=20,
    ).stdout.strip()
  except (OSError, subprocess.TimeoutExpired) as e:
    row["nvidia_smi"] = f"not available ({type(e).__name__})"
  emit([row], out / RESULTS)  # stamped with the versions, as every benchmark's rows
  return 0


def main(argv=None) -> int:
  args = parse_args(argv)
  return facts(args.out) if args.facts else run(args)


if __name__ == "__main__":
  sys.exit(main())
