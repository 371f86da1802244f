"""One table of architectures, ``create_model`` and torchvision-style constructors."""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple

from flax import nnx

from flax_resnet.model import ResNet


class Arch(NamedTuple):
  """How torchvision builds one named architecture."""
  block: str
  layers: tuple[int, ...]
  groups: int = 1
  width_per_group: int = 64


ARCHITECTURES: dict[str, Arch] = {
    "resnet18": Arch("basic", (2, 2, 2, 2)),
    "resnet34": Arch("basic", (3, 4, 6, 3)),
    "resnet50": Arch("bottleneck", (3, 4, 6, 3)),
    "resnet101": Arch("bottleneck", (3, 4, 23, 3)),
    "resnet152": Arch("bottleneck", (3, 8, 36, 3)),
    "resnext50_32x4d": Arch("bottleneck", (3, 4, 6, 3), 32, 4),
    "resnext101_32x8d": Arch("bottleneck", (3, 4, 23, 3), 32, 8),
    "resnext101_64x4d": Arch("bottleneck", (3, 4, 23, 3), 64, 4),
    "wide_resnet50_2": Arch("bottleneck", (3, 4, 6, 3), width_per_group=128),
    "wide_resnet101_2": Arch("bottleneck", (3, 4, 23, 3), width_per_group=128),
}


def list_models() -> list[str]:
  """The architecture names ``create_model`` accepts, torchvision's spelling."""
  return list(ARCHITECTURES)


def architecture(name: str) -> Arch:
  """The table entry for ``name``; ``ValueError`` listing the known names otherwise."""
  if name not in ARCHITECTURES:
    raise ValueError(f"unknown architecture {name!r}; known: {', '.join(ARCHITECTURES)}")
  return ARCHITECTURES[name]


def create_model(name: str, *, weights: Any = None, pretrained: bool = False,
                 **options: Any) -> ResNet:
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
  """
  if pretrained and weights is not None:
    raise ValueError("pass weights=... or pretrained=True, not both")
  if pretrained or weights is not None:
    from flax_resnet.pretrained import load_pretrained
    return load_pretrained(name, "DEFAULT" if weights is None else weights, **options)[0]
  arch = architecture(name)
  fixed = set(arch._fields) & set(options)
  if fixed:
    raise ValueError(f"{sorted(fixed)} are fixed by architecture {name!r}; build a custom "
                     "network with flax_resnet.ResNet instead")
  return ResNet(**arch._asdict(), **options)


def build_model(arch: str | None, options: Mapping[str, Any]) -> ResNet:
  """Builds a named architecture or, with ``arch=None``, a custom ``ResNet``."""
  return create_model(arch, **options) if arch else ResNet(**options)


def model_to_fill(arch: str | None, options: Mapping[str, Any]) -> ResNet:
  """A model to receive loaded weights: abstract (nothing allocated or initialised)
  unless it has RNG streams, which must be concrete keys."""
  if options.get("rngs") is not None:  # the caller's streams cannot advance inside a trace
    return build_model(arch, options)
  model = nnx.eval_shape(lambda: build_model(arch, options))
  if nnx.state(model, nnx.Not(nnx.Any(nnx.Param, nnx.BatchStat))):
    return build_model(arch, options)
  return model


def _constructor(name: str):
  def build(*, weights: Any = None, pretrained: bool = False, **options: Any) -> ResNet:
    return create_model(name, weights=weights, pretrained=pretrained, **options)
  build.__name__ = build.__qualname__ = name
  build.__doc__ = (f"torchvision's ``{name}``; ``weights``/``pretrained`` and keyword options "
                   "as ``create_model``.")
  return build


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
