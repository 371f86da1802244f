"""Export a training checkpoint as a flax-resnet model checkpoint.

    python train/export.py --workdir runs/c10 --out models/c10 [--step best|latest|N] [--ema]

The result is what ``convert/torch2flax.py`` writes: ``flax_resnet.load`` rebuilds
it without the training code, ``python -m flax_resnet.predict`` classifies images
with the run's eval preprocessing and class names, and ``convert/flax2torch.py``
turns it into a torchvision state dict.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import flax_resnet
from flax_resnet.cli import ArgumentParser, CliError, check_replaceable, report
from flax_resnet.training import config as config_lib

if TYPE_CHECKING:
  import orbax.checkpoint as ocp

# JAX, Flax, orbax and grain (2-3 s to import) are imported inside the functions that use
# them: --help and usage errors answer at once.


def parse_args(argv=None) -> argparse.Namespace:
  p = ArgumentParser(description=__doc__)
  p.add_argument("--workdir", type=Path, required=True, help="a train/train.py --workdir")
  p.add_argument("--out", type=Path, required=True, help="the model checkpoint directory to write")
  p.add_argument("--step", default=None,
                 help="'best' (by eval top-1; an error if none was evaluated), 'latest' or N; "
                      "default: best, or the latest when no checkpoint was evaluated")
  p.add_argument("--ema", action="store_true", help="the EMA weights (run with ema_decay > 0)")
  p.add_argument("--force", action="store_true",
                 help="replace an existing --out that is a flax-resnet checkpoint (or empty)")
  return p.parse_args(argv)


def pick_step(mgr: ocp.CheckpointManager, which: str | None) -> int:
  """The step ``--step`` names: 'best', 'latest' or a saved step number; without one
  (None), the best, or the latest with a note when none was evaluated (a run shorter
  than ``eval_every_epochs`` epochs)."""
  steps = mgr.all_steps()
  if not steps:
    raise ValueError(f"{mgr.directory} holds no checkpoint")
  if which is None:
    if mgr.best_step() is not None:
      return mgr.best_step()
    print(f"note: no checkpoint in {mgr.directory} was evaluated, so none is best: exporting "
          f"the latest, step {mgr.latest_step()}", file=sys.stderr)
    return mgr.latest_step()
  if which == "latest":
    return mgr.latest_step()
  if which == "best":
    best = mgr.best_step()
    if best is None:  # orbax ranks only the checkpoints saved with eval metrics
      raise ValueError(f"{mgr.directory}: no checkpoint was evaluated (a run shorter than "
                       "eval_every_epochs epochs evaluates nothing), so none is best; pass "
                       "--step latest or a step number")
    return best
  if not which.isdigit() or int(which) not in steps:
    raise ValueError(f"--step {which}: the checkpoints hold steps {sorted(steps)}")
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


def export(workdir: Path, out: Path, which: str | None = None, ema: bool = False,
           force: bool = False) -> Path:
  """Writes checkpoint ``which`` of ``workdir`` as a flax-resnet model checkpoint at ``out``."""
  from flax import nnx
  from flax_resnet.saved_model import Metadata
  from flax_resnet.training import data
  from flax_resnet.training.sources import open_split
  from flax_resnet.training.trainer import model_spec
  if out.exists() and not force:
    raise ValueError(f"--out {out} exists; pass --force to replace it")
  check_replaceable(out)  # before the restore: a user's data is never replaced
  pure, meta, step = restore(workdir, which, ema)
  _check_finite(pure, f"checkpoint {step} of {workdir}")
  cfg = config_lib.Config(**{k: tuple(v) if isinstance(v, list) else v
                             for k, v in meta["config"].items()})
  arch, options = model_spec(cfg)
  model = flax_resnet.registry.model_to_fill(arch, options)
  state = nnx.state(model)
  nnx.replace_by_pure_dict(state, pure)
  nnx.update(model, state)
  # The class names the run trained with, as its checkpoints record them; older
  # checkpoints: those of the data, checked against shards' records.
  classes = (meta.get("train_data") or {}).get("classes")
  if classes is None and cfg.data_dir and not cfg.synthetic and (
      Path(cfg.data_dir) / cfg.train_split).is_dir():
    classes = list(open_split(cfg.data_dir, cfg.train_split).verified_classes())
  metadata = Metadata(arch=arch, options=options, categories=classes,
                      preprocessing=data.eval_transform(cfg).to_json(),
                      source={"workdir": str(workdir.absolute()), "step": step, "ema": ema})
  return flax_resnet.save(model, out, metadata, overwrite=force)


def _check_finite(pure: dict, where: str) -> None:
  import jax
  import numpy as np
  for path, value in jax.tree_util.tree_flatten_with_path(pure)[0]:
    if not np.all(np.isfinite(np.asarray(value))):
      name = ".".join(str(getattr(k, "key", k)) for k in path)
      raise ValueError(f"{where} holds NaN or Inf in {name}: not exported")


def main(argv=None) -> int:
  args = parse_args(argv)
  try:
    path = export(args.workdir, args.out, args.step, args.ema, args.force)
  except (ValueError, OSError, CliError) as e:
    return report(e)
  print(json.dumps({"out": str(path), **flax_resnet.saved_model.read_metadata(path).source}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
