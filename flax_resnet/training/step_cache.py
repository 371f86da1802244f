"""The traced train step kept on disk, so that a warm start neither traces nor lowers it.

XLA's persistent cache finds a compiled program by its lowered module, so every
start still traces and lowers the step first: 1.5-2 s of a ResNet-50's 7-8 s warm
start on a 2-core CPU. This cache keeps the step as ``jax.export`` writes it (the
lowered StableHLO), found by what the traced program is made of: the run's config
and step counts, the devices, JAX's flags and JAX/XLA environment variables. It
also records the size and modification time of every Python module loaded when
the step was traced (the test Python applies to its .pyc files), all of which must
still match when it is loaded; any difference, and anything unreadable, traces
afresh. Loading and compiling (from XLA's cache) run in a thread, beside model
construction.

Executables are not kept here: ``jax.experimental.serialize_executable`` of one
that XLA's cache loaded gives a file that fails when run ("Function ... not
found"; jax 0.10 and 0.12 on CPU).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jax
from jax.sharding import Mesh

from flax_resnet.caches import cache_dir
from flax_resnet.files import write_atomic

FORMAT = 1
log = logging.getLogger(__name__)


def default_folder() -> Path:
  """``~/.cache/flax_resnet/steps`` (or under $XDG_CACHE_HOME), beside the XLA cache."""
  return cache_dir("steps")


def run_key(**parts: Any) -> dict:
  """``parts`` (JSON-able: config, step counts) plus the devices, JAX's flags and environment."""
  devices = [(d.platform, d.device_kind, d.id, d.process_index) for d in jax.devices()]
  env = {k: v for k, v in os.environ.items() if k.startswith(("JAX_", "XLA_"))}
  config = {k: repr(v) for k, v in jax.config.values.items()}
  return {
    "format": FORMAT,
    "parts": parts,
    "devices": devices,
    "env": env,
    "jax": config,
    "python": sys.version,
  }


def loaded_modules() -> list[tuple[str, int, int]]:
  """(path, size, mtime in ns) of every loaded module's source file."""
  files = set()
  for module in list(sys.modules.values()):
    path = getattr(module, "__file__", None)
    if isinstance(path, str) and os.path.isfile(path):
      stat = os.stat(path)
      files.add((path, stat.st_size, stat.st_mtime_ns))
  return sorted(files)


def _unchanged(files: list) -> bool:
  for path, size, mtime in files:
    try:
      stat = os.stat(path)
    except OSError:
      return False
    if (stat.st_size, stat.st_mtime_ns) != (size, mtime):
      return False
  return True


def fits(compiled: jax.stages.Compiled, args: tuple) -> bool:
  """Whether ``compiled`` takes ``args``: the same trees, shapes, dtypes and shardings."""
  # jaxlib's PyTreeDef carries no type information that mypy reads.
  if compiled.in_tree != jax.tree.structure((args, {})):  # type: ignore[operator]
    return False
  infos = jax.tree.leaves(compiled.args_info)
  shardings = jax.tree.leaves(compiled.input_shardings)
  return all(
    i.shape == x.shape and i.dtype == x.dtype and s.is_equivalent_to(x.sharding, x.ndim)
    for i, s, x in zip(infos, shardings, jax.tree.leaves(args))
  )


def compile_exported(
  exported: jax.export.Exported, mesh: Mesh, donate_argnums: tuple[int, ...] = ()
) -> jax.stages.Compiled:
  """``exported`` compiled for its own argument shapes and shardings (over ``mesh``)."""
  specs = [
    jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s)
    for a, s in zip(exported.in_avals, exported.in_shardings_jax(mesh))
  ]
  args, kwargs = jax.tree.unflatten(exported.in_tree, specs)
  return jax.jit(exported.call, donate_argnums=donate_argnums).lower(*args, **kwargs).compile()


class StepCache:
  """One exported function on disk under ``key``; loading starts in a thread at once.

  ``tree`` (given to ``get``) names what the flat arguments stand for, such as
  ``str(treedef)`` of a model state: an entry of another tree is not used.
  """

  def __init__(
    self, key: dict, mesh: Mesh, donate_argnums: tuple[int, ...] = (), folder: Path | None = None
  ):
    self.key = json.dumps(key, sort_keys=True, default=str)
    digest = hashlib.sha256(self.key.encode()).hexdigest()[:32]
    self.path = (folder or default_folder()) / f"{digest}.jax"
    self.mesh, self.donate_argnums = mesh, donate_argnums
    self.source: str | None = None  # "disk" or "traced" once `get` has answered
    self._loading = ThreadPoolExecutor(1, thread_name_prefix="step_cache").submit(self._load)

  def _load(self) -> tuple[str, jax.stages.Compiled] | None:
    try:
      header, blob = self.path.read_bytes().split(b"\n", 1)
      meta = json.loads(header)
      if meta["key"] != self.key or not _unchanged(meta["modules"]):
        return None
      exported = jax.export.deserialize(bytearray(blob))
      return meta["tree"], compile_exported(exported, self.mesh, self.donate_argnums)
    except FileNotFoundError:
      return None
    except Exception as e:  # a stale or damaged entry costs a trace, never the run
      log.warning("step cache: ignoring %s (%s: %s)", self.path, type(e).__name__, e)
      return None

  def get(self, fn, args: tuple, tree: str) -> jax.stages.Compiled | None:
    """The compiled entry if it takes ``args`` of ``tree``; else ``fn`` (jitted) exported for
    ``args``, saved and compiled.

    None where ``jax.export`` refuses ``fn`` (the caller runs it unexported).
    """
    loaded = self._loading.result()
    if loaded is not None and loaded[0] == tree and fits(loaded[1], args):
      self.source = "disk"
      return loaded[1]
    specs = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), args
    )
    try:
      exported = jax.export.export(fn)(*specs)
    except Exception as e:
      log.warning("step cache: not kept, jax.export failed (%s: %s)", type(e).__name__, e)
      return None
    self.source = "traced"
    self._save(exported, tree)
    return compile_exported(exported, self.mesh, self.donate_argnums)

  def _save(self, exported: jax.export.Exported, tree: str) -> None:
    try:
      meta = {"key": self.key, "tree": tree, "modules": loaded_modules()}
      self.path.parent.mkdir(parents=True, exist_ok=True)
      write_atomic(self.path, json.dumps(meta).encode() + b"\n" + bytes(exported.serialize()))
    except Exception as e:  # a read-only or full disk: the run goes on uncached
      log.warning("step cache: could not save %s (%s: %s)", self.path, type(e).__name__, e)


def for_run(config: dict, mesh: Mesh, steps_per_epoch: int, total_steps: int) -> StepCache | None:
  """The cache of a run's train step (``config``: its ``Config.to_json``), loading at once;
  None where the step is not kept: ``step_cache`` off, or a run of several processes."""
  if not config["step_cache"] or jax.process_count() > 1:
    return None
  key = run_key(config=config, steps_per_epoch=steps_per_epoch, total_steps=total_steps)
  return StepCache(key, mesh, donate_argnums=(0,))


def compiled(cache: StepCache | None, step, args: tuple, tree: str):
  """``step`` (jitted) for ``args`` of state tree ``tree``: the cache's program, with one
  line saying whether it was loaded or traced into it; ``step`` itself without a cache, or
  where ``jax.export`` refuses it (``StepCache.get``)."""
  if cache is None:
    return step
  found = cache.get(step, args, tree)
  if found is None:
    return step
  said = "loaded from" if cache.source == "disk" else "traced into"
  print(f"train step: {said} {cache.path}", flush=True)
  return found
