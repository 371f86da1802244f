"""torchvision's pretrained weights in one call: ``create_model("resnet50", weights="DEFAULT")``.

The first call for a weights entry fetches torchvision's file through torch.hub's
cache (its hash check, ``weights_only=True``), converts it, verifies it against
torchvision as ``flax-resnet-convert`` does, and keeps the checkpoint in
``~/.cache/flax_resnet/weights`` (``$FLAX_RESNET_WEIGHTS`` to move it). Later
calls only read that checkpoint: no torch import, no download.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from flax_resnet.xla_cache import cache_dir

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
    raise ValueError(f"weights={weights!r}: expected a torchvision weights name such as "
                     "'IMAGENET1K_V2', 'DEFAULT' or 'ResNet50_Weights.IMAGENET1K_V2'")
  return match["entry"]


def load_pretrained(arch: str, weights: Any = "DEFAULT", **options: Any):
  """(model in eval mode, its ``Metadata``) for torchvision's weights entry ``weights`` of
  ``arch``; ``metadata.transform`` is their eval preprocessing, ``metadata.categories``
  their class names. ``options`` change what does not change the weights' shapes
  (``dtype``, ``norm="frozen_batch"``, ``dropout``), as in ``flax_resnet.load``."""
  from flax_resnet.registry import architecture
  from flax_resnet.saved_model import load

  architecture(arch)
  if options.get("num_classes", 1000) != 1000:
    raise ValueError(f"torchvision's {arch} weights have 1000 classes, not "
                     f"num_classes={options['num_classes']}: load them, then replace model.fc "
                     "(or convert with --num-classes N --reset-head)")
  options.pop("num_classes", None)
  path = weights_dir() / f"{arch}.{entry_name(weights)}"
  if not (path / "metadata.json").is_file():
    convert_pretrained(arch, entry_name(weights), path)
  return load(path, **options)  # in eval mode


def convert_pretrained(arch: str, entry: str, path: Path) -> Path:
  """Fetches, converts, verifies and saves torchvision's ``arch`` weights ``entry`` at
  ``path``; the name it resolved to (``DEFAULT`` is an alias) is in the metadata."""
  from flax_resnet.parity import verify
  from flax_resnet.preprocess import from_torchvision_weights
  from flax_resnet.saved_model import save
  from flax_resnet.torch_port import (ConversionError, check_roundtrip, checkpoint_metadata,
                                       convert_state_dict, fetch_weights)

  weights, state, source = fetch_weights(entry, arch)
  conversion = convert_state_dict(state, arch)
  check_roundtrip(conversion.model, conversion.state_dict, False)
  parity = verify(conversion.model, arch, conversion.options)
  if not parity["passed"]:
    raise ConversionError(f"{weights}: verification against torchvision failed ({parity})")
  meta = checkpoint_metadata(conversion, source=source, parity=parity,
                             transform=from_torchvision_weights(weights),
                             categories=weights.meta.get("categories"))
  try:
    save(conversion.model, path, meta)
  except FileExistsError:  # another process converted the same weights meanwhile
    pass
  return path
