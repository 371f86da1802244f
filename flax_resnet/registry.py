"""One table of architectures, and building them: what loading a checkpoint needs (no
weights are fetched here; ``builders`` adds them on top)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from flax import nnx

from flax_resnet import pruned
from flax_resnet.model import ResNet
from flax_resnet.timm_weights import matching


class Arch(NamedTuple):
  """How torchvision or timm builds one named architecture: ``ResNet``'s options that make it,
  timm's knobs (``stem_type``...) after torchvision's."""

  block: str | tuple[str, ...]  # one for all stages, or one per stage
  layers: tuple[int, ...]
  groups: int = 1
  width_per_group: int = 64
  stem_type: str = ""
  stem_width: int | None = None
  replace_stem_pool: bool = False
  avg_down: bool = False
  down_kernel_size: int = 1
  block_reduce_first: int = 1
  attn_layer: str | None = None
  radix: int = 1
  avd: bool = False
  avd_first: bool = False
  is_first: bool = False
  aa_layer: str | None = None
  # timm's GroupNorm nets fix ``norm``; None leaves it to the caller (``ResNet``'s option)
  norm: str | None = None
  channels: tuple[int, ...] | None = None  # likewise, the stages' base widths
  se_rd_ratio: float | None = None
  block_widths: tuple[tuple[tuple[int, ...], ...], ...] | None = None

  def options(self) -> dict[str, Any]:
    """``ResNet``'s options for this architecture: torchvision's four, and the timm knobs
    that differ from their defaults (a torchvision architecture's options stay its four)."""
    defaults = Arch("", ())
    return {
      k: v
      for i, (k, v) in enumerate(self._asdict().items())
      if i < _TORCHVISION_FIELDS or v != defaults[i]
    }


_TORCHVISION_FIELDS = 4  # block, layers, groups, width_per_group
# Fields that are ``ResNet`` options of every architecture unless the table sets them (None).
OPEN = ("norm", "channels")


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
"""torchvision's ten architectures by name (``ALL_ARCHITECTURES`` adds timm's)."""


R26, R50, R101, R152, R200, R269 = (
  (2, 2, 2, 2),
  (3, 4, 6, 3),
  (3, 4, 23, 3),
  (3, 8, 36, 3),
  (3, 24, 36, 3),
  (3, 30, 48, 8),
)


def _arch(block: str | tuple[str, ...], layers: tuple[int, ...], **knobs: Any) -> Arch:
  """An ``Arch`` from keyword knobs (the table's shared dicts unpack into them)."""
  return Arch(block, layers, **knobs)


def _deep(block: str, layers: tuple[int, ...], **knobs: Any) -> Arch:
  """timm's "c" variants: the deep stem, 32 wide."""
  return _arch(block, layers, stem_type="deep", stem_width=32, **knobs)


def _d(block: str, layers: tuple[int, ...], **knobs: Any) -> Arch:
  """timm's "d" variants (ResNet-D): the deep stem, 32 wide, and average-pool shortcuts."""
  return _deep(block, layers, avg_down=True, **knobs)


def _t(block: str, layers: tuple[int, ...], **knobs: Any) -> Arch:
  """timm's "t" variants: the tiered deep stem (24, 32, 64) and average-pool shortcuts."""
  return _arch(block, layers, stem_type="deep_tiered", stem_width=32, avg_down=True, **knobs)


B, X = "bottleneck", {"groups": 32, "width_per_group": 4}  # X: ResNeXt 32x4d
SE, ECA = {"attn_layer": "se"}, {"attn_layer": "eca"}
AA, BLUR = {"aa_layer": "avg"}, {"aa_layer": "blur"}


def _rs(layers: tuple[int, ...]) -> Arch:
  """timm's ResNet-RS: ResNet-D with the conv stem pool and SE reducing by 1/4."""
  return _d(B, layers, replace_stem_pool=True, attn_layer="se", se_rd_ratio=0.25)


def _pruned(layers: tuple[int, ...], stages: tuple[pruned.Stage, ...]) -> Arch:
  """timm's pruned ECA-ResNet-D: the channel counts of its pruning description."""
  return _d(B, layers, attn_layer="eca", block_widths=pruned.block_widths(stages))


# The architectures of timm's resnet.py (timm 1.0) that torchvision has not, by timm's names;
# timm's resnet18... are torchvision's ten above, with the same keys.
TIMM_ARCHITECTURES: dict[str, Arch] = {
  "resnet10t": _t("basic", (1, 1, 1, 1)),
  "resnet14t": _t(B, (1, 1, 1, 1)),
  "resnet18d": _d("basic", R26),
  "resnet34d": _d("basic", R50),
  "resnet26": _arch(B, R26),
  "resnet26d": _d(B, R26),
  "resnet26t": _t(B, R26),
  "resnet50c": _deep(B, R50),
  "resnet50d": _d(B, R50),
  "resnet50s": _arch(B, R50, stem_type="deep", stem_width=64),
  "resnet50t": _t(B, R50),
  "resnet101c": _deep(B, R101),
  "resnet101d": _d(B, R101),
  "resnet101s": _arch(B, R101, stem_type="deep", stem_width=64),
  "resnet152c": _deep(B, R152),
  "resnet152d": _d(B, R152),
  "resnet152s": _arch(B, R152, stem_type="deep", stem_width=64),
  "resnet200": _arch(B, R200),
  "resnet200d": _d(B, R200),
  "resnext50d_32x4d": _d(B, R50, **X),
  "resnext101_32x4d": _arch(B, R101, groups=32, width_per_group=4),
  "resnext101_32x16d": _arch(B, R101, groups=32, width_per_group=16),
  "resnext101_32x32d": _arch(B, R101, groups=32, width_per_group=32),
  "ecaresnet26t": _t(B, R26, **ECA),
  "ecaresnet50d": _d(B, R50, **ECA),
  "ecaresnet50t": _t(B, R50, **ECA),
  "ecaresnetlight": _arch(B, (1, 1, 11, 3), avg_down=True, **ECA),
  "ecaresnet101d": _d(B, R101, **ECA),
  "ecaresnet50d_pruned": _pruned(R50, pruned.ECARESNET50D_PRUNED),
  "ecaresnet101d_pruned": _pruned(R101, pruned.ECARESNET101D_PRUNED),
  "ecaresnet200d": _d(B, R200, **ECA),
  "ecaresnet269d": _d(B, R269, **ECA),
  "ecaresnext26t_32x4d": _t(B, R26, **X, **ECA),
  "ecaresnext50t_32x4d": _t(B, R50, **X, **ECA),
  "seresnet18": _arch("basic", R26, **SE),
  "seresnet34": _arch("basic", R50, **SE),
  "seresnet50": _arch(B, R50, **SE),
  "seresnet50t": _t(B, R50, **SE),
  "seresnet101": _arch(B, R101, **SE),
  "seresnet152": _arch(B, R152, **SE),
  "seresnet152d": _d(B, R152, **SE),
  "seresnet200d": _d(B, R200, **SE),
  "seresnet269d": _d(B, R269, **SE),
  "seresnext26d_32x4d": _d(B, R26, **X, **SE),
  "seresnext26t_32x4d": _t(B, R26, **X, **SE),
  "seresnext50_32x4d": _arch(B, R50, **X, **SE),
  "seresnext101_32x4d": _arch(B, R101, **X, **SE),
  "seresnext101_32x8d": _arch(B, R101, groups=32, width_per_group=8, **SE),
  "seresnext101d_32x8d": _d(B, R101, groups=32, width_per_group=8, **SE),
  "seresnext101_64x4d": _arch(B, R101, groups=64, width_per_group=4, **SE),
  "senet154": _arch(
    B,
    R152,
    groups=64,
    width_per_group=4,
    stem_type="deep",
    stem_width=64,
    down_kernel_size=3,
    block_reduce_first=2,
    **SE,
  ),
  "resnet50_gn": _arch(B, R50, norm="group"),
  "resnetblur18": _arch("basic", R26, **BLUR),
  "resnetblur50": _arch(B, R50, **BLUR),
  "resnetblur50d": _d(B, R50, **BLUR),
  "resnetblur101d": _d(B, R101, **BLUR),
  "resnetaa34d": _d("basic", R50, **AA),
  "resnetaa50": _arch(B, R50, **AA),
  "resnetaa50d": _d(B, R50, **AA),
  "resnetaa101d": _d(B, R101, **AA),
  "seresnetaa50d": _d(B, R50, **SE, **AA),
  "seresnextaa101d_32x8d": _d(B, R101, groups=32, width_per_group=8, **SE, **AA),
  "seresnextaa201d_32x8d": _arch(
    B,
    (3, 24, 36, 4),
    groups=32,
    width_per_group=8,
    stem_type="deep",
    stem_width=64,
    avg_down=True,
    **SE,
    **AA,
  ),
  "test_resnet": _arch(
    ("basic", "basic", B, "basic"),
    (1, 1, 1, 1),
    stem_type="deep",
    stem_width=16,
    avg_down=True,
    channels=(32, 48, 48, 96),
  ),
  "resnetrs50": _rs(R50),
  "resnetrs101": _rs(R101),
  "resnetrs152": _rs(R152),
  "resnetrs200": _rs(R200),
  "resnetrs270": _rs((4, 29, 53, 4)),
  "resnetrs350": _rs((4, 36, 72, 4)),
  "resnetrs420": _rs((4, 44, 87, 4)),
}


def _e(block: str, layers: tuple[int, ...], **knobs: Any) -> Arch:
  """timm's "e" variants: the deep stem, 64 wide, and average-pool shortcuts."""
  return _arch(block, layers, stem_type="deep", stem_width=64, avg_down=True, **knobs)


RS, SPLIT2 = "resnest", {"radix": 2, "avd": True}  # ResNeSt's 2 splits, strides by avd pools

# The architectures of timm's resnest.py (timm 1.0): ResNeSt, split-attention bottlenecks.
RESNEST_ARCHITECTURES: dict[str, Arch] = {
  "resnest14d": _d(RS, (1, 1, 1, 1), **SPLIT2),
  "resnest26d": _d(RS, R26, **SPLIT2),
  "resnest50d": _d(RS, R50, **SPLIT2),
  "resnest101e": _e(RS, R101, **SPLIT2),
  "resnest200e": _e(RS, R200, **SPLIT2),
  "resnest269e": _e(RS, R269, **SPLIT2),
  "resnest50d_4s2x40d": _d(
    RS, R50, groups=2, width_per_group=40, radix=4, avd=True, avd_first=True
  ),
  "resnest50d_1s4x24d": _d(
    RS, R50, groups=4, width_per_group=24, radix=1, avd=True, avd_first=True
  ),
}
ALL_ARCHITECTURES = {**ARCHITECTURES, **TIMM_ARCHITECTURES, **RESNEST_ARCHITECTURES}
SOURCES = ("torchvision", "timm")


def list_models(pattern: str | None = None, source: str | None = None) -> list[str]:
  """The architecture names ``create_model`` accepts: torchvision's ten, or with
  ``source="timm"`` every name of timm's ResNet family built here (torchvision's ten among
  them, which timm builds alike); ``list_models("timm")`` says the same.

  ``pattern``, an fnmatch pattern as ``timm.list_models``' (``"seresnext*"``), keeps the
  names it matches, in timm's natural order, of every name built here unless ``source``
  says which. A pattern without wildcards that is neither a source nor an architecture
  (a typo) is refused."""
  if pattern in SOURCES and source is None:  # list_models("timm"), as before patterns
    pattern, source = None, pattern
  source = source or ("torchvision" if pattern is None else "timm")
  if source not in SOURCES:
    raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
  names = list(ARCHITECTURES if source == "torchvision" else ALL_ARCHITECTURES)
  if pattern is None:
    return names
  if pattern and not any(c in pattern for c in "*?[") and pattern not in ALL_ARCHITECTURES:
    raise ValueError(
      f"source must be one of {SOURCES}, or pattern an architecture name or an fnmatch "
      f"pattern (*, ?, [...]); got {pattern!r}"
    )
  return matching(names, pattern)


def architecture(name: str) -> Arch:
  """The table entry for ``name``; ``ValueError`` listing the known names otherwise."""
  if name not in ALL_ARCHITECTURES:
    raise ValueError(f"unknown architecture {name!r}; known: {', '.join(ALL_ARCHITECTURES)}")
  return ALL_ARCHITECTURES[name]


def build(name: str, **options: Any) -> ResNet:
  """Architecture ``name`` with ``ResNet``'s keyword ``options``, randomly initialised.

  Options that define the architecture itself (block, layers, groups, width_per_group,
  and timm's knobs: ``Arch``) come from the table and cannot be overridden; ``norm`` and
  ``channels`` only where the table sets them (``resnet50_gn``, ``test_resnet``). Pretrained
  weights are ``flax_resnet.create_model``'s, a layer above (``builders``).
  """
  arch = architecture(name)
  fixed = {k for k in set(arch._fields) & set(options) if k not in OPEN or getattr(arch, k)}
  if fixed:
    raise ValueError(
      f"{sorted(fixed)} are fixed by architecture {name!r}; build a custom "
      "network with flax_resnet.ResNet instead"
    )
  return ResNet(**arch.options(), **options)


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
