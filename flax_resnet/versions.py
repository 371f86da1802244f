"""The versions of everything that produced a file or a figure, recorded beside it."""

from __future__ import annotations

import platform
import sys
from importlib import metadata

# flax_resnet's own version, here in the lowest layer so that versions() needs no import of
# the package above it (flax_resnet.__version__ is this; pyproject.toml's version equals it).
VERSION = "0.1.0"
# distribution name: module name
_PACKAGES = {
  "jax": "jax",
  "jaxlib": "jaxlib",
  "flax": "flax",
  "optax": "optax",
  "orbax-checkpoint": "orbax.checkpoint",
  "torch": "torch",
  "torchvision": "torchvision",
  "timm": "timm",
}


def versions() -> dict[str, str]:
  """Python's, flax_resnet's and each installed package's version, torch's, torchvision's and timm's
  when they are installed. Nothing is imported: a module already imported gives its own
  ``__version__`` (torch's carries its build, ``+cu130``), the others the installed metadata."""
  out = {"python": platform.python_version(), "flax_resnet": VERSION}
  for dist, module in _PACKAGES.items():
    version = getattr(sys.modules.get(module), "__version__", None)
    try:
      out[dist] = version or metadata.version(dist)
    except metadata.PackageNotFoundError:
      pass
  return out
