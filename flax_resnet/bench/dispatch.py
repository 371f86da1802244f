"""Host time per train step: ``nnx.jit`` on the objects against ``jax.jit`` on the split state.

    flax-resnet-bench dispatch --arch resnet50 --out dispatch.jsonl

The host time is how long the call takes to return, its device work queued but
not waited for: while it is shorter than the device's step, an asynchronous
loop hides it. Tiny images keep the device work small so the host's share shows.
Both variants take turns in one process on one device. One JSON line per variant.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

import flax_resnet
from flax_resnet.bench.results import emit
from flax_resnet.cli import ArgumentParser
from flax_resnet.training.optimiser import make_optimizer
from flax_resnet.training.steps import train_step, update

# flax_resnet.training.steps.train_step's work as nnx.jit over the objects, the form it replaced.
nnx_train_step = nnx.jit(update, donate_argnums=(0, 1))


def parse_args(argv=None) -> argparse.Namespace:
  p = ArgumentParser(description=__doc__)
  p.add_argument("--arch", default="resnet50", choices=flax_resnet.list_models())
  p.add_argument("--batch", type=int, default=1)
  p.add_argument("--image-size", type=int, default=16)
  p.add_argument("--steps", type=int, default=30, help="timed steps per variant")
  p.add_argument("--out", type=Path, help="append JSON lines here")
  args = p.parse_args(argv)
  if min(args.batch, args.image_size, args.steps) < 1:
    p.error("--batch, --image-size and --steps must be >= 1")
  return args


def variants(args) -> dict:
  """Each variant as a function that runs one step and returns (host s, whole step s)."""
  x = jax.random.normal(jax.random.key(0), (args.batch, args.image_size, args.image_size, 3))
  y = jnp.zeros((args.batch,), jnp.int32)

  def objects():
    model = flax_resnet.create_model(args.arch, rngs=nnx.Rngs(0))
    return model, make_optimizer(model, 0.1)

  model, optimizer = objects()
  graphdef, state = nnx.split(objects())

  def timed(call):
    t = time.perf_counter()
    out = call()
    queued = time.perf_counter() - t
    jax.block_until_ready(out)
    return queued, time.perf_counter() - t

  def split_step():
    nonlocal state
    state, metrics = train_step(graphdef, state, x, y)
    return metrics

  return {
    "nnx.jit(model, optimizer)": lambda: timed(lambda: nnx_train_step(model, optimizer, x, y)),
    "jax.jit(graphdef, state)": lambda: timed(split_step),
  }


def main(argv=None) -> int:
  args = parse_args(argv)
  runs = variants(args)
  for run in runs.values():  # compile and warm up
    run(), run()
  times: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}  # (queued, step)
  for _ in range(args.steps):
    for name, run in runs.items():
      times[name].append(run())
  device = jax.devices()[0]
  rows = [
    {
      "variant": name,
      "arch": args.arch,
      "batch": args.batch,
      "image_size": args.image_size,
      "steps": len(ts),
      "host_ms_median": 1e3 * statistics.median(h for h, _ in ts),
      "step_ms_median": 1e3 * statistics.median(s for _, s in ts),
      "device": f"{device.platform}:{device.device_kind}",
    }
    for name, ts in times.items()
  ]
  emit(rows, args.out)
  return 0


if __name__ == "__main__":
  sys.exit(main())
