"""Training and inference throughput of flax-resnet against PyTorch, in one process.

    flax-resnet-bench throughput --arch resnet50 --mode infer --batch 32 --dtype fp32 \\
        --frameworks jax,torch-eager --steps 20 --out results.json

Synthetic data already on the device. Compilation and warm-up are timed apart;
the timed steps alternate between frameworks in rounds so that their ratio holds
on a noisy machine. One JSON line per framework, variant and configuration is
appended to --out (and printed).

``--variants`` runs JAX once per speed option of the library (``VARIANTS``):
BatchNorm's one-pass moments and fused backward in training, BatchNorm folded
into the convolutions (``flax_resnet.fold_batchnorm``) for inference.

With torch in the same process on a GPU, JAX is limited to ``JAX_MEM_FRACTION``
of the GPU's memory (``XLA_PYTHON_CLIENT_MEM_FRACTION``, unless already set):
its default preallocation of 75% would leave torch a quarter.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import flax_resnet
from flax_resnet.bench.results import emit
from flax_resnet.cli import ArgumentParser
from flax_resnet.cpu import batch_devices, one_device_per_core, use_every_core
from flax_resnet.training.optimiser import make_optimizer
from flax_resnet.training.steps import train_step

VARIANTS: dict[str, dict[str, dict[str, str | bool]]] = {
  "train": {
    "baseline": {},
    "bn_fused_backward": {"backward": "fused"},
    "bn_one_pass": {"moments": "one_pass"},
    "bn_one_pass_fused_backward": {"moments": "one_pass", "backward": "fused"},
  },
  "infer": {"baseline": {}, "folded": {"fold": True}},
}
JAX_MEM_FRACTION = "0.45"
# Dense bf16 / tf32 tensor-core peaks in FLOP/s, for MFU.
PEAK_FLOPS = {
  ("H100", "bf16"): 989e12,
  ("H200", "bf16"): 989e12,
  ("H100", "fp32"): 494e12,
  ("H200", "fp32"): 494e12,
}


def parse_args(argv=None) -> argparse.Namespace:
  p = ArgumentParser(description=__doc__)
  p.add_argument(
    "--arch",
    default="resnet50",
    choices=flax_resnet.list_models("timm"),
    help="torchvision's ten run against torchvision, timm's other archs against timm",
  )
  p.add_argument("--mode", default="infer", choices=["train", "infer"])
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--image-size", type=int, default=224)
  p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
  p.add_argument(
    "--frameworks",
    default="jax,torch-eager",
    help="comma-separated: jax, torch-eager, torch-compile",
  )
  p.add_argument(
    "--variants",
    default="baseline",
    help="comma-separated JAX variants, or 'all': train: "
    f"{', '.join(VARIANTS['train'])}; infer: {', '.join(VARIANTS['infer'])}",
  )
  p.add_argument("--steps", type=int, default=20, help="timed steps per framework")
  p.add_argument("--warmup", type=int, default=2, help="untimed steps after compilation")
  p.add_argument("--rounds", type=int, default=4, help="alternations between frameworks")
  p.add_argument(
    "--cpu-devices",
    default="auto",
    choices=["auto", "cores", "1"],
    help="JAX on a CPU: as flax-resnet-train runs (auto: one device per core, the "
    "batch sharded over them, where XLA:CPU convolutions are single-threaded, "
    "jax < 0.11; else one), one device per core, or one device",
  )
  p.add_argument("--out", type=Path, help="append JSON lines here")
  args = p.parse_args(argv)
  args.frameworks = args.frameworks.split(",")
  unknown = set(args.frameworks) - {"jax", "torch-eager", "torch-compile"}
  if unknown or args.steps < args.rounds or args.batch < 1:
    p.error(f"bad --frameworks {sorted(unknown)} or --steps < --rounds or --batch < 1")
  known = VARIANTS[args.mode]
  args.variants = list(known) if args.variants == "all" else args.variants.split(",")
  if set(args.variants) - set(known):
    p.error(
      f"--variants {','.join(sorted(set(args.variants) - set(known)))}: not a {args.mode} "
      f"variant ({', '.join(known)})"
    )
  return args


def runner_names(args) -> list[str]:
  """``jax`` (the baseline), ``jax:VARIANT`` for the others, then the torch frameworks."""
  names = []
  for framework in args.frameworks:
    if framework == "jax":
      names += ["jax" if v == "baseline" else f"jax:{v}" for v in args.variants]
    else:
      names.append(framework)
  return names


def split_gpu_memory(frameworks) -> str | None:
  """Limits JAX's preallocation when torch shares the process; the fraction in force."""
  if any(f.startswith("torch") for f in frameworks):
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", JAX_MEM_FRACTION)
  return os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION")


class JaxRunner:
  """A jitted eval forward or train step on a device-resident synthetic batch.

  The batch is sharded over as many devices as divide it (one device unless the
  host has several, or ``--cpu-devices`` made one per core); parameters are
  replicated, as in flax-resnet-train.
  """

  def __init__(self, args, variant: str = "baseline"):
    dtype = jnp.bfloat16 if args.dtype == "bf16" else None
    options = dict(VARIANTS[args.mode][variant])
    fold = options.pop("fold", False)
    self.model = flax_resnet.create_model(args.arch, dtype=dtype, rngs=nnx.Rngs(0))
    if options:
      self.model.set_attributes(**options, raise_if_not_found=False)
    mesh = Mesh(np.array(batch_devices(args.batch)), ("data",))
    self.devices = mesh.size
    nnx.update(self.model, jax.device_put(nnx.state(self.model), NamedSharding(mesh, P())))
    key = jax.random.key(0)
    self.x, self.y = jax.device_put(
      (
        jax.random.normal(key, (args.batch, args.image_size, args.image_size, 3)),
        jax.random.randint(key, (args.batch,), 0, 1000),
      ),
      NamedSharding(mesh, P("data")),
    )
    if args.mode == "train":
      self.graphdef, self.state = nnx.split((self.model, make_optimizer(self.model, 0.1)))
      self.step = self._train_step
    else:
      self.model.eval()
      graphdef, state = nnx.split(flax_resnet.fold_batchnorm(self.model) if fold else self.model)
      forward = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))
      self.step = lambda: forward(state, self.x)

  def _train_step(self) -> jax.Array:
    self.state, metrics = train_step(self.graphdef, self.state, self.x, self.y)
    return metrics["loss"]

  def run(self) -> float:
    """One step to completion; returns the seconds the host took to queue it."""
    t = time.perf_counter()
    out = self.step()
    queued = time.perf_counter() - t
    jax.block_until_ready(out)
    return queued


def _torch_model(arch: str):
  """The PyTorch model ``arch`` names: torchvision's for its ten, timm's otherwise."""
  if arch in flax_resnet.list_models():
    import torchvision

    return getattr(torchvision.models, arch)()
  import timm

  return timm.create_model(arch)


class TorchRunner:
  """torchvision's model (timm's for timm's other archs) with channels_last, autocast in the
  same dtype, eager or compiled."""

  def __init__(self, args, compiled: bool):
    import torch

    self.torch = torch
    self.device = "cuda" if torch.cuda.is_available() else "cpu"
    model = _torch_model(args.arch).to(self.device)
    model = model.to(memory_format=torch.channels_last)
    self.x = torch.randn(args.batch, 3, args.image_size, args.image_size, device=self.device)
    self.x = self.x.to(memory_format=torch.channels_last)
    self.y = torch.randint(0, 1000, (args.batch,), device=self.device)
    self.dtype = torch.bfloat16 if args.dtype == "bf16" else None
    self.train = args.mode == "train"
    model.train(self.train)
    self.model = torch.compile(model) if compiled else model
    self.optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)

  def run(self) -> float:
    """One step to completion; returns the seconds the host took to queue it."""
    torch, t = self.torch, time.perf_counter()
    with torch.autocast(
      self.device, dtype=self.dtype or torch.float32, enabled=self.dtype is not None
    ):
      if self.train:
        loss = torch.nn.functional.cross_entropy(self.model(self.x), self.y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
      else:
        with torch.inference_mode():
          self.model(self.x)
    queued = time.perf_counter() - t
    if self.device == "cuda":
      torch.cuda.synchronize()
    return queued


def make_runner(name: str, args):
  if name.startswith("jax"):
    return JaxRunner(args, name.partition(":")[2] or "baseline")
  return TorchRunner(args, compiled=name == "torch-compile")


def device_name(framework: str, runner) -> str:
  if framework.startswith("jax"):
    d = jax.devices()[0]
    return f"{d.platform}:{d.device_kind}" + (f" x{runner.devices}" if runner.devices > 1 else "")
  import torch

  if torch.cuda.is_available():
    return f"cuda:{torch.cuda.get_device_name()}"
  return f"cpu:{platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"


def prepare(names, args) -> dict:
  """Builds each runner, timing its first step (compilation) and warm-up apart."""
  runners = {}
  for name in names:
    t = time.perf_counter()
    runner = make_runner(name, args)
    runner.run()
    first = time.perf_counter() - t
    for _ in range(args.warmup):
      runner.run()
    runners[name] = (runner, first)
    print(f"{name}: built and first step in {first:.1f}s", file=sys.stderr, flush=True)
  return runners


def measure(runners, args) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
  """Per-step wall and host-queueing times, the frameworks taking turns for ``args.rounds``
  rounds."""
  times: dict[str, list[float]] = {name: [] for name in runners}
  queued: dict[str, list[float]] = {name: [] for name in runners}
  per_round = args.steps // args.rounds
  for r in range(args.rounds):
    for name, (runner, _) in runners.items():
      for _ in range(per_round):
        t = time.perf_counter()
        queued[name].append(runner.run())
        times[name].append(time.perf_counter() - t)
    print(
      f"round {r + 1}/{args.rounds}: "
      + ", ".join(f"{n} {args.batch / statistics.median(ts):.1f} img/s" for n, ts in times.items()),
      file=sys.stderr,
      flush=True,
    )
  return times, queued


def result_rows(args, runners, times, queued) -> list[dict]:
  macs = flax_resnet.count_macs(
    nnx.eval_shape(lambda: flax_resnet.create_model(args.arch)),
    (1, args.image_size, args.image_size, 3),
  )
  flops = 2 * macs * (3 if args.mode == "train" else 1)
  rows, fastest_torch = [], None
  for name, ts in times.items():
    median = statistics.median(ts)
    device = device_name(name, runners[name][0])
    peak = next((v for (k, d), v in PEAK_FLOPS.items() if k in device and d == args.dtype), None)
    framework, _, variant = name.partition(":")
    row = {
      "framework": framework,
      "variant": variant or "baseline",
      "arch": args.arch,
      "mode": args.mode,
      "batch": args.batch,
      "image_size": args.image_size,
      "dtype": args.dtype,
      "steps": len(ts),
      "step_s_median": median,
      "step_s_min": min(ts),
      "step_s_max": max(ts),
      "images_per_s": args.batch / median,
      "first_step_s": runners[name][1],
      "host_s_median": statistics.median(queued[name]),
      "flops_per_image": flops,
      "mfu": flops * args.batch / median / peak if peak else None,
      "device": device,
      "jax_mem_fraction": os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION")
      if framework == "jax" and device.startswith("gpu")
      else None,
    }
    rows.append(row)
    if framework != "jax":
      fastest_torch = max(fastest_torch or 0, row["images_per_s"])
  for row in rows:
    if row["framework"] == "jax" and fastest_torch:
      row["jax_over_fastest_torch"] = row["images_per_s"] / fastest_torch
  return rows


def main(argv=None) -> int:
  args = parse_args(argv)
  fraction = split_gpu_memory(args.frameworks)  # before JAX's first use of a device
  if args.cpu_devices == "auto":
    use_every_core(args.batch)
  elif args.cpu_devices == "cores":
    one_device_per_core(args.batch)
  if fraction and jax.default_backend() == "gpu":
    print(
      f"JAX may use {float(fraction):.0%} of the GPU's memory (XLA_PYTHON_CLIENT_MEM_FRACTION),"
      " torch the rest",
      file=sys.stderr,
      flush=True,
    )
  runners = prepare(runner_names(args), args)
  emit(result_rows(args, runners, *measure(runners, args)), args.out)
  return 0


if __name__ == "__main__":
  sys.exit(main())
