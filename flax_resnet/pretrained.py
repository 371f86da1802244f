"""torchvision's pretrained weights in one call: ``create_model("resnet50", weights="DEFAULT")``.

The first call for a weights entry fetches torchvision's file through torch.hub's
cache (``weights_only=True``; its SHA-256 checked against the prefix in the file name,
also for a file placed there by hand), converts it, verifies it against torchvision
as ``flax-resnet-convert`` does, and keeps the checkpoint in
``~/.cache/flax_resnet/weights/ARCH.ENTRY`` (``$FLAX_RESNET_WEIGHTS`` to move it),
saying each stage on stderr. Later calls only read that checkpoint, after checking
the source hash it records: no torch import, no download. ``DEFAULT`` is resolved to
the entry it names, so that it shares that entry's checkpoint.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from flax_resnet.caches import cache_dir
from flax_resnet.torchvision_weights import DEFAULT, find, hash_prefix, list_pretrained

WEIGHTS_ENV = "FLAX_RESNET_WEIGHTS"
_NAME = re.compile(r"^(?:(?P<enum>\w+_Weights)\.)?(?P<entry>[A-Z0-9_]+)$")


def weights_dir() -> Path:
  """Where converted pretrained weights are kept: ``$FLAX_RESNET_WEIGHTS`` or the cache."""
  return Path(os.environ[WEIGHTS_ENV]) if os.environ.get(WEIGHTS_ENV) else cache_dir("weights")


def entry_name(weights: Any) -> str:
  """``IMAGENET1K_V2`` from ``"IMAGENET1K_V2"``, ``"ResNet50_Weights.IMAGENET1K_V2"`` or
  the torchvision enum member itself."""
  text = getattr(weights, "name", None) if not isinstance(weights, str) else weights
  match = _NAME.match(str(text))
  if match is None:
    raise ValueError(
      f"weights={weights!r}: expected a torchvision weights name such as "
      "'IMAGENET1K_V2', 'DEFAULT' or 'ResNet50_Weights.IMAGENET1K_V2'"
    )
  return match["entry"]


def load_pretrained(arch: str, weights: Any = "DEFAULT", **options: Any):
  """(model in eval mode, its ``Metadata``) for torchvision's weights entry ``weights`` of
  ``arch``; ``metadata.transform`` is their eval preprocessing, ``metadata.categories``
  their class names. ``options`` change what does not change the weights' shapes
  (``dtype``, ``norm="frozen_batch"``, ``dropout``), as in ``flax_resnet.load``, and
  ``num_classes``: another count gives the pretrained backbone a new classifier
  (``ResNet.reset_classifier``, drawn from ``rngs``), as for fine-tuning."""
  from flax_resnet.registry import architecture
  from flax_resnet.saved_model import load

  architecture(arch)
  num_classes, rngs = options.pop("num_classes", 1000), options.pop("rngs", None)
  entry = resolve_entry(arch, weights)
  if find(arch, entry) is None:  # before torch is imported: the table knows every entry
    names = ", ".join(["DEFAULT"] + [w.name for w in list_pretrained(arch)])
    raise ValueError(f"weights={weights!r}: {arch} has no such torchvision weights; known: {names}")
  path = weights_dir() / f"{arch}.{entry}"
  if not (path / "metadata.json").is_file():
    check_incomplete_entry(path)
    convert_pretrained(arch, entry, path)
  check_cached_source(path, arch, entry)
  return with_head(*load(path, **options), num_classes, rngs)  # in eval mode


def with_head(model: Any, meta: Any, num_classes: int | None, rngs: Any = None) -> tuple[Any, Any]:
  """(model, metadata) as loaded, or, for ``num_classes`` other than the weights', the
  backbone with a new classifier (``ResNet.reset_classifier``, drawn from ``rngs``, as a
  fresh ``torch.nn.Linear``; none for 0) and metadata saying so, without class names."""
  import dataclasses

  if num_classes == meta.options.get("num_classes"):
    return model, meta
  model.reset_classifier(num_classes, rngs=rngs)
  return model, dataclasses.replace(
    meta,
    options={**meta.options, "num_classes": num_classes},
    categories=None,
    head=f"new: {num_classes} classes, initialised as torch.nn.Linear"
    if num_classes
    else "removed: the model returns pooled features",
  )


def resolve_entry(arch: str, weights: Any) -> str:
  """The weights entry ``weights`` names for ``arch``: ``DEFAULT`` resolved, without torch,
  to the entry torchvision's DEFAULT is (``IMAGENET1K_V2`` for ``resnet50``)."""
  entry = entry_name(weights)
  return DEFAULT.get(arch, entry) if entry == "DEFAULT" else entry


def check_cached_source(path: Path, arch: str, entry: str) -> None:
  """That converted checkpoint ``path`` records a source whose SHA-256 starts with the
  prefix in torchvision's file name for ``arch`` ``entry`` (the URL it records, for an
  entry not in ``torchvision_weights.TABLE``); a ``ValueError`` naming the file otherwise."""
  from flax_resnet.port.state_dict import ConversionError
  from flax_resnet.saved_model import METADATA, read_metadata

  source = read_metadata(path).source or {}
  known = find(arch, entry)
  expected = known.file if known else os.path.basename(str(source.get("url") or ""))
  prefix, digest = hash_prefix(expected), source.get("sha256")
  if not prefix or not isinstance(digest, str) or not digest.startswith(prefix):
    raise ConversionError(
      f"{path / METADATA}: source sha256 {digest} does not start with {prefix}, the hash in "
      f"torchvision's file name {expected or '(none recorded)'}: converted from another "
      f"file; remove {path} to convert torchvision's file again"
    )


def check_incomplete_entry(path: Path, source: str = "torchvision's file") -> None:
  """Before any work, that weights entry ``path``, which has no ``metadata.json``, is absent
  or an empty directory (converted anew and replaced); a ``ValueError`` naming what to
  remove otherwise (to convert ``source`` again): files there may be anyone's, and a
  conversion could not replace them."""
  if not (path.exists() or path.is_symlink()):
    return
  if path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
    return
  raise ValueError(
    f"{path}: an incomplete weights entry (no metadata.json); remove it to convert {source} again"
  )


class Say:
  """``port``'s progress for a first call: one line on stderr as each stage of ``messages``
  starts, ``flax_resnet: `` and its message. ``messages`` maps a stage (``port.pipeline``'s
  ``Progress``) to a function of that stage's details giving the message."""

  def __init__(self, messages: Mapping[str, Callable[[dict[str, Any]], str]]):
    self.messages = messages

  def __call__(self, stage: str, **details: Any) -> None:
    message = self.messages.get(stage)
    if message:
      print(f"flax_resnet: {message(details)}", file=sys.stderr, flush=True)


def saving(details: dict[str, Any]) -> str:
  """The message of the ``save`` stage, where the checkpoint goes."""
  return f"saving to {details['path']}"


def _torchvision_messages(arch: str, entry: str) -> dict[str, Callable[[dict[str, Any]], str]]:
  """``Say``'s messages for torchvision's weights ``entry`` of ``arch``."""
  return {
    "load": lambda _: (
      f"{arch} {entry}: fetching torchvision's weights through "
      "torch.hub's cache and checking their SHA-256 (first use only)"
    ),
    "convert": lambda details: f"converting {details['weights']} ({details['source']['file']})",
    "verify": lambda _: "verifying against torchvision in float32 and float64 on a fixed batch",
    "save": saving,
  }


def convert_pretrained(arch: str, entry: str, path: Path) -> Path:
  """Fetches, converts, verifies and saves torchvision's ``arch`` weights ``entry`` at
  ``path`` (``port.pipeline.port``), saying each stage on stderr."""
  from flax_resnet.port.pipeline import port

  try:
    # overwrite: an empty directory only (check_incomplete_entry), such as a mkdir leaves
    progress = Say(_torchvision_messages(arch, entry))
    port(weights=entry, arch=arch, out=path, overwrite=path.is_dir(), progress=progress)
  except FileExistsError:  # another process converted the same weights meanwhile
    pass
  return path
