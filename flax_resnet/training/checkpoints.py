"""Training checkpoints with orbax's CheckpointManager: the last N plus the best.

A checkpoint holds the model's parameters and BatchNorm statistics, the optimiser
state, the EMA weights when kept, the step, the data iterator's state and the
config. orbax writes each one
to a temporary folder and renames it when complete, so a save killed half-way
leaves the previous checkpoint as the latest. A checkpoint damaged afterwards (a cut or
deleted file, garbled JSON) is skipped on resume for the newest intact one
(``workdir.restore_newest_intact``), and moved aside, never deleted.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import shutil
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from flax import nnx

from flax_resnet.errors import one_line
from flax_resnet.training.metrics import score

policies = ocp.checkpoint_managers


def has_checkpoints(workdir: Path) -> bool:
  """Whether ``workdir`` holds a completed checkpoint (orbax names them by their step)."""
  folder = workdir / "checkpoints"
  return folder.is_dir() and any(p.name.isdigit() for p in folder.iterdir())


class Manager(ocp.CheckpointManager):
  """orbax's manager, remembering the steps it was asked to save: a save fails in orbax's
  background threads and surfaces at the next call, and its message should name it."""

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self.started: list[int] = []


def manager(workdir: Path, keep: int) -> Manager:
  """Asynchronous saves, keeping the ``keep`` latest and the best by ``score``."""
  keep_policy = policies.AnyPreservationPolicy(
    [
      policies.LatestN(keep),
      policies.BestN(
        get_metric_fn=score, reverse=False, n=1, keep_checkpoints_without_metrics=False
      ),
    ]
  )
  # best_fn too: without it orbax keeps no metrics on disk, and no reader can rank them.
  options = ocp.CheckpointManagerOptions(
    preservation_policy=keep_policy, best_fn=score, create=True, enable_async_checkpointing=True
  )
  _quiet_expected_orbax_logs()
  return Manager(workdir.absolute() / "checkpoints", options=options)


def save(
  mgr: Manager, step: int, states: dict[str, nnx.State], meta: dict, metrics: dict | None = None
) -> None:
  """Starts an asynchronous save of everything needed to resume at ``step``: the named
  states (model, optimizer, ema) as pure dicts, and ``meta`` as JSON. A ``SaveFailed``
  where the previous save failed (it surfaces here)."""
  pure = {name: nnx.to_pure_dict(state) for name, state in states.items()}
  with _saves_checked(mgr, step):
    mgr.save(
      step,
      args=ocp.args.Composite(state=ocp.args.StandardSave(pure), meta=ocp.args.JsonSave(meta)),
      metrics=metrics,
    )
  mgr.started.append(step)


def finish(mgr: Manager) -> None:
  """Waits for the saves under way and closes ``mgr``; ``SaveFailed`` where one failed."""
  try:
    with _saves_checked(mgr):
      mgr.wait_until_finished()
  finally:
    mgr.close()


class SaveFailed(OSError):
  """A checkpoint could not be written (a full disk, most often); its temporary folder
  was removed and the earlier checkpoints are intact."""


@contextlib.contextmanager
def _saves_checked(mgr: Manager, starting: int | None = None):
  """Turns the error of a failed save into one ``SaveFailed`` naming its step: the save
  in flight (orbax runs one at a time) or the one ``starting``."""
  try:
    yield
  except Exception as e:  # tensorstore's ValueError, OSError, orbax's own types
    folder = Path(mgr.directory)
    failed = [
      step
      for step in [*mgr.started[-1:], starting]
      if step is not None and not (folder / str(step)).is_dir()
    ]
    if not failed:
      raise
    removed = _remove_temporaries(folder, failed)
    intact = [int(p.name) for p in folder.iterdir() if p.name.isdigit()]
    raise SaveFailed(
      f"saving checkpoint step {failed[0]} in {mgr.directory} failed: {_save_error(e)}; "
      f"{'removed its temporary folder; ' if removed else ''}"
      + (
        f"the checkpoints before it are intact: free space and run the same command to "
        f"resume from step {max(intact)}"
        if intact
        else "no checkpoint was saved"
      )
    ) from e


def causes(error: BaseException | None):
  """``error``, then each error it was raised from or during, in turn."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    yield error
    error = error.__cause__ or error.__context__


def _save_error(error: BaseException) -> str:
  for cause in causes(error):
    if (
      getattr(cause, "errno", None) == errno.ENOSPC
      or "No space left on device" in str(cause)
      or "os_error_code='28'" in str(cause)
    ):
      return "no space left on device"
  return f"{type(error).__name__}: {one_line(error)[:300]}"


def _remove_temporaries(folder: Path, steps: list[int]) -> bool:
  """Removes the temporary folders of our own failed saves of ``steps`` (orbax names them
  ``STEP.orbax-checkpoint-tmp*``); only process 0, as orbax itself writes them."""
  if jax.process_index() != 0:
    return False
  found = [p for step in steps for p in folder.glob(f"{step}.orbax-checkpoint-tmp*")]
  for path in found:
    shutil.rmtree(path, ignore_errors=True)
  return bool(found)


# What orbax's background save threads log, each with a traceback, before the same error
# reaches the main thread, where it is reported in one line (``SaveFailed``).
_SAVE_THREAD_ERRORS = ("raised an exception", "background save thread", "Save Finalize thread")
# orbax's warning on every save without metrics of a manager with ``best_fn``: ours carry
# eval metrics at the epochs that evaluate and none in between (nor in runs stopped before
# their first evaluation), and orbax then ranks only the evaluated ones, which is what
# "best" means here.
_SAVE_WITHOUT_METRICS = "Requested `tracked_metric`; did not provide metrics."


def _quiet_expected_orbax_logs() -> None:
  """Installs ``_not_expected_from_orbax`` on absl's logger (orbax logs through it), once."""
  absl = logging.getLogger("absl")
  if not any(f is _not_expected_from_orbax for f in absl.filters):
    absl.addFilter(_not_expected_from_orbax)


def _not_expected_from_orbax(record: logging.LogRecord) -> bool:
  """False for the two kinds of orbax log above; every other absl message passes."""
  message = record.getMessage()
  if message == _SAVE_WITHOUT_METRICS:
    return False
  return not (
    record.levelno >= logging.ERROR
    and "orbax" in record.pathname
    and any(s in message for s in _SAVE_THREAD_ERRORS)
  )


def read_meta(mgr: ocp.CheckpointManager, step: int) -> dict[str, Any]:
  """The JSON part of checkpoint ``step``: config, data-iterator state, counters."""
  return mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]


def restore(
  mgr: ocp.CheckpointManager, step: int, states: dict[str, nnx.State]
) -> dict[str, nnx.State]:
  """Checkpoint ``step``'s values in the form and shardings of the named ``states``."""
  pure = {name: nnx.to_pure_dict(state) for name, state in states.items()}
  target = jax.tree.map(ocp.utils.to_shape_dtype_struct, pure)
  restored = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))[
    "state"
  ]
  for name, state in states.items():
    nnx.replace_by_pure_dict(state, restored[name])
  return states


def reader(workdir: Path) -> ocp.CheckpointManager:
  """A manager that reads the checkpoints of ``workdir`` whatever topology saved them
  (``restore_on_one_device``); ``best_step`` ranks them by ``score``."""
  if not (workdir / "checkpoints").is_dir():
    raise ValueError(f"{workdir} holds no checkpoints/ folder: not a training workdir")
  handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
  return ocp.CheckpointManager(
    workdir.absolute() / "checkpoints",
    item_handlers=handlers,
    options=ocp.CheckpointManagerOptions(best_fn=score),
  )


def restore_on_one_device(mgr: ocp.CheckpointManager, step: int) -> tuple[dict, dict]:
  """(the pure state of every saved object, the meta) of checkpoint ``step``, on one device."""
  stored = mgr.item_metadata(step)["state"]
  one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one), stored)
  out = mgr.restore(
    step,
    args=ocp.args.Composite(state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()),
  )
  return out["state"], out["meta"]


META_KEYS = ("config", "data_state", "skipped", "best_top1")  # what a resume reads
