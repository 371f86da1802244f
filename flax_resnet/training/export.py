"""A training checkpoint exported as a flax-resnet model checkpoint (``export``), the one
``flax-resnet-train-export`` (``flax_resnet.commands.train_export``) writes.

The result is what ``flax-resnet-convert`` writes: ``flax_resnet.load`` rebuilds it
without the training code, ``flax-resnet-predict`` classifies images with the run's eval
preprocessing and class names, and ``flax-resnet-export`` turns it into a torchvision
state dict.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import flax_resnet
from flax_resnet.errors import ArgumentError, literal

if TYPE_CHECKING:
  import orbax.checkpoint as ocp

# JAX, Flax, orbax and grain (2-3 s to import) are imported inside the functions that use
# them: the command's --help and usage errors answer at once.


def pick_step(mgr: ocp.CheckpointManager, which: str | None) -> int:
  """The step ``which`` names: 'best', 'latest' or a saved step number; without one
  (None), the best, or the latest with a note when none was evaluated (a run on
  synthetic images, or one stopped by ``max_steps`` before its first evaluation)."""
  steps = mgr.all_steps()
  if not steps:
    raise ValueError(f"{mgr.directory} holds no checkpoint")
  if which is None:
    if mgr.best_step() is not None:
      return mgr.best_step()
    print(
      f"note: no checkpoint in {mgr.directory} was evaluated, so none is best: exporting "
      f"the latest, step {mgr.latest_step()}",
      file=sys.stderr,
    )
    return mgr.latest_step()
  if which == "latest":
    return mgr.latest_step()
  if which == "best":
    best = mgr.best_step()
    if best is None:  # orbax ranks only the checkpoints saved with eval metrics
      raise ArgumentError(
        f"{literal(str(mgr.directory))}: no checkpoint was evaluated (the run stopped before "
        "its first evaluation, or trained on synthetic images), so none is best; pass "
        "{which} latest or a step number"
      )
    return best
  if not which.isdigit() or int(which) not in steps:
    raise ArgumentError(f"{{which}} {literal(which)}: the checkpoints hold steps {sorted(steps)}")
  return int(which)


def restore(workdir: Path, which: str | None, ema: bool) -> tuple[dict, dict, int]:
  """(the model's or the EMA's pure state on one device, the checkpoint's meta, its step)."""
  from flax_resnet.training import checkpoints

  with checkpoints.reader(workdir) as mgr:
    step = pick_step(mgr, which)
    if ema and "ema" not in mgr.item_metadata(step)["state"]:
      raise ValueError(f"checkpoint {step} in {workdir} holds no EMA weights (ema_decay was 0)")
    state, meta = checkpoints.restore_on_one_device(mgr, step)
  return state["ema" if ema else "model"], meta, step


def export(
  workdir: Path, out: Path, which: str | None = None, ema: bool = False, force: bool = False
) -> Path:
  """Writes checkpoint ``which`` of ``workdir`` as a flax-resnet model checkpoint at ``out``
  (``force``: replacing a checkpoint there, as ``flax_resnet.save``'s ``overwrite``)."""
  from flax import nnx

  from flax_resnet.saved_model import new_metadata
  from flax_resnet.training import data
  from flax_resnet.training.config import Config
  from flax_resnet.training.models import model_spec
  from flax_resnet.training.sources import open_split

  pure, meta, step = restore(workdir, which, ema)
  _check_finite(pure, f"checkpoint {step} of {workdir}")
  cfg = Config.from_json(meta["config"])
  arch, options = model_spec(cfg)
  model = flax_resnet.registry.model_to_fill(arch, options)
  state = nnx.state(model)
  nnx.replace_by_pure_dict(state, pure)
  nnx.update(model, state)
  # The class names the run trained with, as its checkpoints record them; older
  # checkpoints: those of the data, checked against shards' records.
  classes = (meta.get("train_data") or {}).get("classes")
  if (
    classes is None
    and cfg.data_dir
    and not cfg.synthetic
    and (Path(cfg.data_dir) / cfg.train_split).is_dir()
  ):
    classes = list(open_split(cfg.data_dir, cfg.train_split).verified_classes())
  metadata = new_metadata(
    arch=arch,
    options=options,
    categories=classes,
    preprocessing=data.eval_transform(cfg.data).to_json(),
    source={"workdir": str(workdir.absolute()), "step": step, "ema": ema},
  )
  return flax_resnet.save(model, out, metadata, overwrite=force)


def _check_finite(pure: dict, where: str) -> None:
  import jax
  import numpy as np

  for path, value in jax.tree_util.tree_flatten_with_path(pure)[0]:
    if not np.all(np.isfinite(np.asarray(value))):
      name = ".".join(str(getattr(k, "key", k)) for k in path)
      raise ValueError(f"{where} holds NaN or Inf in {name}: not exported")
