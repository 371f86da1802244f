"""``flax-resnet-bench NAME [ARGS]``: runs benchmark NAME, ``flax_resnet.bench.NAME``'s main
(also ``python -m flax_resnet.commands.bench``).

    flax-resnet-bench throughput --arch resnet50 --mode train --batch 256 --dtype bf16
    flax-resnet-bench pipeline --data imagenet-samples --workers 0,1,2
    flax-resnet-bench peak-rss -- flax-resnet-train --config ... --workdir W
"""

from __future__ import annotations

import importlib
import sys

from flax_resnet.cli import report

BENCHMARKS = {
  "throughput": "train and inference images/s, JAX against PyTorch",
  "dispatch": "host time to queue a train step: jax.jit against nnx.jit",
  "convs": "forward and gradient times of ResNet-50's convolutions",
  "pipeline": "images/s of the training input pipeline on real JPEGs",
  "plot": "images/s against batch size from throughput's JSON lines, as a PNG",
  "peak-rss": "peak memory of a command and its child processes",
  "train-torch": "the PyTorch reference trainer for a training config",
  "kernels": "top kernels of a few JAX train steps, and the step's optimized HLO",
  "serve": "CPU inference: JAX, torch, our ONNX and torchvision's on ONNX Runtime",
  "suite": "everything above that a GPU minute should measure, into one report",
}


def main(argv: list[str] | None = None) -> int:
  """The listing without NAME (exit 2; 0 for --help), else NAME's own main with ARGS."""
  argv = sys.argv[1:] if argv is None else argv
  if argv and argv[0] not in BENCHMARKS and argv[0] not in ("-h", "--help"):
    return report(ValueError(f"unknown benchmark {argv[0]!r}; one of: {', '.join(BENCHMARKS)}"))
  if not argv or argv[0] not in BENCHMARKS:
    listing = "\n".join(f"  {name:<11} {what}" for name, what in BENCHMARKS.items())
    print(f"usage: flax-resnet-bench NAME [ARGS]  (NAME --help for its options)\n{listing}")
    return 0 if argv else 2
  module = importlib.import_module(f"flax_resnet.bench.{argv[0].replace('-', '_')}")
  return module.main(argv[1:])


if __name__ == "__main__":
  sys.exit(main())
