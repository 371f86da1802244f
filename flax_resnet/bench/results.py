"""What every benchmark writes: JSON lines with the versions they ran under."""

from __future__ import annotations

import json
import os
from pathlib import Path


# The real images the benchmarks read: $FLAX_RESNET_DATA, or ../shared/data beside the checkout.
DATA = Path(os.environ.get("FLAX_RESNET_DATA", Path(__file__).resolve().parents[3] / "shared"
                           / "data"))


def emit(rows: list[dict], out: Path | None, echo: bool = True) -> None:
  """Prints the rows as JSON lines and appends them to ``out`` when given."""
  lines = "".join(json.dumps(row) + "\n" for row in rows)
  if echo:
    print(lines, end="", flush=True)
  if out:
    with open(out, "a") as f:
      f.write(lines)
