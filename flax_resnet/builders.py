"""``create_model`` and torchvision-style constructors (``ResNet50``...), with torchvision's
pretrained weights by name: the registry's builds, and the weights cache on top of it,
as torchvision layers its builders over ``_api``."""

from __future__ import annotations

from typing import Any

from flax_resnet.model import ResNet
from flax_resnet.registry import build


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
  or the enum member. ``pretrained=True`` (timm's spelling) means ``"DEFAULT"``.
  The model comes in eval mode; ``flax_resnet.load_pretrained`` also returns the
  weights' metadata (preprocessing, categories). The first call downloads and
  converts (torch needed); later ones read ``~/.cache/flax_resnet/weights``.
  ``num_classes`` other than the weights' gives them a new head (fine-tuning).
  """
  if pretrained and weights is not None:
    raise ValueError("pass weights=... or pretrained=True, not both")
  if pretrained or weights is not None:
    from flax_resnet.pretrained import load_pretrained

    return load_pretrained(name, "DEFAULT" if weights is None else weights, **options)[0]
  return build(name, **options)


def _constructor(name: str):
  def constructor(*, weights: Any = None, pretrained: bool = False, **options: Any) -> ResNet:
    return create_model(name, weights=weights, pretrained=pretrained, **options)

  constructor.__name__ = constructor.__qualname__ = name
  constructor.__doc__ = (
    f"torchvision's ``{name}``; ``weights``/``pretrained`` and keyword options as ``create_model``."
  )
  return constructor


ResNet18 = _constructor("resnet18")
ResNet34 = _constructor("resnet34")
ResNet50 = _constructor("resnet50")
ResNet101 = _constructor("resnet101")
ResNet152 = _constructor("resnet152")
ResNeXt50_32X4D = _constructor("resnext50_32x4d")
ResNeXt101_32X8D = _constructor("resnext101_32x8d")
ResNeXt101_64X4D = _constructor("resnext101_64x4d")
WideResNet50_2 = _constructor("wide_resnet50_2")
WideResNet101_2 = _constructor("wide_resnet101_2")
