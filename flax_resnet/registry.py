"""One table of architectures, and building them: what loading a checkpoint needs (no
weights are fetched here; ``builders`` adds them on top)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

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


def build(name: str, **options: Any) -> ResNet:
  """Architecture ``name`` with ``ResNet``'s keyword ``options``, randomly initialised.

  Options that define the architecture itself (block, layers, groups,
  width_per_group) come from the table and cannot be overridden. Pretrained weights
  are ``flax_resnet.create_model``'s, a layer above (``builders``).
  """
  arch = architecture(name)
  fixed = set(arch._fields) & set(options)
  if fixed:
    raise ValueError(
      f"{sorted(fixed)} are fixed by architecture {name!r}; build a custom "
      "network with flax_resnet.ResNet instead"
    )
  return ResNet(**arch._asdict(), **options)


def build_model(arch: str | None, options: Mapping[str, Any]) -> ResNet:
  """Builds a named architecture or, with ``arch=None``, a custom ``ResNet``."""
  return build(arch, **options) if arch else ResNet(**options)


def model_to_fill(arch: str | None, options: Mapping[str, Any]) -> ResNet:
  """A model to receive loaded weights: abstract (nothing allocated or initialised)
  unless it has RNG streams, which must be concrete keys."""
  if options.get("rngs") is not None:  # the caller's streams cannot advance inside a trace
    return build_model(arch, options)
  model = nnx.eval_shape(lambda: build_model(arch, options))
  if nnx.state(model, nnx.Not(nnx.Any(nnx.Param, nnx.BatchStat))):
    return build_model(arch, options)
  return model
