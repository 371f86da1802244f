"""Model checkpoints (converted or exported): an orbax directory plus ``metadata.json``.

The metadata names the architecture and every constructor option, so ``load``
rebuilds the model from it alone (no torch needed). Writes go to a temporary
sibling directory that is renamed into place only once complete.
"""

from __future__ import annotations

import dataclasses
import datetime
import inspect
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from flax import nnx

from flax_resnet.errors import one_line, quiet_aborted_reads, replace_problem
from flax_resnet.files import remove_stale_temp_dirs, replace_dir, temp_dir_beside
from flax_resnet.folding import FoldedNorm
from flax_resnet.model import ResNet
from flax_resnet.preprocess import EvalTransform
from flax_resnet.registry import ALL_ARCHITECTURES, model_to_fill
from flax_resnet.versions import versions

METADATA = "metadata.json"
STATE = "state"
_TUPLE_OPTIONS = ("layers", "channels", "replace_stride_with_dilation")
_DTYPE_OPTIONS = ("dtype", "param_dtype")
_RESNET_OPTIONS = set(inspect.signature(ResNet.__init__).parameters) - {"self", "rngs"}


def options_to_json(options: Mapping[str, Any]) -> dict[str, Any]:
  """Constructor options as JSON values (dtypes by name, tuples as lists)."""
  out = {}
  for k, v in options.items():
    if k == "rngs":
      continue
    if k in _DTYPE_OPTIONS and v is not None:
      v = jnp.dtype(v).name
    out[k] = list(v) if isinstance(v, tuple) else v
  return out


def options_from_json(options: Mapping[str, Any]) -> dict[str, Any]:
  """Inverse of ``options_to_json``."""
  out = dict(options)
  for k in _TUPLE_OPTIONS:
    if out.get(k) is not None:
      out[k] = tuple(out[k])
  for k in _DTYPE_OPTIONS:
    if out.get(k) is not None:
      out[k] = jnp.dtype(out[k])
  return out


@dataclasses.dataclass
class Metadata:
  """A model checkpoint's ``metadata.json``, the one schema the converter, the trainer's
  export and predict share.

  ``arch`` (a registry name, or None for a custom ``ResNet``) and ``options`` (constructor
  options) rebuild the model; ``preprocessing`` (an ``EvalTransform``'s fields) and
  ``categories`` say how to feed it and read its classes; ``source``, ``notes`` and ``head``
  where it came from; ``parity`` what verification measured; ``versions`` and ``created``
  what wrote it.
  """

  arch: str | None
  options: dict[str, Any]
  preprocessing: dict[str, Any] | None = None
  categories: list[str] | None = None
  source: dict[str, Any] | None = None
  notes: list[str] = dataclasses.field(default_factory=list)
  head: str | None = None
  parity: dict[str, Any] | None = None
  versions: dict[str, str] | None = None
  created: str | None = None

  @property
  def transform(self) -> EvalTransform:
    """The eval preprocessing the model expects."""
    return EvalTransform.from_json(self.preprocessing or {})

  def to_json(self) -> dict[str, Any]:
    """``metadata.json``'s content: every field, the options as JSON holds them."""
    return {**dataclasses.asdict(self), "options": options_to_json(self.options)}

  @classmethod
  def from_json(cls, meta: Any) -> Metadata:
    """Checks ``meta`` (parsed JSON); ``ValueError`` naming the first missing or unknown key."""
    problem = _metadata_problem(meta)
    if problem:
      raise ValueError(problem)
    return cls(**{**meta, "options": options_from_json(meta["options"])})


def new_metadata(**fields: Any) -> Metadata:
  """A ``Metadata`` of ``fields`` (``arch`` and ``options`` at least) stamped with what writes
  it now: every version (``versions()``) and the time, in UTC: the one way the converter,
  ``weights=`` and the training export fill ``versions`` and ``created``."""
  created = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
  return Metadata(**fields, versions=versions(), created=created)


def _metadata_problem(meta: Any) -> str | None:
  if not isinstance(meta, dict):
    return "not a JSON object"
  missing = [k for k in ("arch", "options") if k not in meta]
  if missing:
    return f"missing key {', '.join(map(repr, missing))}, needed to rebuild the model"
  unknown = sorted(set(meta) - {f.name for f in dataclasses.fields(Metadata)})
  if unknown:
    return f"unknown key {', '.join(map(repr, unknown))}"
  if not isinstance(meta["options"], dict):
    return "'options' is not an object"
  if meta["arch"] is not None and meta["arch"] not in ALL_ARCHITECTURES:
    return f"unknown arch {meta['arch']!r}; known: {', '.join(ALL_ARCHITECTURES)}"
  unknown = sorted(set(meta["options"]) - _RESNET_OPTIONS)
  if unknown:
    return f"unknown option {', '.join(map(repr, unknown))} in 'options'"
  for key in _DTYPE_OPTIONS:
    value = meta["options"].get(key)
    if value is not None and not _is_float_dtype(value):
      return f"'options.{key}': {value!r} is not a floating-point dtype such as 'float32'"
  preprocessing = meta.get("preprocessing") or {}
  if not isinstance(preprocessing, dict):
    return "'preprocessing' is not an object"
  unknown = sorted(set(preprocessing) - {f.name for f in dataclasses.fields(EvalTransform)})
  if unknown:
    return f"unknown key {', '.join(map(repr, unknown))} in 'preprocessing'"
  try:
    EvalTransform.from_json(preprocessing)
  except ValueError as e:
    return f"'preprocessing': {e}"
  return None


def _is_float_dtype(name: Any) -> bool:
  try:
    return bool(jnp.issubdtype(jnp.dtype(name), jnp.floating))
  except (TypeError, ValueError):
    return False


def save(
  model: ResNet,
  path: str | os.PathLike,
  metadata: Metadata | Mapping[str, Any],
  *,
  overwrite: bool = False,
) -> Path:
  """Writes ``model`` and ``metadata`` to directory ``path``.

  ``metadata`` is a ``Metadata`` or a mapping of its fields (``arch`` and ``options`` at
  least). An existing ``path`` is an error unless ``overwrite``, and even then unless it
  is a flax-resnet checkpoint or empty (a user's data is never replaced); it is replaced
  only after the new checkpoint is complete. Temporary directories that killed saves
  left in ``path``'s parent are removed first.
  """
  if any(isinstance(m, FoldedNorm) for _, m in nnx.iter_modules(model)):
    raise ValueError(
      "this model's BatchNorms are folded (fold_batchnorm): save the model it "
      "was folded from, and fold after loading"
    )
  if not isinstance(metadata, Metadata):
    metadata = Metadata.from_json(_with_json_options(metadata))
  path = Path(path).absolute()
  if path.exists() and not path.is_dir():
    raise FileExistsError(
      f"{path} is a file, not a checkpoint directory; remove it or choose another path"
    )
  if path.exists() and not overwrite:
    raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
  problem = replace_problem(path) if path.exists() else None
  if problem:
    raise FileExistsError(
      f"{path} {problem}: overwrite=True (--force) replaces only a "
      "flax-resnet checkpoint; choose another path"
    )
  path.parent.mkdir(parents=True, exist_ok=True)
  remove_stale_temp_dirs(path.parent)
  tmp = temp_dir_beside(path)
  try:
    tmp.chmod(0o755)
    state = nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))
    with ocp.StandardCheckpointer() as checkpointer:
      checkpointer.save(tmp / STATE, state)
      checkpointer.wait_until_finished()
    (tmp / METADATA).write_text(
      json.dumps(metadata.to_json(), indent=2, sort_keys=True, allow_nan=False) + "\n"
    )
    replace_dir(tmp, path)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return path


def _with_json_options(metadata: Mapping[str, Any]) -> dict[str, Any]:
  if "options" not in metadata:
    return dict(metadata)
  return {**metadata, "options": options_to_json(metadata["options"])}


def read_metadata(path: str | os.PathLike) -> Metadata:
  """The metadata of checkpoint ``path``, checked; ``ValueError`` naming the file and the
  key if it is not a checkpoint or its metadata cannot rebuild the model."""
  file = Path(path) / METADATA
  if not file.is_file() or not (Path(path) / STATE).is_dir():
    raise ValueError(f"{path} is not a flax-resnet checkpoint (no {METADATA} and {STATE}/)")
  try:
    meta = json.loads(file.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{file} is corrupt: {e}") from e
  try:
    return Metadata.from_json(meta)
  except ValueError as e:
    raise ValueError(f"{file}: {e}") from None


def load(path: str | os.PathLike, **option_overrides: Any) -> tuple[ResNet, Metadata]:
  """Rebuilds the model saved at ``path`` from its metadata and restores its weights,
  in eval mode (running BatchNorm statistics, no dropout): ``model.train()`` to train.

  ``option_overrides`` change options that do not alter the weights' shapes
  (e.g. ``dtype``, ``norm="frozen_batch"``, ``dropout``). Returns (model, ``Metadata``).
  A checkpoint that cannot be read is a ``ValueError`` naming it.
  """
  path = Path(path).absolute()
  meta = read_metadata(path)
  options = {**meta.options, **option_overrides}
  try:
    model = model_to_fill(meta.arch, options)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{path / METADATA}: options do not build a model ({e})") from e
  target = nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))
  # A failed restore's reads still in flight each print an "Event loop is closed" error,
  # some while the restore is failing: the filter must be in place before it starts.
  quiet_aborted_reads()
  try:
    with ocp.StandardCheckpointer() as checkpointer:
      restored = checkpointer.restore(path / STATE, jax.tree.map(_abstract, target))
  except Exception as e:  # orbax and tensorstore raise many types for missing or cut files
    raise ValueError(
      f"{path / STATE} is truncated or corrupt, or not of this model "
      f"({type(e).__name__}: {one_line(e)[:300]})"
    ) from e
  nnx.update(model, restored)
  model.eval()
  return model, meta


def _abstract(x):
  return jax.ShapeDtypeStruct(x.shape, x.dtype)
