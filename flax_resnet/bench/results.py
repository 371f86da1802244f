"""What every benchmark writes: JSON lines with the versions they ran under."""

from __future__ import annotations

import json
import os
from pathlib import Path

DATA_ENV = "FLAX_RESNET_DATA"


def data_root() -> Path:
  """The real images the benchmarks read when no flag names them: ``$FLAX_RESNET_DATA``, else
  ``../shared/data`` from the current directory (beside the checkout, run from its root).

  Never a path relative to this file: installed from a wheel, it lies in site-packages.
  """
  return Path(os.environ.get(DATA_ENV) or Path("..") / "shared" / "data").resolve()


def emit(rows: list[dict], out: Path | None, echo: bool = True) -> None:
  """Prints the rows as JSON lines and appends them to ``out`` when given."""
  lines = "".join(json.dumps(row) + "\n" for row in rows)
  if echo:
    print(lines, end="", flush=True)
  if out:
    with open(out, "a") as f:
      f.write(lines)
