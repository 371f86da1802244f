"""What a run's grain worker processes leave in shared memory (``/dev/shm``) when the run is
killed, named after the run so that the next run finds it and removes it.

Grain's workers hand each batch's arrays to the trainer in ``multiprocessing.shared_memory``
segments, which the trainer unlinks once it has read them, and its queues synchronise through
named semaphores (``sem.*``). A run killed with SIGKILL together with its workers and
multiprocessing's resource tracker (``kill -9 -PGID``, the OOM killer, a pre-empted container)
unlinks none of them: the batches in flight stay in RAM until reboot, gigabytes at ImageNet's
batch sizes. So a run with workers names its segments ``flax_resnet-<tag>-<random>`` and its
semaphores ``sem.flax_resnet-<tag>-mp-<random>``, and holds a lock on ``flax_resnet-<tag>.lock``
beside them while it lives: the kernel drops the lock when the process dies, however it dies
(a normal exit removes the lock file).
``remove_dead`` removes the files of each tag whose lock nobody holds (or whose lock file is
gone); nothing else in the folder is read or touched.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import secrets
from collections.abc import Iterator
from multiprocessing import process, shared_memory, util
from pathlib import Path

log = logging.getLogger(__name__)

SHM = Path("/dev/shm")
PREFIX = "flax_resnet-"
_LOCK = re.compile(rf"{PREFIX}([0-9a-f]{{8}})\.lock")
# A segment's name (``segment_name``) or a semaphore's (``claim``'s semprefix, then
# multiprocessing's 8 random characters): anything else is not ours.
_FILE = re.compile(rf"(?:sem\.)?{PREFIX}([0-9a-f]{{8}})-(?:[0-9a-f]{{16}}|mp-[a-z0-9_]{{8}})")

_claimed: dict[Path, tuple[str, int]] = {}  # folder -> (this process's tag, its lock's fd)


def claim(folder: Path = SHM) -> str | None:
  """This process's tag, the same at every call: the first call removes what dead runs left
  in ``folder`` (``remove_dead``), takes the tag's lock for as long as the process lives, and
  names the semaphores multiprocessing makes from then on after it. None where ``folder`` is
  not a directory (not Linux): names stay the standard library's."""
  if folder in _claimed:
    return _claimed[folder][0]
  if not folder.is_dir():
    return None
  remove_dead(folder)
  tag, fd = _new_lock(folder)
  _claimed[folder] = (tag, fd)
  # At a normal exit, after grain's iterators have stopped their workers and unlinked what
  # they held (their finalizers' priority is 1) and the semaphores have been unlinked.
  util.Finalize(None, _release, args=(folder,), exitpriority=0)
  # multiprocessing names a semaphore "<semprefix>-<random>" (synchronize.SemLock._make_name);
  # grain makes its queues' semaphores in this process, before it starts the workers.
  process.current_process()._config["semprefix"] = f"/{PREFIX}{tag}-mp"  # type: ignore[attr-defined]
  return tag


def _release(folder: Path) -> None:
  """Removes this process's lock file: from now on its tag's files, were there any, are a
  dead run's."""
  tag, fd = _claimed.pop(folder)
  with contextlib.suppress(OSError):
    os.unlink(folder / f"{PREFIX}{tag}.lock")
  os.close(fd)


def _new_lock(folder: Path) -> tuple[str, int]:
  """A fresh tag and the fd of its lock file, created and locked here; a ``remove_dead`` in
  another process that locked it between the two (and so may have removed it) costs a retry."""
  while True:
    tag = secrets.token_hex(4)
    path = folder / f"{PREFIX}{tag}.lock"
    try:
      fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
      continue
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      if os.stat(path).st_ino == os.fstat(fd).st_ino:  # not removed before we locked it
        return tag, fd
    except (BlockingIOError, FileNotFoundError):
      pass
    os.close(fd)


def segment_name(tag: str) -> str:
  """A new shared memory segment's name (``/`` and the file name) for the run of ``tag``."""
  return f"/{PREFIX}{tag}-{secrets.token_hex(8)}"


def name_segments(tag: str) -> None:
  """Names the shared memory segments this process creates after the run of ``tag``: run in
  each grain worker (``data.WorkerSetup``), the process that creates its batches' segments."""
  # SharedMemory(create=True) takes its name from this module function; grain passes none.
  shared_memory._make_filename = lambda: segment_name(tag)  # type: ignore[attr-defined]


def remove_dead(folder: Path = SHM) -> int:
  """Removes from ``folder`` the segments, semaphores and lock files of runs that are gone:
  those of each tag whose lock no process holds, or whose lock file is gone. Answers how many
  files; logs them, with their size. Files that are not ours, and those of live runs (this
  one's among them), stay."""
  if not folder.is_dir():  # not Linux: no /dev/shm, and claim() names nothing
    return 0
  own = _claimed.get(folder, ("", -1))[0]
  files: dict[str, list[Path]] = {}
  for entry in os.scandir(folder):
    match = _FILE.fullmatch(entry.name) or _LOCK.fullmatch(entry.name)
    if match and match[1] != own and entry.is_file(follow_symlinks=False):
      files.setdefault(match[1], []).append(Path(entry.path))
  removed, size = 0, 0
  for tag, paths in files.items():
    lock = folder / f"{PREFIX}{tag}.lock"
    with _if_dead(lock) as dead:
      for path in sorted(paths, key=lambda p: p == lock) if dead else []:  # the lock last
        try:
          size += path.stat().st_size
          path.unlink()
          removed += 1
        except OSError:  # removed meanwhile by another run, or another user's
          continue
  if removed:
    log.warning(
      "removed %d file%s (%.1f MB) that killed runs' workers left in %s",
      removed,
      "" if removed == 1 else "s",
      size / 2**20,
      folder,
    )
  return removed


@contextlib.contextmanager
def _if_dead(lock: Path) -> Iterator[bool]:
  """Whether the run of lock file ``lock`` is gone: nobody holds the lock, or the file is gone
  (a run makes it before anything else it names). Holds the lock meanwhile: a run that
  created the file but has not locked it yet fails to, and tries another tag (``_new_lock``)."""
  try:
    fd = os.open(lock, os.O_RDWR)
  except FileNotFoundError:
    yield True
    return
  except OSError:  # another user's: not ours to judge
    yield False
    return
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    locked = True
  except BlockingIOError:
    locked = False
  try:
    yield locked
  finally:
    os.close(fd)
