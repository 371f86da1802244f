"""What a run takes of its host: the memory a CPU run needs, estimated from its config and
model before it starts (and said), and the data workers its cores can run."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from flax_resnet.errors import FieldError, literal
from flax_resnet.training.config import Config
from flax_resnet.training.metrics import LOG_SECONDS

# Calibration of ``host_memory_estimate``: on a CPU, the finetune preset (ResNet-50 at 224,
# batch 64, 8 workers) was measured at 11-12 GB; the estimate below gives 11.3. With remat,
# imagenet_resnet50 at batch 32 and 64 within 8% of its measured peaks (BENCHMARKS.md).
_BYTES_SAVED_PER_ACTIVATION = 12  # float32 convolution output, BatchNorm output, ReLU output
_SEGMENT_INPUT_BYTES = 4  # a remat segment's input, kept as float32 even in bfloat16 compute
_WORKER_BYTES = 210 * 2**20  # a grain worker process's own memory (measured: 210 MB)
_RUNTIME_BYTES = 2**30  # Python, JAX, XLA:CPU and its compiled step in the main process
_STATE_COPIES = 5  # weights, gradients, momentum, and the two the update holds at once
_REMAT_PRIMITIVES = ("remat2", "checkpoint")  # jax.checkpoint's: jax 0.10's name, and the older


def host_memory_estimate(
  cfg: Config, graphdef: nnx.GraphDef, state: nnx.State, processes: int = 1
) -> dict[str, float]:
  """Bytes of host memory a CPU run of this process needs, by part: what the train step
  keeps for its backward pass (from the model's convolution and matmul outputs, read off
  its trace; with ``remat``, each recomputed segment's input and the largest segment's
  activations), the weights and optimiser state, the worker processes with their read-ahead,
  and the runtime. An estimate, calibrated on the finetune preset (above)."""
  local_batch = cfg.global_batch // processes
  weights = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state)) * 4
  batch_bytes = local_batch * cfg.image_size**2 * 3
  per_image = _saved_bytes_per_image(graphdef, state, cfg.global_batch, cfg.image_size)
  micro_batch = local_batch // cfg.accumulate_steps  # what the backward pass keeps at once
  parts = {
    "activations": per_image * micro_batch,
    "weights and optimiser": weights * (_STATE_COPIES + bool(cfg.ema_decay)),
    "workers": cfg.workers * (_WORKER_BYTES + (cfg.prefetch + 1) * batch_bytes),
    "runtime": _RUNTIME_BYTES + (cfg.prefetch + 1) * batch_bytes,
  }
  return {k: float(v) for k, v in parts.items()}


def _saved_bytes_per_image(
  graphdef: nnx.GraphDef, state: nnx.State, batch: int, image_size: int
) -> float:
  """Bytes per image that the backward pass holds at its peak. Traced at the run's global
  batch, which per-device BatchNorm groups divide."""

  def forward(state, x):
    return nnx.merge(graphdef, state)(x)

  images = jax.ShapeDtypeStruct((batch, image_size, image_size, 3), jnp.float32)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
  jaxpr = jax.make_jaxpr(forward)(abstract, images).jaxpr
  kept, recomputed = _saved_bytes(jaxpr, weights=set(map(id, jaxpr.invars[:-1])))
  return (kept + recomputed) / batch


def _saved_bytes(jaxpr, weights: set[int]) -> tuple[int, int]:
  """(bytes the backward pass keeps throughout, bytes of the largest remat segment it
  recomputes, whose activations live only while that segment's backward runs). A remat
  segment keeps just its inputs that are not ``weights`` (ids of the weights' variables):
  the activation it starts from."""
  from jax.extend import core

  kept = recomputed = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name in ("conv_general_dilated", "dot_general"):
      kept += _BYTES_SAVED_PER_ACTIVATION * _size(eqn.outvars[0])
    for sub in jax.tree.leaves(
      list(eqn.params.values()), is_leaf=lambda x: isinstance(x, (core.Jaxpr, core.ClosedJaxpr))
    ):
      if not isinstance(sub, (core.Jaxpr, core.ClosedJaxpr)):
        continue
      sub = getattr(sub, "jaxpr", sub)
      inner_weights = {id(v) for v, outer in zip(sub.invars, eqn.invars) if id(outer) in weights}
      inner, inner_recomputed = _saved_bytes(sub, inner_weights)
      if eqn.primitive.name in _REMAT_PRIMITIVES:
        kept += sum(_SEGMENT_INPUT_BYTES * _size(v) for v in eqn.invars if id(v) not in weights)
        recomputed = max(recomputed, inner + inner_recomputed)
      else:
        kept += inner
        recomputed = max(recomputed, inner_recomputed)
  return kept, recomputed


def _size(var) -> int:
  return int(np.prod(var.aval.shape))


def total_host_memory() -> int | None:
  """Bytes of memory this process may use: the machine's RAM, or its cgroup's limit where
  lower (a container's); None where the system does not say."""
  try:
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
  except (ValueError, OSError):  # not every system names them
    return None
  try:
    limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
  except OSError:
    return total
  return min(total, int(limit)) if limit.isdigit() else total


def of_total(total: int | None) -> str:
  """``" of this machine's N GB"``, for a message; empty where ``total`` is None."""
  return "" if total is None else f" of this machine's {total / 2**30:.1f} GB"


def check_fits(cfg: Config, parts: dict[str, float], total: int | None) -> None:
  """``FieldError`` when ``parts`` (``host_memory_estimate``'s) add up to more than ``total``
  bytes: such a run is killed for memory minutes in, after its data workers filled the
  shared memory. It names the global_batch that would fit (the estimate is linear in it)."""
  need = sum(parts.values())
  if total is None or need <= total:
    return
  fits = _batch_that_fits(cfg, parts, total)
  fields: dict = {"batch": ("global_batch", cfg.global_batch), "remat": ("remat", "block")}
  advice = "lower image_size or workers"
  if fits:
    fields["fits"] = ("global_batch", fits)
    advice = "about {fits} fits; or " + advice
  if cfg.remat == "none":
    advice += ", or {remat} (less memory, more compute)"
  raise FieldError(
    "{batch}: this run needs about "
    + literal(f"{need / 2**30:.1f} GB of host memory ({parts_text(parts)})")
    + f", more than this machine's {total / 2**30:.1f} GB: "
    + advice,
    **fields,
  )


def _batch_that_fits(cfg: Config, parts: dict[str, float], total: int) -> int:
  """The largest power of two of images a step whose estimate is within ``total``; 0 if
  none: the activations and the batches read ahead grow with the batch, the rest does not."""
  batch_bytes = cfg.global_batch * cfg.image_size**2 * 3 * (cfg.prefetch + 1)
  growing = parts["activations"] + (cfg.workers + 1) * batch_bytes
  room = total - (sum(parts.values()) - growing)
  if room <= 0:
    return 0
  largest = int(room / growing * cfg.global_batch)
  return 2 ** (largest.bit_length() - 1) if largest >= 1 else 0


def parts_text(parts: dict[str, float]) -> str:
  """``host_memory_estimate``'s parts for a message: ``activations 1.2 GB, ...``."""
  return ", ".join(f"{k} {v / 2**30:.1f} GB" for k, v in parts.items())


def check_host(cfg: Config, graphdef: nnx.GraphDef, state: nnx.State) -> dict[str, float] | None:
  """On a CPU backend, where the run's memory is the host's: ``host_memory_estimate``'s parts
  for the model ``graphdef``, ``state``, refused (``check_fits``) when more than the machine
  has; None elsewhere (an accelerator's memory is not the host's)."""
  if jax.default_backend() != "cpu":
    return None
  parts = host_memory_estimate(cfg, graphdef, state, jax.process_count())
  check_fits(cfg, parts, total_host_memory())
  return parts


def say_cpu_run(cfg: Config, total_steps: int, parts: dict[str, float] | None) -> None:
  """On a CPU (``parts``: ``check_host``'s, None elsewhere): that the run may be long, and
  the host memory it needs."""
  if parts is None or jax.process_index() != 0:
    return
  print(
    f"note: no accelerator: this run's {total_steps} steps of "
    f"{cfg.global_batch} images run on the CPU ({jax.device_count()} device(s)); "
    f"a progress line with its ETA comes at least every {LOG_SECONDS} s. Presets sized "
    "for GPUs and TPUs can take days here.",
    flush=True,
  )
  print(
    f"note: this run needs about {sum(parts.values()) / 2**30:.1f} GB of host memory "
    f"({parts_text(parts)}){of_total(total_host_memory())}",
    flush=True,
  )


def usable_cores() -> int:
  """The cores this process may run on (its affinity, where the system has one)."""
  if hasattr(os, "sched_getaffinity"):
    return len(os.sched_getaffinity(0))
  return os.cpu_count() or 1


def fit_to_host(cfg: Config) -> Config:
  """``cfg`` with the data workers this host can run, each change said in a note: none for
  synthetic images (nothing to decode), at most one a core (more only share the cores and
  each holds hundreds of MB). ``workers`` is resumable: the batches are the same."""
  cores = usable_cores()
  if cfg.synthetic and cfg.workers:
    print(f"note: synthetic=true: no data workers (workers={cfg.workers} unused)", flush=True)
    return dataclasses.replace(cfg, workers=0)
  if cfg.workers > cores:
    print(
      f"note: workers={cfg.workers} is more than the {cores} cores this process may use: "
      f"running {cores}",
      flush=True,
    )
    return dataclasses.replace(cfg, workers=cores)
  return cfg
