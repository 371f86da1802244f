"""A run's workdir: the lock that keeps a second run out, the resume rule (what a run may
change from the one it continues), and damaged checkpoints, skipped on resume for the newest
intact one and moved aside, never deleted.

Errors name the run's ``workdir`` argument as an ``ArgumentError``: a command says its flag.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO

import jax
import orbax.checkpoint as ocp
from flax import nnx

from flax_resnet.errors import ArgumentError, literal, one_line, quiet_aborted_reads
from flax_resnet.training import checkpoints, config as config_lib, data
from flax_resnet.training.checkpoints import META_KEYS, causes, read_meta, restore
from flax_resnet.training.config import Config

DAMAGED = "checkpoints.damaged"  # beside checkpoints/: where damaged ones are moved


def warn(line: str) -> None:
  """One warning line on stderr."""
  print(line, file=sys.stderr, flush=True)


def lock_workdir(workdir: Path) -> IO:
  """An exclusive lock on ``workdir`` for this process, held while the returned file is
  open; ``ArgumentError`` naming the holder when another run has it: two runs in one
  workdir overwrite each other's checkpoints (orbax's temporary folders vanish).

  Each process of a run locks a file of its own (``.lock.process_N``): the processes of
  one multi-host run share the workdir, and process N of a second run is refused.
  """
  path = workdir / f".lock.process_{jax.process_index()}"
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
    os.close(fd)
    raise ArgumentError(
      f"{{workdir}} {literal(str(workdir))} is in use by another train.py "
      f"({literal(holder)}, holding {literal(str(path))}): wait for it to end, or use "
      "another {workdir}"
    ) from None
  except OSError as e:  # a file system without locks (some FUSE mounts): run, but say so
    warn(
      f"warning: cannot lock {path} ({e.strerror or e}): make sure no other run uses "
      f"workdir {workdir}"
    )
  return os.fdopen(fd, "w")


def record_holder(lock: IO) -> None:
  """Writes this process's pid and host into its lock file, for a second run's message.
  Only once the run has passed its checks: a refused run leaves the workdir as it was."""
  lock.truncate(0)
  lock.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
  lock.flush()


def changed_on_resume(cfg: Config, workdir: Path) -> list[str]:
  """The changes from the run already in ``workdir`` (none for a new run), by
  ``config.resume_changes`` over the ``config.json`` that every run there wrote: its
  ``ValueError`` refuses a change that would make the resumed run compute something else.
  """
  if not checkpoints.has_checkpoints(workdir):
    return []
  saved_file = workdir / "config.json"
  try:
    saved = json.loads(saved_file.read_text())
  except FileNotFoundError:
    raise ArgumentError(
      f"{{workdir}} {literal(str(workdir))} holds checkpoints but no config.json: cannot "
      "check the resumed settings; put it back, or use another {workdir}"
    ) from None
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{saved_file} is corrupt ({e}): cannot check the resumed settings") from e
  return config_lib.resume_changes(saved, cfg, workdir)


def check_resumable(cfg: Config, workdir: Path, fingerprint: dict | None, meta: dict) -> None:
  """Raises ``ValueError`` for a checkpoint (its ``meta``) of other training images than
  ``fingerprint`` (``ImageSource.fingerprint``; None for synthetic images) or, with repeated
  augmentation, of another device count (the settings were compared before:
  ``changed_on_resume``)."""
  saved = meta.get("devices")
  if cfg.ra_reps > 1 and saved is not None and saved != jax.device_count():
    raise ArgumentError(
      f"{{workdir}} {literal(str(workdir))} holds a run of ra_reps={cfg.ra_reps} on {saved} "
      f"devices, and this run has {jax.device_count()}: repeated augmentation's order "
      "follows the device count; resume on as many devices, or use another {workdir}"
    )
  if fingerprint is not None:
    data.check_same_images(meta.get("train_data"), fingerprint, f"data_dir {cfg.data_dir}")


class Damaged(Exception):
  """A checkpoint that does not read back whole; the message names its step and file."""

  def __init__(self, step: int, folder: Path, error: BaseException):
    self.step = step
    super().__init__(f"checkpoint step {step} is damaged: {_where(folder, error)}")


def _where(folder: Path, error: BaseException) -> str:
  """The damaged file of checkpoint ``folder`` and what is wrong with it, in one line:
  orbax's own errors name no file (a JSON error) or bury it in a tensorstore spec."""
  for name in ("meta/metadata", "state/_METADATA"):
    file = folder / name
    if not file.is_file():
      return f"{file} is missing"
    try:
      json.loads(file.read_bytes())
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError alike
      return f"{file} is not valid JSON ({e})"
  if not (folder / "state" / "manifest.ocdbt").is_file():
    return f"{folder / 'state' / 'manifest.ocdbt'} is missing"
  for cause in causes(error):  # orbax wraps tensorstore's error, which names the array
    message = one_line(cause)
    array = re.search(r'(?:Error reading|Metadata at) "([^"/]+)', message)
    if array:  # the array, then a tensorstore spec of hundreds of characters
      reason = message.split(" [tensorstore_spec")[0].split(" in OCDBT database")[0][:200]
      return f"{folder / 'state'}: array {array.group(1)} cannot be read ({reason})"
  return f"{folder}: {type(error).__name__}: {one_line(error)[:200]}"


def load_intact(
  mgr: ocp.CheckpointManager,
  step: int,
  states: dict[str, nnx.State],
  check_meta: Callable[[dict], None],
) -> tuple[dict, dict[str, nnx.State]]:
  """(meta, restored states) of checkpoint ``step``; ``Damaged`` where a file is missing,
  cut or garbled. ``check_meta`` raises for a checkpoint of another run (its error
  passes through: that checkpoint is sound, only not this run's)."""
  folder = Path(mgr.directory) / str(step)
  try:
    meta = read_meta(mgr, step)
    missing = [
      k
      for k in META_KEYS
      if not isinstance(meta, dict)
      or k not in meta
      or (k == "config" and not isinstance(meta[k], dict))
    ]
  except Exception as e:  # orbax and tensorstore raise many types for damaged files
    raise Damaged(step, folder, e) from e
  if missing:
    raise Damaged(step, folder, ValueError(f"{folder / 'meta/metadata'} lacks {missing}"))
  check_meta(meta)
  try:
    return meta, restore(mgr, step, states)
  except Exception as e:
    raise Damaged(step, folder, e) from e


def restore_newest_intact(
  mgr: ocp.CheckpointManager,
  states: dict[str, nnx.State],
  check_meta: Callable[[dict], None],
  warn: Callable[[str], None],
) -> tuple[int, dict, dict] | None:
  """(step, meta, restored states) of the newest checkpoint that reads back whole, or None
  where there is none at all.

  Each newer damaged one is moved to ``checkpoints.damaged/`` beside (left for the user,
  and out of the way of the steps the run saves again), with one ``warn`` line naming
  its step, file and the step resumed from. Raises ``ValueError`` naming every damaged
  one, moving nothing, when none is intact.
  """
  damaged = []
  quiet_aborted_reads()  # before any restore: a failing one's reads print while it fails
  for step in sorted(mgr.all_steps(), reverse=True):
    try:
      meta, restored = load_intact(mgr, step, states, check_meta)
    except Damaged as e:
      damaged.append(e)
      continue
    for failed in damaged:
      aside = _set_aside(Path(mgr.directory), failed.step)
      warn(
        f"warning: {failed}; skipped it, moved it to {aside} for you to inspect or delete, "
        f"and resumed from step {step}"
      )
    if damaged:
      mgr.reload()  # the steps on disk changed
    return step, meta, restored
  if damaged:
    raise ValueError(
      f"every checkpoint in {mgr.directory} is damaged: "
      + "; ".join(map(str, damaged))
      + ". Nothing was changed: move the checkpoints/ folder away to "
      "start afresh"
    )
  return None


def _set_aside(folder: Path, step: int) -> Path:
  """Moves checkpoint ``step`` to ``DAMAGED/<step>`` (``<step>.1``, ... if taken); only
  process 0 moves, the others wait for it: the processes of a run share the folder."""
  target = folder.parent / DAMAGED / str(step)
  if jax.process_index() == 0:
    target.parent.mkdir(exist_ok=True)
    n = 0
    while target.exists():
      n += 1
      target = folder.parent / DAMAGED / f"{step}.{n}"
    (folder / str(step)).rename(target)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(f"flax_resnet:set aside {step}")
  return target
