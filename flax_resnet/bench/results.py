"""What every benchmark writes: JSON lines with the versions they ran under."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

# The real images the benchmarks read: $FLAX_RESNET_DATA, or ../shared/data beside the checkout.
DATA = Path(os.environ.get("FLAX_RESNET_DATA", Path(__file__).resolve().parents[3] / "shared"
                           / "data"))


def versions() -> dict[str, str]:
  """jax, flax, flax_resnet and Python versions, and torch's and torchvision's if installed."""
  import flax
  import jax

  import flax_resnet
  out = {"jax": jax.__version__, "flax": flax.__version__, "flax_resnet": flax_resnet.__version__,
         "python": platform.python_version()}
  try:
    import torch
    import torchvision
    out.update(torch=torch.__version__, torchvision=torchvision.__version__)
  except ImportError:
    pass
  return out


def emit(rows: list[dict], out: Path | None, echo: bool = True) -> None:
  """Prints the rows as JSON lines and appends them to ``out`` when given."""
  lines = "".join(json.dumps(row) + "\n" for row in rows)
  if echo:
    print(lines, end="", flush=True)
  if out:
    with open(out, "a") as f:
      f.write(lines)
