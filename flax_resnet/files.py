"""Writing files so that nothing on disk is ever half-written, and hashing them."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from pathlib import Path
from typing import Iterator


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
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    path.rename(old)
  new.rename(path)
  if old is not None:
    shutil.rmtree(old)


def sha256(path: Path) -> str:
  """The file's SHA-256, read in 1 MiB chunks."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()
