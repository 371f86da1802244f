"""Writing files so that nothing on disk is ever half-written."""

from __future__ import annotations

import os
from pathlib import Path


def write_atomic(path: Path, data: str | bytes) -> None:
  """Writes ``data`` to a temporary file beside ``path``, then renames it onto ``path``.

  Readers see the old file or the new one, never a part. The temporary name holds
  the process id: processes of one multi-host run that share a folder must never
  rename each other's temporary file. A failed write removes its temporary file
  and leaves ``path`` as it was.
  """
  tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  try:
    if isinstance(data, str):
      tmp.write_text(data)
    else:
      tmp.write_bytes(data)
    tmp.replace(path)
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise
