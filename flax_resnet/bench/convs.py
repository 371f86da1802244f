"""Forward, input-gradient and kernel-gradient time of ResNet-50's convolution shapes.

    taskset -c 0 flax-resnet-bench convs --batch 16 --out convs.jsonl

Each shape runs through ``jax.lax.conv_general_dilated`` and through the model's
own ``flax_resnet.model.conv_general_dilated`` (which runs 1x1 convolutions as
matrix products on CPU), jitted, median of --repeats runs after one warm-up.
jax 0.10's XLA:CPU runs a convolution on one thread, jax 0.11's and later on every core
(BENCHMARKS.md), so ``taskset -c 0`` gives per-core figures that compare across versions.
One JSON line per shape and implementation; a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from flax_resnet.bench.results import emit
from flax_resnet.cli import ArgumentParser
from flax_resnet.model import conv_general_dilated

# name: (input height = width, in channels, out channels, kernel, stride), all from ResNet-50
SHAPES = {
  "stem 7x7/2 3->64": (224, 3, 64, 7, 2),
  "layer1 1x1 64->256": (56, 64, 256, 1, 1),
  "layer1 1x1 256->64": (56, 256, 64, 1, 1),
  "layer1 3x3 64->64": (56, 64, 64, 3, 1),
  "layer2 3x3/2 128->128": (56, 128, 128, 3, 2),
  "layer2 downsample 1x1/2 256->512": (56, 256, 512, 1, 2),
  "layer3 1x1 1024->256": (14, 1024, 256, 1, 1),
  "layer3 3x3 256->256": (14, 256, 256, 3, 1),
}
IMPLS = {"lax": jax.lax.conv_general_dilated, "flax_resnet": conv_general_dilated}


def parse_args(argv=None) -> argparse.Namespace:
  p = ArgumentParser(description=__doc__)
  p.add_argument("--batch", type=int, default=16)
  p.add_argument(
    "--shapes", default=",".join(SHAPES), help=f"comma-separated names among: {', '.join(SHAPES)}"
  )
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--out", type=Path, help="append JSON lines here")
  args = p.parse_args(argv)
  args.shapes = args.shapes.split(",")
  unknown = [s for s in args.shapes if s not in SHAPES]
  if unknown:
    p.error(f"--shapes: unknown {unknown}; choose among {list(SHAPES)}")
  if args.batch < 1 or args.repeats < 1:
    p.error("--batch and --repeats must be >= 1")
  return args


def median_ms(fn, *args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t)
  return 1e3 * statistics.median(times)


def time_conv(
  conv, batch: int, size: int, cin: int, cout: int, k: int, stride: int, repeats: int
) -> dict[str, float]:
  """Milliseconds of the forward pass and of each gradient, for one implementation."""
  x = jax.random.normal(jax.random.key(0), (batch, size, size, cin))
  w = jax.random.normal(jax.random.key(1), (k, k, cin, cout)) * 0.05
  dn = jax.lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))
  pad = ((k // 2, k // 2),) * 2

  def f(x, w):
    return conv(x, w, (stride, stride), pad, dimension_numbers=dn)

  g = jnp.ones_like(f(x, w))
  dx = jax.jit(lambda x, w, g: jax.vjp(lambda x: f(x, w), x)[1](g)[0])
  dw = jax.jit(lambda x, w, g: jax.vjp(lambda w: f(x, w), w)[1](g)[0])
  return {
    "forward_ms": median_ms(jax.jit(f), x, w, repeats=repeats),
    "input_grad_ms": median_ms(dx, x, w, g, repeats=repeats),
    "kernel_grad_ms": median_ms(dw, x, w, g, repeats=repeats),
  }


def main(argv=None) -> int:
  args = parse_args(argv)
  rows = []
  print(
    "| shape | implementation | forward ms | input grad ms | kernel grad ms |\n"
    "| --- | --- | ---: | ---: | ---: |",
    flush=True,
  )
  for name in args.shapes:
    for impl, conv in IMPLS.items():
      ms = time_conv(conv, args.batch, *SHAPES[name], repeats=args.repeats)
      print(
        f"| {name} | {impl} | {ms['forward_ms']:.1f} | {ms['input_grad_ms']:.1f} | "
        f"{ms['kernel_grad_ms']:.1f} |",
        flush=True,
      )
      rows.append(
        {
          "shape": name,
          "implementation": impl,
          "batch": args.batch,
          **ms,
          "device": str(jax.devices()[0].device_kind),
          "backend": jax.default_backend(),
        }
      )
  emit(rows, args.out, echo=False)
  return 0


if __name__ == "__main__":
  sys.exit(main())
