"""Training checkpoints with orbax's CheckpointManager: the last N plus the best.

A checkpoint holds the model's parameters and BatchNorm statistics, the optimiser
state, the EMA weights when kept, the step, the data iterator's state and the
config. orbax writes each one
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


def score(metrics: dict[str, float]) -> float:
  """What "best" means: eval top-1 of the EMA weights when kept (as timm), else of the model."""
  return metrics.get("ema_top1", metrics["top1"])


def has_checkpoints(workdir: Path) -> bool:
  """Whether ``workdir`` holds a completed checkpoint (orbax names them by their step)."""
  folder = workdir / "checkpoints"
  return folder.is_dir() and any(p.name.isdigit() for p in folder.iterdir())


def manager(workdir: Path, keep: int) -> ocp.CheckpointManager:
  """Asynchronous saves, keeping the ``keep`` latest and the best by ``score``."""
  keep_policy = policies.AnyPreservationPolicy([
      policies.LatestN(keep),
      policies.BestN(get_metric_fn=score, reverse=False, n=1,
                     keep_checkpoints_without_metrics=False),
  ])
  # best_fn too: without it orbax keeps no metrics on disk, and no reader can rank them.
  options = ocp.CheckpointManagerOptions(preservation_policy=keep_policy, best_fn=score,
                                         create=True, enable_async_checkpointing=True)
  return ocp.CheckpointManager(workdir.absolute() / "checkpoints", options=options)


def save(mgr: ocp.CheckpointManager, step: int, states: dict[str, nnx.State], meta: dict,
         metrics: dict | None = None) -> None:
  """Starts an asynchronous save of everything needed to resume at ``step``: the named
  states (model, optimizer, ema) as pure dicts, and ``meta`` as JSON."""
  pure = {name: nnx.to_pure_dict(state) for name, state in states.items()}
  mgr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(pure),
                                         meta=ocp.args.JsonSave(meta)), metrics=metrics)


def read_meta(mgr: ocp.CheckpointManager, step: int) -> dict[str, Any]:
  """The JSON part of checkpoint ``step``: config, data-iterator state, counters."""
  return mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]


def restore(mgr: ocp.CheckpointManager, step: int,
            states: dict[str, nnx.State]) -> dict[str, nnx.State]:
  """Checkpoint ``step``'s values in the form and shardings of the named ``states``."""
  pure = {name: nnx.to_pure_dict(state) for name, state in states.items()}
  target = jax.tree.map(ocp.utils.to_shape_dtype_struct, pure)
  restored = mgr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(target)))["state"]
  for name, state in states.items():
    nnx.replace_by_pure_dict(state, restored[name])
  return states


def reader(workdir: Path) -> ocp.CheckpointManager:
  """A manager that reads the checkpoints of ``workdir`` whatever topology saved them
  (``restore_on_one_device``); ``best_step`` ranks them by ``score``."""
  if not (workdir / "checkpoints").is_dir():
    raise ValueError(f"{workdir} holds no checkpoints/ folder: not a training workdir")
  handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
  return ocp.CheckpointManager(workdir.absolute() / "checkpoints", item_handlers=handlers,
                               options=ocp.CheckpointManagerOptions(best_fn=score))


def restore_on_one_device(mgr: ocp.CheckpointManager, step: int) -> tuple[dict, dict]:
  """(the pure state of every saved object, the meta) of checkpoint ``step``, on one device."""
  stored = mgr.item_metadata(step)["state"]
  one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one), stored)
  out = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                                  meta=ocp.args.JsonRestore()))
  return out["state"], out["meta"]
