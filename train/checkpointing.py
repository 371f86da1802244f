"""Training checkpoints with orbax's CheckpointManager: the last N plus the best.

A checkpoint holds the model's parameters and BatchNorm statistics, the optimiser
state, the step, the data iterator's state and the config. orbax writes each one
to a temporary folder and renames it when complete, so a save killed half-way
leaves the previous checkpoint as the latest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from flax import nnx

policies = ocp.checkpoint_managers


def manager(workdir: Path, keep: int) -> ocp.CheckpointManager:
  """Asynchronous saves, keeping the ``keep`` latest and the best by eval top-1."""
  keep_policy = policies.AnyPreservationPolicy([
      policies.LatestN(keep),
      policies.BestN(get_metric_fn=lambda m: m["top1"], reverse=False, n=1,
                     keep_checkpoints_without_metrics=False),
  ])
  options = ocp.CheckpointManagerOptions(preservation_policy=keep_policy, create=True,
                                         enable_async_checkpointing=True)
  return ocp.CheckpointManager(workdir.absolute() / "checkpoints", options=options)


def training_state(model: nnx.Module, optimizer: nnx.Optimizer) -> dict:
  return {"model": nnx.to_pure_dict(nnx.state(model)),
          "optimizer": nnx.to_pure_dict(nnx.state(optimizer))}


def save(mgr: ocp.CheckpointManager, step: int, model, optimizer, meta: dict,
         metrics: dict | None = None) -> None:
  """Starts an asynchronous save of everything needed to resume at ``step``."""
  mgr.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(training_state(model, optimizer)),
      meta=ocp.args.JsonSave(meta)), metrics=metrics)


def read_meta(mgr: ocp.CheckpointManager, step: int) -> dict[str, Any]:
  return mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]


def restore(mgr: ocp.CheckpointManager, step: int, model, optimizer) -> None:
  """Loads checkpoint ``step`` into ``model`` and ``optimizer``, keeping their shardings."""
  target = jax.tree.map(ocp.utils.to_shape_dtype_struct, training_state(model, optimizer))
  state = mgr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(target)))["state"]
  model_state = nnx.state(model)
  nnx.replace_by_pure_dict(model_state, state["model"])
  nnx.update(model, model_state)
  opt_state = nnx.state(optimizer)
  nnx.replace_by_pure_dict(opt_state, state["optimizer"])
  nnx.update(optimizer, opt_state)
