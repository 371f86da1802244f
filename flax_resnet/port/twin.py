"""The torchvision twin of a flax-resnet configuration: the torch model with the same
state-dict keys and the same function, for the verification (``parity``), the PyTorch
training recipe (``flax_resnet.bench.torch_recipe``) and the tests.

Named architectures, and four-stage nets of torchvision's widths with the ImageNet stem, are
built by torchvision's own ``resnet.py`` (``torchvision.models.resnet50(...)``,
``ResNet(block, layers)``), so that what is compared with them is torchvision itself. Other
stage counts and widths and the CIFAR stem are ``StageResNet``: torchvision's
``_make_layer`` under either stem. Frozen BatchNorm is torchvision's ``FrozenBatchNorm2d``.
timm's architectures, and nets with any of timm's knobs, are timm's own ``ResNet`` (timm
imported on first use: an extra of its own).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torchvision
from torch import nn
from torchvision.models import resnet as tv
from torchvision.ops.misc import FrozenBatchNorm2d

from flax_resnet.choices import DEFAULT_CHANNELS
from flax_resnet.registry import ARCHITECTURES, Arch, architecture

BLOCKS = {"basic": tv.BasicBlock, "bottleneck": tv.Bottleneck}
NORM_LAYERS = {"batch": nn.BatchNorm2d, "frozen_batch": FrozenBatchNorm2d}
# Options that change neither the keys nor the eval function: precision, dropout (drop path and
# DropBlock too), streams.
_NOT_IN_TORCH = (
  "dtype",
  "param_dtype",
  "dropout",
  "norm_groups",
  "rngs",
  "drop_path_rate",
  "drop_block_rate",
)


class StageResNet(nn.Module):
  """torchvision's ResNet for any stage count and base widths, with the ImageNet or the
  CIFAR stem (3x3/1 conv, no max-pool); the state-dict keys are torchvision's."""

  def __init__(
    self,
    block: type[nn.Module],
    layers: Sequence[int],
    channels: Sequence[int],
    num_classes: int = 1000,
    stem: str = "imagenet",
    in_channels: int = 3,
    norm_layer: type[nn.Module] = nn.BatchNorm2d,
    groups: int = 1,
    width_per_group: int = 64,
    replace_stride_with_dilation: Sequence[bool] | None = None,
    zero_init_residual: bool = False,
  ):
    super().__init__()
    # torchvision's ResNet._make_layer reads these attributes of its ``self``.
    self._norm_layer, self.groups, self.base_width, self.dilation = (
      norm_layer,
      groups,
      width_per_group,
      1,
    )
    self.inplanes = channels[0]
    if stem == "cifar":
      self.conv1 = nn.Conv2d(in_channels, self.inplanes, 3, 1, 1, bias=False)
      self.maxpool: nn.Module = nn.Identity()
    else:
      self.conv1 = nn.Conv2d(in_channels, self.inplanes, 7, 2, 3, bias=False)
      self.maxpool = nn.MaxPool2d(3, 2, 1)
    self.bn1 = norm_layer(self.inplanes)
    self.relu = nn.ReLU(inplace=True)
    self._make_stages(block, layers, channels, replace_stride_with_dilation)
    self.avgpool = nn.AdaptiveAvgPool2d(1)
    self.fc = nn.Linear(self.inplanes, num_classes)
    self._init_weights(zero_init_residual)

  def _make_stages(self, block, layers, channels, dilate) -> None:
    self.stages = len(layers)
    dilate = tuple(dilate or (False,) * (len(layers) - 1))
    for i, (depth, planes) in enumerate(zip(layers, channels)):
      setattr(
        self,
        f"layer{i + 1}",
        tv.ResNet._make_layer(
          self, block, planes, depth, stride=1 if i == 0 else 2, dilate=i > 0 and dilate[i - 1]
        ),
      )

  def _init_weights(self, zero_init_residual: bool) -> None:
    """torchvision's initialisation."""
    for m in self.modules():
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    for m in self.modules() if zero_init_residual else ():
      if isinstance(m, tv.Bottleneck):
        nn.init.zeros_(m.bn3.weight)
      elif isinstance(m, tv.BasicBlock):
        nn.init.zeros_(m.bn2.weight)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    for i in range(self.stages):
      x = getattr(self, f"layer{i + 1}")(x)
    return self.fc(torch.flatten(self.avgpool(x), 1))


def torch_resnet(
  arch: str | None, options: Mapping[str, Any], *, library_only: bool = False
) -> nn.Module | None:
  """The torch model equal to ``registry.build_model(arch, options)``, as torch builds it (in
  train mode, torch's initialisation), or None where torch has no such model: group norm,
  a headless net (``num_classes=0``), another ``expansion``. With ``library_only``, also
  None where neither torchvision's own ResNet nor timm's builds it (the CIFAR stem, other
  widths of a torchvision net: ``StageResNet`` is ours)."""
  spec = {k: v for k, v in options.items() if k not in _NOT_IN_TORCH}
  norm = spec.pop("norm", "batch")
  stem = spec.get("stem", "imagenet")
  timm_net = is_timms(arch, spec)
  norms = dict(NORM_LAYERS)
  if timm_net and norm == "group":  # timm imported only where its GroupNorm is asked for
    norms["group"] = _timm_group_norm(options)
  if norm not in norms or spec.get("num_classes", 1000) == 0 or spec.pop("expansion", None):
    return None
  spec["norm_layer"] = norms[norm]
  if timm_net:
    return None if stem != "imagenet" else timm_resnet(arch, spec)
  stem, in_channels = spec.pop("stem", "imagenet"), spec.pop("in_channels", 3)
  channels = tuple(spec.pop("channels", DEFAULT_CHANNELS))
  if stem == "imagenet" and channels == DEFAULT_CHANNELS:
    model = _torchvision(arch, spec)
    if in_channels != 3:
      model.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    return model
  if library_only:
    return None
  table = architecture(arch).options() if arch else {}
  spec = {**table, **spec}
  return StageResNet(
    BLOCKS[spec.pop("block")], channels=channels, stem=stem, in_channels=in_channels, **spec
  )


def _torchvision(arch: str | None, spec: dict[str, Any]) -> nn.Module:
  """torchvision's named builder for ``arch``, or its ``ResNet`` for a custom ``spec``."""
  if arch:
    return getattr(torchvision.models, arch)(**spec)
  block, layers = BLOCKS[spec.pop("block")], list(spec.pop("layers"))
  return tv.ResNet(block, layers, **spec)


# Options of ours that are timm's alone (``registry.Arch`` after torchvision's four, but the
# options of every net that it may fix).
_TIMM_KNOBS = {f for f in Arch._fields[4:] if f not in ("norm", "channels")}
# Of them, those timm passes to its blocks in ``block_args``.
_BLOCK_ARGS = ("attn_layer", "radix", "avd", "avd_first", "is_first")


def _timm_group_norm(options: Mapping[str, Any]) -> Any:
  """timm's ``GroupNorm`` (eps 1e-5) with our ``norm_groups`` (32 if not given)."""
  import functools

  from timm.layers import GroupNorm

  return functools.partial(GroupNorm, num_groups=options.get("norm_groups", 32))


def is_timms(arch: str | None, options: Mapping[str, Any]) -> bool:
  """Whether ``torch_resnet`` builds (arch, options) with timm: one of timm's architectures,
  or a net with timm's block (ResNeSt's), a block kind per stage, or any of timm's knobs."""
  block = options.get("block")
  timm_block = block == "resnest" or isinstance(block, (list, tuple))
  return (
    (arch is not None and arch not in ARCHITECTURES)
    or timm_block
    or bool(set(options) & _TIMM_KNOBS)
  )


def timm_resnet(arch: str | None, spec: Mapping[str, Any]) -> nn.Module | None:
  """timm's ResNet for ``arch`` or a custom ``spec`` of ours (our option names translated to
  timm's: ``groups`` is its ``cardinality``, ``attn_layer`` goes in ``block_args``...), or
  None where timm cannot build it: a 7x7 stem not 64 wide (timm's is always 64), dilated
  stages other than the last ones (timm's ``output_stride``)."""
  import timm
  from timm.layers import BlurPool2d
  from timm.models import resnet as tr
  from timm.models.resnest import ResNestBottleneck

  spec = {**(architecture(arch).options() if arch else {}), **spec}
  ours = {k: v for k, v in spec.items() if k not in ("norm_layer", "zero_init_residual")}
  spec.pop("stem", None)
  args = {"num_classes": spec.pop("num_classes", 1000), "in_chans": spec.pop("in_channels", 3)}
  norm = spec.pop("norm_layer")
  if norm is not nn.BatchNorm2d:
    args["norm_layer"] = norm
  dilate = [bool(d) for d in spec.pop("replace_stride_with_dilation", None) or ()]
  if dilate != sorted(dilate) or (
    not spec.get("stem_type") and tuple(spec.get("channels", (64,)))[0] != 64
  ):
    return None
  args["output_stride"] = 32 // 2 ** sum(dilate)
  spec.pop("zero_init_residual", None)
  if arch:
    return timm.create_model(arch, **args)
  kinds = {"basic": tr.BasicBlock, "bottleneck": tr.Bottleneck, "resnest": ResNestBottleneck}
  block: Any = spec.pop("block")
  block = kinds[block] if isinstance(block, str) else [kinds[b] for b in block]
  ratio = spec.pop("se_rd_ratio", None)
  if ratio is not None:  # ResNet-RS's way: timm's SE class with its reduction
    spec["attn_layer"] = functools.partial(tr.get_attn(spec["attn_layer"]), rd_ratio=ratio)
  block_args = {k: spec.pop(k) for k in _BLOCK_ARGS if k in spec}
  if spec.get("aa_layer"):  # timm's ResNet takes the class (its stem tests issubclass)
    spec["aa_layer"] = {"avg": nn.AvgPool2d, "blur": BlurPool2d}[spec["aa_layer"]]
  pruned = spec.pop("block_widths", None)
  renamed = {"groups": "cardinality", "width_per_group": "base_width"}
  timm_spec = {renamed.get(k, k): v for k, v in spec.items()}
  if "channels" in timm_spec:
    timm_spec["channels"] = tuple(timm_spec["channels"])
  model = tr.ResNet(block, block_args=block_args, **args, **timm_spec)
  return model if pruned is None else _pruned_as_timm(model, ours)


def _pruned_as_timm(model: nn.Module, ours: dict[str, Any]) -> nn.Module:
  """timm's pruned form of ``model``: ``adapt_model_from_string`` on a description of our net
  of ``ours`` options (each weight's key and shape, timm's format), as timm builds its
  ``ecaresnet50d_pruned`` from a file."""
  from flax import nnx
  from timm.models._prune import adapt_model_from_string

  from flax_resnet.model import ResNet
  from flax_resnet.port.state_dict import to_torch_layout, torch_key

  abstract = nnx.eval_shape(lambda: ResNet(**ours))
  flat = nnx.to_flat_state(nnx.state(abstract, nnx.Param))
  described = [
    f"{torch_key(path)}:{list(to_torch_layout(np.empty(var.get_value().shape, np.int8)).shape)}"
    for path, var in flat
    if path[-1] in ("kernel", "scale")
  ]
  return adapt_model_from_string(model, "***".join(described)).train()
