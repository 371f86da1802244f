"""A profile of a few JAX train steps, reduced to a top-kernels table, and the step's HLO.

    flax-resnet-bench kernels --arch resnet50 --batch 256 --dtype bf16 --steps 5 \\
        --hlo OUT/train_step_hlo.txt.xz --out OUT/results.jsonl

The compiled train step's optimized HLO goes, xz-compressed, to ``--hlo``, so that
its fusions can be read on a machine without the GPU. The steps run under
``jax.profiler.trace``; the trace's device events (GPU kernels; on a CPU, XLA's
thunks) are summed by name into one JSON line per kernel, the ``--top`` longest,
with calls, milliseconds per step and share of the device's busy time.
"""

from __future__ import annotations

import argparse
import collections
import lzma
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

from flax_resnet.bench.results import emit
from flax_resnet.cli import ArgumentParser, positive_int
from flax_resnet.files import write_atomic


def parse_args(argv=None) -> argparse.Namespace:
  from flax_resnet.bench.throughput import VARIANTS
  from flax_resnet.registry import list_models

  p = ArgumentParser(description=__doc__)
  p.add_argument("--arch", default="resnet50", choices=list_models())
  p.add_argument("--batch", type=positive_int, default=32)
  p.add_argument("--image-size", type=positive_int, default=224)
  p.add_argument("--dtype", default="bf16", choices=["fp32", "bf16"])
  p.add_argument("--variant", default="baseline", choices=list(VARIANTS["train"]))
  p.add_argument("--steps", type=positive_int, default=5, help="profiled steps")
  p.add_argument("--top", type=positive_int, default=25, help="kernels in the table")
  p.add_argument("--hlo", type=Path, help="write the optimized HLO here, xz-compressed")
  p.add_argument("--out", type=Path, help="append JSON lines here")
  return p.parse_args(argv)


def device_events(xplane: Path):
  """(name, duration in ns) of every kernel in the trace: the device planes' stream
  events where there are device planes, else the host's XLA thunks (a CPU run)."""
  from jax.profiler import ProfileData

  planes = list(ProfileData.from_file(str(xplane)).planes)
  devices = [p for p in planes if p.name.startswith("/device:")]
  if devices:
    lines = [ln for p in devices for ln in p.lines]
    streams = [ln for ln in lines if ln.name.startswith("Stream")]
    lines = streams or [ln for ln in lines if ln.name not in ("XLA Modules", "Steps")]
  else:
    lines = [
      ln for p in planes if p.name == "/host:CPU" for ln in p.lines if ln.name.startswith("tf_XLA")
    ]
  for line in lines:
    for event in line.events:
      # On a CPU, the executor's and thread pool's own spans enclose the thunks.
      if not event.name.startswith(("ThunkExecutor::", "ThreadpoolListener", "end: ")):
        yield event.name, event.duration_ns


def top_kernels(events, steps: int, top: int) -> list[dict]:
  """The ``top`` kernels by total time, each with its calls, ms per step and share."""
  total: collections.Counter[str] = collections.Counter()
  calls: collections.Counter[str] = collections.Counter()
  for name, ns in events:
    total[name] += ns
    calls[name] += 1
  busy = sum(total.values()) or 1
  return [
    {
      "kernel": name[:200],
      "calls_per_step": calls[name] / steps,
      "ms_per_step": ns / 1e6 / steps,
      "share": ns / busy,
      "busy_ms_per_step": busy / 1e6 / steps,
    }
    for name, ns in total.most_common(top)
  ]


def profile(runner, steps: int) -> list[tuple[str, int]]:
  """Runs ``steps`` steps under the profiler; the trace's kernel events (``device_events``)."""
  import jax

  with tempfile.TemporaryDirectory(prefix="flax-resnet-profile-") as trace_dir:
    with jax.profiler.trace(trace_dir):
      for _ in range(steps):
        runner.run()
    found = sorted(Path(trace_dir).rglob("*.xplane.pb"))
    if not found:
      raise RuntimeError(f"jax.profiler wrote no .xplane.pb under {trace_dir}")
    return list(device_events(found[-1]))


def write_hlo(runner, path: Path) -> int:
  """The train step's optimized HLO, xz-compressed, to ``path``; its compressed size."""
  from flax_resnet.training.steps import train_step

  text = train_step.lower(runner.graphdef, runner.state, runner.x, runner.y).compile().as_text()
  if text is None:
    raise RuntimeError("XLA returned no HLO text for the train step")
  data = lzma.compress(text.encode(), preset=6)
  path.parent.mkdir(parents=True, exist_ok=True)
  write_atomic(path, data)
  return len(data)


def main(argv=None) -> int:
  args = parse_args(argv)
  from flax_resnet.bench.throughput import JaxRunner, device_name

  t = time.perf_counter()
  runner = JaxRunner(
    SimpleNamespace(
      arch=args.arch, mode="train", batch=args.batch, image_size=args.image_size, dtype=args.dtype
    ),
    args.variant,
  )
  runner.run()
  runner.run()
  print(f"built, compiled and warmed up in {time.perf_counter() - t:.1f}s", file=sys.stderr)
  common = {
    "bench": "kernels",
    "arch": args.arch,
    "batch": args.batch,
    "dtype": args.dtype,
    "variant": args.variant,
    "device": device_name("jax", runner),
  }
  if args.hlo:
    common["hlo_file"], common["hlo_xz_bytes"] = args.hlo.name, write_hlo(runner, args.hlo)
  rows = top_kernels(profile(runner, args.steps), args.steps, args.top)
  emit([{**common, "rank": i + 1, **row} for i, row in enumerate(rows)], args.out)
  return 0


if __name__ == "__main__":
  sys.exit(main())
