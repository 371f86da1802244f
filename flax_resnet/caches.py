"""Where our caches live, and XLA's persistent compilation cache for the commands."""

from __future__ import annotations

import os
from pathlib import Path

import jax


def cache_dir(name: str) -> Path:
  """``~/.cache/flax_resnet/NAME`` (under $XDG_CACHE_HOME when it is set): every cache of ours."""
  return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "flax_resnet" / name


def enable_compilation_cache() -> Path:
  """Caches every compiled program in ``~/.cache/flax_resnet/xla`` (or $XDG_CACHE_HOME).

  A directory already chosen through ``JAX_COMPILATION_CACHE_DIR`` is kept. Returns
  the directory in use.
  """
  # config.values, not the attribute: jax 0.10 declares no type for the attribute, 0.12 does.
  chosen = jax.config.values["jax_compilation_cache_dir"]
  if not chosen:
    chosen = str(cache_dir("xla"))
    jax.config.update("jax_compilation_cache_dir", chosen)
  # Every program, however small: eager init compiles one per conv shape (57 for
  # ResNet-50, 6 s on a 2-core CPU), which otherwise falls under the 1 s default.
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  return Path(chosen)
