"""Writing files so that nothing on disk is ever half-written, and hashing them."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

# Directories that ``temp_dir_beside`` and ``replace_dir`` make carry this mark, the host
# and the process id in their names, so that a later run can tell when their writer is
# dead (killed mid-write) and remove them, and never touch anything else.
_TEMP_MARK = "flax-resnet-tmp"
_TEMP_NAME = re.compile(
  rf"^\.(?P<target>.+)\.{_TEMP_MARK}\.(?P<host>[A-Za-z0-9_-]+)\."
  r"(?P<pid>\d+)\.(?P<kind>[A-Za-z0-9_]+)$"
)


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
  """A temporary path beside ``path`` to write to; renamed onto ``path`` when the block ends.

  Readers see the old file or the new one, never a part. The temporary name holds
  the process id: processes of one multi-host run that share a folder must never
  rename each other's temporary file. If the block fails, the temporary file is
  removed and ``path`` is left as it was.
  """
  tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  try:
    yield tmp
    os.replace(tmp, path)
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise


def write_atomic(path: Path, data: str | bytes) -> None:
  """Writes ``data`` to ``path`` through ``atomic_path``."""
  with atomic_path(path) as tmp:
    if isinstance(data, str):
      tmp.write_text(data)
    else:
      tmp.write_bytes(data)


def replace_dir(new: Path, path: Path) -> None:
  """Renames the complete directory ``new`` onto ``path``, removing the one it replaces.

  The old directory is moved aside first (a directory cannot be renamed over a
  non-empty one), so ``path`` is missing only between two renames.
  """
  old = None
  if path.exists():
    old = path.with_name(f"{_temp_prefix(path)}old")
    path.rename(old)
  new.rename(path)
  if old is not None:
    shutil.rmtree(old)


def _host() -> str:
  return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"


def _temp_prefix(path: Path) -> str:
  return f".{path.name}.{_TEMP_MARK}.{_host()}.{os.getpid()}."


def temp_dir_beside(path: Path) -> Path:
  """A new empty directory beside ``path`` to build its replacement in (then
  ``replace_dir``); its name lets ``remove_stale_temp_dirs`` clean it if this process dies."""
  return Path(tempfile.mkdtemp(prefix=_temp_prefix(path), dir=path.parent))


def remove_stale_temp_dirs(parent: Path) -> list[Path]:
  """Removes, and returns, the directories in ``parent`` that ``temp_dir_beside`` and
  ``replace_dir`` made for processes of this host that are no longer running.

  Those of live processes, of other hosts (a shared file system) and every other name
  are kept. A replaced directory (``...old``) is removed only once the directory that
  replaced it exists: a process killed between ``replace_dir``'s two renames leaves the
  previous one there, to be recovered by hand.
  """
  removed: list[Path] = []
  try:
    entries = list(parent.iterdir())
  except OSError:
    return removed
  host = _host()
  for entry in entries:
    match = _TEMP_NAME.match(entry.name)
    if (
      match is None
      or match["host"] != host
      or _alive(int(match["pid"]))
      or entry.is_symlink()
      or not entry.is_dir()
    ):
      continue
    if match["kind"] == "old" and not (parent / match["target"]).exists():
      continue
    shutil.rmtree(entry, ignore_errors=True)
    removed.append(entry)
  return removed


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except (PermissionError, OverflowError):  # another user's process; a name not ours: keep
    return True
  return True


def umask() -> int:
  """The process's umask, read without changing it where Linux shows it."""
  try:
    for line in Path("/proc/self/status").read_text().splitlines():
      if line.startswith("Umask:"):
        return int(line.split()[1], 8)
  except (OSError, ValueError, IndexError):
    pass
  mask = os.umask(0o022)  # elsewhere only setting it reads it: set it back at once
  os.umask(mask)
  return mask


def chmod_as_new_file(path: Path) -> None:
  """Gives ``path`` the mode a file created with ``open`` gets (0666 less the umask), for
  writers that create theirs private (safetensors' 0600)."""
  os.chmod(path, 0o666 & ~umask())


def sha256(path: Path) -> str:
  """The file's SHA-256, read in 1 MiB chunks."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()
