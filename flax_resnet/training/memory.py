"""The host memory a CPU run needs, estimated from its config and model before it starts."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from flax_resnet.training.config import Config

# Calibration of ``host_memory_estimate``: on a CPU, the finetune preset (ResNet-50 at 224,
# batch 64, 8 workers) was measured at 11-12 GB; the estimate below gives 11.3.
_BYTES_SAVED_PER_ACTIVATION = 12  # float32 convolution output, BatchNorm output, ReLU output
_WORKER_BYTES = 210 * 2**20  # a grain worker process's own memory (measured: 210 MB)
_RUNTIME_BYTES = 2**30  # Python, JAX, XLA:CPU and its compiled step in the main process
_STATE_COPIES = 5  # weights, gradients, momentum, and the two the update holds at once


def host_memory_estimate(
  cfg: Config, graphdef: nnx.GraphDef, state: nnx.State, processes: int = 1
) -> dict[str, float]:
  """Bytes of host memory a CPU run of this process needs, by part: what the train step
  keeps for its backward pass (from the model's convolution and matmul outputs, read off
  its trace), the weights and optimiser state, the worker processes with their read-ahead,
  and the runtime. An estimate, calibrated on the finetune preset (above)."""
  local_batch = cfg.global_batch // processes
  weights = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state)) * 4
  batch_bytes = local_batch * cfg.image_size**2 * 3
  per_image = _activation_count(graphdef, state, cfg.global_batch, cfg.image_size)
  micro_batch = local_batch // cfg.accumulate_steps  # what the backward pass keeps at once
  parts = {
    "activations": per_image * micro_batch * _BYTES_SAVED_PER_ACTIVATION,
    "weights and optimiser": weights * (_STATE_COPIES + bool(cfg.ema_decay)),
    "workers": cfg.workers * (_WORKER_BYTES + (cfg.prefetch + 1) * batch_bytes),
    "runtime": _RUNTIME_BYTES + (cfg.prefetch + 1) * batch_bytes,
  }
  return {k: float(v) for k, v in parts.items()}


def _activation_count(
  graphdef: nnx.GraphDef, state: nnx.State, batch: int, image_size: int
) -> float:
  """Elements that the convolutions and matrix products of the forward pass output, per
  image. Traced at the run's global batch, which per-device BatchNorm groups divide."""

  def forward(state, x):
    return nnx.merge(graphdef, state)(x)

  images = jax.ShapeDtypeStruct((batch, image_size, image_size, 3), jnp.float32)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
  return _outputs(jax.make_jaxpr(forward)(abstract, images).jaxpr) / batch


def _outputs(jaxpr) -> int:
  from jax.extend import core

  total = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name in ("conv_general_dilated", "dot_general"):
      total += int(np.prod(eqn.outvars[0].aval.shape))
    for sub in jax.tree.leaves(
      list(eqn.params.values()), is_leaf=lambda x: isinstance(x, (core.Jaxpr, core.ClosedJaxpr))
    ):
      if isinstance(sub, (core.Jaxpr, core.ClosedJaxpr)):
        total += _outputs(getattr(sub, "jaxpr", sub))
  return total


def of_total() -> str:
  """``" of this machine's N GB"``, for a message; empty where the system does not say."""
  try:
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
  except (ValueError, OSError):  # not every system names them
    return ""
  return f" of this machine's {total / 2**30:.0f} GB"
