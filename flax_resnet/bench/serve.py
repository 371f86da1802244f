"""CPU inference of the forms a model is served in: JAX, torch eager, our ONNX export on ONNX
Runtime, and torchvision's own ``torch.onnx.export`` of the same weights on ONNX Runtime; our
ONNX export on OpenVINO too, where it is installed (it is in no extra).

    flax-resnet-bench serve --archs resnet18,resnet50 --batches 1,32 --out serve.jsonl

One process; each round runs every backend in turn (alternating, so that a busy machine
slows them alike), --calls calls each after a warm-up, and records their median ms. JAX:
``jax.jit`` of the model with BatchNorm folded (``fold_batchnorm``), NHWC. torch: eager,
``torch.inference_mode``, channels_last, --threads threads. ONNX Runtime: the CPU provider,
--threads intra-op threads, all graph optimisations. OpenVINO: the CPU device, --threads
threads, float32 inference precision (not the bfloat16 it picks on CPUs that have it).
Random weights (BatchNorm statistics drawn as a trained net's) at 224x224; float32. One JSON
line per (arch, batch, backend, round); a Markdown table of each backend's range of medians
on stdout.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from flax_resnet.bench.results import emit
from flax_resnet.cli import ArgumentParser, positive_int
from flax_resnet.versions import versions

BACKENDS = ("jax", "torch", "ort", "ort-torchvision", "openvino")
SIZE = 224


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  """The benchmark's arguments; usage errors exit 2 in one line."""
  p = ArgumentParser(description=__doc__)
  p.add_argument("--archs", default="resnet18,resnet50", help="torchvision names, comma-separated")
  p.add_argument("--batches", default="1,32", help="batch sizes, comma-separated")
  p.add_argument("--rounds", type=positive_int, default=3, help="rounds of every backend")
  p.add_argument("--calls", type=positive_int, default=10, help="timed calls per backend a round")
  p.add_argument("--threads", type=positive_int, default=2, help="torch's and ORT's threads")
  p.add_argument("--out", type=Path, help="append JSON lines here")
  args = p.parse_args(argv)
  try:
    args.batches = [positive_int(b) for b in args.batches.split(",")]
  except (ValueError, argparse.ArgumentTypeError):
    p.error(f"--batches {args.batches}: positive integers, comma-separated")
  args.archs = args.archs.split(",")
  return args


def torchvision_model(arch: str) -> Any:
  """torchvision's ``arch``, random weights, BatchNorm statistics as a trained net's, eval."""
  import torch
  import torchvision

  torch.manual_seed(0)
  model = getattr(torchvision.models, arch)()
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        assert m.running_mean is not None and m.running_var is not None  # track_running_stats
        m.running_mean.uniform_(-0.1, 0.1)
        m.running_var.uniform_(0.5, 1.5)
  return model.eval()


def backends(arch: str, folder: Path, threads: int) -> dict[str, Any]:
  """Each backend's forward, a function of an NHWC float32 batch."""
  import torch

  from flax_resnet.deploy import export, onnx_session
  from flax_resnet.port.state_dict import from_torch_state_dict
  from flax_resnet.saved_model import new_metadata, save

  net = torchvision_model(arch)
  model = from_torch_state_dict(net.state_dict(), arch)
  checkpoint = save(model, folder / arch, new_metadata(arch=arch, options={}))
  ours = folder / f"{arch}.onnx"
  export(checkpoint, ours)
  theirs = folder / f"{arch}-torchvision.onnx"
  torch.onnx.export(
    net,
    (torch.zeros(1, 3, SIZE, SIZE),),
    str(theirs),
    dynamo=False,
    input_names=["x"],
    dynamic_axes={"x": {0: "batch"}},
  )
  torch.set_num_threads(threads)
  forwards = {
    "jax": _jax_forward(model),
    "torch": _torch_forward(net),
    "ort": _ort_forward(onnx_session(ours, threads)),
    "ort-torchvision": _ort_forward(onnx_session(theirs, threads)),
  }
  if importlib.util.find_spec("openvino") is not None:
    forwards["openvino"] = _openvino_forward(ours, threads)
  return forwards


def _openvino_forward(path: Path, threads: int):
  import openvino

  config = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"}
  compiled = openvino.Core().compile_model(str(path), "CPU", config)
  return lambda x: compiled(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _jax_forward(model: Any):
  import jax
  from flax import nnx

  from flax_resnet.folding import fold_batchnorm

  graphdef, state = nnx.split(fold_batchnorm(model))
  forward = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))
  return lambda x: jax.block_until_ready(forward(state, x))


def _torch_forward(net: Any):
  import torch

  net = net.to(memory_format=torch.channels_last)

  def forward(x):
    with torch.inference_mode():
      return net(torch.from_numpy(x).permute(0, 3, 1, 2))

  return forward


def _ort_forward(session: Any):
  name = session.get_inputs()[0].name
  return lambda x: session.run(None, {name: np.ascontiguousarray(x.transpose(0, 3, 1, 2))})


def median_ms(forward, x: np.ndarray, calls: int) -> float:
  """The median of ``calls`` timed calls, after one untimed (compilation, allocation)."""
  forward(x)
  times = []
  for _ in range(calls):
    t = time.perf_counter()
    forward(x)
    times.append(time.perf_counter() - t)
  return 1e3 * statistics.median(times)


def measure(args: argparse.Namespace, arch: str, folder: Path) -> list[dict]:
  """Every round's median ms of each backend at each batch size, for ``arch``."""
  forwards = backends(arch, folder, args.threads)
  rows = []
  stamp = {"versions": versions(), "date": datetime.date.today().isoformat()}
  for batch in args.batches:
    x = np.random.default_rng(0).standard_normal((batch, SIZE, SIZE, 3)).astype(np.float32)
    for r in range(args.rounds):
      for name, forward in forwards.items():
        ms = median_ms(forward, x, args.calls)
        row = {"bench": "serve", "arch": arch, "batch": batch, "backend": name, "round": r}
        rows.append({**row, "median_ms": round(ms, 2), "threads": args.threads, **stamp})
        emit(rows[-1:], args.out, echo=False)
  return rows


def table(rows: list[dict]) -> str:
  """Markdown: each (arch, batch) a row, each backend's min-max of round medians a column."""
  backends = [b for b in BACKENDS if any(r["backend"] == b for r in rows)]
  lines = [
    "| arch | batch | " + " | ".join(backends) + " |",
    "| --- | ---: |" + " ---: |" * len(backends),
  ]
  for arch, batch in dict.fromkeys((r["arch"], r["batch"]) for r in rows):
    cells = []
    for backend in backends:
      ms = [
        r["median_ms"]
        for r in rows
        if (r["arch"], r["batch"], r["backend"]) == (arch, batch, backend)
      ]
      cells.append(f"{min(ms):.1f}–{max(ms):.1f}")
    lines.append(f"| {arch} | {batch} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  """Measures, appends the JSON lines to --out, prints the table."""
  args = parse_args(argv)
  rows = []
  with tempfile.TemporaryDirectory() as folder:
    for arch in args.archs:
      rows += measure(args, arch, Path(folder))
  print(table(rows))
  return 0
