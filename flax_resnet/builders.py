"""``create_model`` and torchvision-style constructors (``ResNet50``...), with torchvision's
pretrained weights by name: the registry's builds, and the weights cache on top of it,
as torchvision layers its builders over ``_api``; timm's names (``ARCH.TAG``, ``hf-hub:``)
checked against ``timm_weights`` and loaded by ``timm_hub``."""

from __future__ import annotations

from typing import Any

from flax_resnet.model import ResNet
from flax_resnet.registry import ARCHITECTURES, architecture, build
from flax_resnet.timm_weights import (
  HUB_ORGANISATION,
  TimmWeights,
  find_tag,
  get_pretrained_cfg,
  split_name,
)

HUB_SOURCES = ("hf-hub", "hf_hub")  # timm's prefix, and the older spelling it still reads


def create_model(
  name: str, *, weights: Any = None, pretrained: bool = False, **options: Any
) -> ResNet:
  """Builds architecture ``name`` with ``ResNet``'s keyword ``options``.

  ``create_model("resnet50", num_classes=10, rngs=nnx.Rngs(0))``: random
  initialisation, in train mode. Options that define the architecture itself
  (block, layers, groups, width_per_group) come from the table and cannot be
  overridden.

  ``weights`` loads torchvision's pretrained weights, as torchvision's own
  ``weights=``: ``"DEFAULT"``, ``"IMAGENET1K_V1"``, ``"ResNet50_Weights.IMAGENET1K_V2"``
  or the enum member. ``pretrained=True`` (timm's spelling) means ``"DEFAULT"`` for
  torchvision's ten names. The model comes in eval mode; ``flax_resnet.load_pretrained``
  also returns the weights' metadata (preprocessing, categories). The first call downloads
  and converts (torch needed); later ones read ``~/.cache/flax_resnet/weights``.
  ``num_classes`` other than the weights' gives them a new head (fine-tuning).

  timm's names load timm's weights from the Hugging Face hub with ``pretrained=True``:
  ``"resnet50d.ra4_e3600_r224_in1k"`` (``ARCH.TAG``, ``flax_resnet.list_pretrained()``),
  ``"resnet50d"`` (its default tag, for a name that is not torchvision's) or
  ``"hf-hub:timm/resnet50d.ra4_e3600_r224_in1k"``. Without it, ``ARCH.TAG`` builds ``ARCH``
  randomly with the tag's ``num_classes``, as timm does.
  """
  if pretrained and weights is not None:
    raise ValueError("pass weights=... or pretrained=True, not both")
  hub = timm_weights_of(name, pretrained)
  if hub is None:
    if pretrained or weights is not None:
      from flax_resnet.pretrained import load_pretrained

      return load_pretrained(name, "DEFAULT" if weights is None else weights, **options)[0]
    return build(name, **options)
  repo_id, entry = hub
  if weights is not None:
    raise ValueError(
      f"weights= names torchvision's weights, and {name!r} timm's: pass pretrained=True"
    )
  if pretrained:
    from flax_resnet.timm_hub import load_pretrained_timm

    return load_pretrained_timm(repo_id, entry.arch if entry else None, **options)[0]
  if entry is None:
    raise ValueError(
      f"{name!r}: the architecture of a hub repository not in flax_resnet.list_pretrained() "
      "is read from its config.json when loading: pass pretrained=True"
    )
  return build(entry.arch, **{"num_classes": entry.num_classes, **options})


def timm_weights_of(name: str, pretrained: bool = False) -> tuple[str, TimmWeights | None] | None:
  """(hub repository, its ``timm_weights`` entry or None if not timm's) that ``name`` loads
  with ``pretrained``, or None for a name of torchvision's weights or a plain architecture.

  ``ARCH.TAG`` and ``hf-hub:REPO`` are timm's; so is a bare ``ARCH`` with ``pretrained``,
  unless torchvision's ten have it. The tag and the architecture are checked here, before
  anything is fetched."""
  source, colon, repo_id = name.partition(":")
  if colon:
    if source not in HUB_SOURCES or not repo_id:
      raise ValueError(f"{name!r}: the only source is the Hugging Face hub, hf-hub:OWNER/REPO")
    owner, _, tagged = repo_id.partition("/")
    entry = find_tag(tagged) if owner == HUB_ORGANISATION else None
  elif "/" in name:
    raise ValueError(f"{name!r} reads as a hub repository: write 'hf-hub:{name}'")
  elif "." in name or (pretrained and name not in ARCHITECTURES):
    architecture(split_name(name)[0])
    entry = get_pretrained_cfg(name)
    repo_id = entry.hf_hub_id
  else:
    return None
  if entry is not None:
    architecture(entry.arch)  # built here: refused in one line before any download
  return repo_id, entry


def _constructor(name: str):
  def constructor(*, weights: Any = None, pretrained: bool = False, **options: Any) -> ResNet:
    return create_model(name, weights=weights, pretrained=pretrained, **options)

  constructor.__name__ = constructor.__qualname__ = name
  constructor.__doc__ = (
    f"torchvision's ``{name}``; ``weights``/``pretrained`` and keyword options as ``create_model``."
  )
  return constructor


ResNet18 = _constructor("resnet18")
"""torchvision's ``resnet18``: ``create_model("resnet18", ...)``."""
ResNet34 = _constructor("resnet34")
"""torchvision's ``resnet34``: ``create_model("resnet34", ...)``."""
ResNet50 = _constructor("resnet50")
"""torchvision's ``resnet50``: ``create_model("resnet50", ...)``."""
ResNet101 = _constructor("resnet101")
"""torchvision's ``resnet101``: ``create_model("resnet101", ...)``."""
ResNet152 = _constructor("resnet152")
"""torchvision's ``resnet152``: ``create_model("resnet152", ...)``."""
ResNeXt50_32X4D = _constructor("resnext50_32x4d")
"""torchvision's ``resnext50_32x4d``: ``create_model("resnext50_32x4d", ...)``."""
ResNeXt101_32X8D = _constructor("resnext101_32x8d")
"""torchvision's ``resnext101_32x8d``: ``create_model("resnext101_32x8d", ...)``."""
ResNeXt101_64X4D = _constructor("resnext101_64x4d")
"""torchvision's ``resnext101_64x4d``: ``create_model("resnext101_64x4d", ...)``."""
WideResNet50_2 = _constructor("wide_resnet50_2")
"""torchvision's ``wide_resnet50_2``: ``create_model("wide_resnet50_2", ...)``."""
WideResNet101_2 = _constructor("wide_resnet101_2")
"""torchvision's ``wide_resnet101_2``: ``create_model("wide_resnet101_2", ...)``."""
