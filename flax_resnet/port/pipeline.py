"""The one conversion pipeline: fetch or load -> convert -> round trip -> verify -> metadata
-> save. ``flax-resnet-convert`` and ``weights=`` (``flax_resnet.pretrained``) both run it;
each passes its policy (arguments) and a ``progress`` callback that says the stages its way.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flax_resnet.port.state_dict import Conversion, ConversionError, batches_tracked
from flax_resnet.preprocess import EvalTransform, from_torchvision_weights
from flax_resnet.saved_model import Metadata, new_metadata, save

# progress(stage, **details), called as each stage starts: "load" (source), "convert"
# (weights, source), "note" (note), "verify" (reference: "torchvision" or "timm"), "unverified"
# (verification not asked), "verified" (parity: None when neither has such a model), "save"
# (path).
Progress = Callable[..., None]


class VerificationError(ConversionError):
  """The converted model is less exact than torchvision's (or timm's) own float32; ``parity``
  holds the figures."""

  def __init__(self, what: str, parity: dict[str, Any]):
    reference = parity.get("reference", "torchvision")
    super().__init__(f"{what}: verification against {reference} failed ({parity})")
    self.parity = parity


@dataclass
class Ported:
  """What ``port`` made: the conversion (model, architecture, options, notes), the
  ``Metadata`` written with it, and the torchvision weights entry (None for a file)."""

  conversion: Conversion
  metadata: Metadata
  weights: Any = None


def _silent(stage: str, **details: Any) -> None:
  """The default progress: says nothing."""


def port(
  *,
  weights: str | None = None,
  state_dict: Path | None = None,
  arch: str | None = None,
  num_classes: int | None = None,
  reset_head: bool = False,
  verify: bool = True,
  tolerance: float | None = None,
  transform: EvalTransform | None = None,
  source: dict[str, Any] | None = None,
  categories: list[str] | None = None,
  out: Path | None = None,
  overwrite: bool = False,
  progress: Progress = _silent,
) -> Ported:
  """Converts torchvision weights entry ``weights`` (fetched through torch.hub's cache) or
  the .pth/.safetensors file ``state_dict`` into a flax-resnet model, checks that every
  tensor comes back bit-exact, verifies it against torchvision (``parity.verify``, unless
  ``verify`` is False; a ``VerificationError`` if it fails), builds its ``Metadata`` and,
  with ``out``, saves it there (``overwrite`` as in ``saved_model.save``).

  ``arch``, ``num_classes`` and ``reset_head`` are ``convert_state_dict``'s; ``tolerance``
  is ``parity.verify``'s; ``transform`` and ``categories`` are a file's eval preprocessing
  and class names (a weights entry brings its own), ``source`` what the metadata records
  it came from (default: its path and SHA-256).
  """
  from flax_resnet.port.torch_files import fetch_weights, file_source, load_file, require_torch

  require_torch("converting torchvision weights")

  progress("load", source=weights or state_dict)
  if weights:
    entry, state, source = fetch_weights(weights, arch)
    arch = arch or _weights_arch(entry)  # a weights entry names its network
  elif state_dict is not None:
    entry, state = None, load_file(state_dict)
    source = source or file_source(state_dict)
  else:
    raise ValueError("port: pass weights (a torchvision entry) or state_dict (a file)")
  progress("convert", weights=entry, source=source)
  conversion = _convert(state, arch, num_classes, reset_head, progress)
  parity = _verify(conversion, verify, tolerance, str(entry or state_dict), progress)
  meta = checkpoint_metadata(
    conversion,
    source=source,
    parity=parity,
    transform=_transform(entry, transform),
    # Only weights that name their classes get names: a file's outputs may be anything.
    categories=None if reset_head else entry.meta.get("categories") if entry else categories,
    head="reset: fresh classifier" if reset_head else "from source",
  )
  if out is not None:
    progress("save", path=out)
    save(conversion.model, out, meta, overwrite=overwrite)
  return Ported(conversion, meta, entry)


def _weights_arch(entry: Any) -> str | None:
  """The architecture of torchvision weights ``entry``: the table's by its file; None if the
  table has none (the keys then decide)."""
  from flax_resnet.torchvision_weights import TABLE

  file = os.path.basename(entry.url)
  return next((w.arch for w in TABLE if w.file == file), None)


def _convert(state, arch, num_classes, reset_head, progress) -> Conversion:
  """The state dict on the model, its round trip checked; each note said."""
  from flax_resnet.port.state_dict import check_roundtrip, convert_state_dict

  options = {} if num_classes is None else {"num_classes": num_classes}
  conversion = convert_state_dict(state, arch, reset_head=reset_head, **options)
  for note in conversion.notes:
    progress("note", note=note)
  check_roundtrip(conversion.model, conversion.state_dict, reset_head)
  return conversion


def _verify(conversion, verify, tolerance, what, progress) -> dict | None:
  """``parity.verify``'s figures (None when not asked or torchvision has no such model)."""
  if not verify:
    progress("unverified")
    return None
  from flax_resnet.port.parity import verify as against_torchvision
  from flax_resnet.port.torch_files import require_timm
  from flax_resnet.port.twin import is_timms

  reference = "timm" if is_timms(conversion.arch, conversion.options) else "torchvision"
  if reference == "timm":
    require_timm(f"verifying {conversion.arch or 'a net with timm knobs'} against timm")
  progress("verify", reference=reference)
  parity = against_torchvision(
    conversion.model, conversion.arch, conversion.options, tolerance=tolerance
  )
  progress("verified", parity=parity)
  if parity is not None and not parity["passed"]:
    raise VerificationError(what, parity)
  return parity


def _transform(weights, transform: EvalTransform | None) -> EvalTransform:
  if weights is not None:
    return from_torchvision_weights(weights)
  return transform or EvalTransform()


def checkpoint_metadata(
  conversion: Conversion,
  *,
  source: dict[str, Any],
  transform: EvalTransform,
  categories: list[str] | None,
  parity: dict | None,
  head: str = "from source",
) -> Metadata:
  """The ``Metadata`` of a converted checkpoint: what it came from (with the source's
  ``num_batches_tracked``, if it has them), its eval preprocessing, class names, the
  verification's figures, and (``new_metadata``) every version that made it and when."""
  counts = batches_tracked(conversion.state_dict)
  if counts is not None:  # flax2torch writes them back
    source = {**source, "num_batches_tracked": counts}
  return new_metadata(
    arch=conversion.arch,
    options=conversion.options,
    source=source,
    notes=conversion.notes,
    head=head,
    preprocessing=transform.to_json(),
    categories=categories,
    parity=parity,
  )
