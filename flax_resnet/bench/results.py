"""What every benchmark writes: JSON lines, each stamped with the versions it ran under, the
command that ran it and the date (``stamp``)."""

from __future__ import annotations

import datetime
import json
import os
import sys
from pathlib import Path
from typing import Any

from flax_resnet.versions import versions

DATA_ENV = "FLAX_RESNET_DATA"


def data_root() -> Path:
  """The real images the benchmarks read when no flag names them: ``$FLAX_RESNET_DATA``, else
  ``../shared/data`` from the current directory (beside the checkout, run from its root).

  Never a path relative to this file: installed from a wheel, it lies in site-packages.
  """
  return Path(os.environ.get(DATA_ENV) or Path("..") / "shared" / "data").resolve()


def stamp() -> dict[str, Any]:
  """How a row was made: ``versions()`` (taken now, so a module imported since gives its own
  version, torch's with its build), the command line (the program by its name, not its
  path) and today's date."""
  return {
    "versions": versions(),
    "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    "date": datetime.date.today().isoformat(),
  }


def emit(rows: list[dict], out: Path | None, echo: bool = True) -> None:
  """Prints the rows as JSON lines, each with the ``stamp`` after its own keys, and appends
  them to ``out`` when given."""
  made = stamp()
  lines = "".join(json.dumps({**row, **made}) + "\n" for row in rows)
  if echo:
    print(lines, end="", flush=True)
  if out:
    with open(out, "a") as f:
      f.write(lines)
