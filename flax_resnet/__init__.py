"""torchvision's ResNet family in Flax NNX, with torchvision's numbers.

The names below are imported on first use (PEP 562), so that ``import flax_resnet``
and its light modules (``preprocess``, ``cli``, the input pipeline's worker
processes) do not pay for JAX, Flax and orbax until a model is needed.
"""

from __future__ import annotations

import importlib
import importlib.util

from flax_resnet.versions import VERSION

__version__ = VERSION

_WHERE = {
  "flax_resnet.saved_model": ("Metadata", "load", "save"),
  "flax_resnet.port.state_dict": ("ConversionError", "from_torch_state_dict"),
  "flax_resnet.port.torch_files": ("to_torch_state_dict",),
  "flax_resnet.flops": ("count_macs", "xla_flops"),
  "flax_resnet.model": (
    "BasicBlock",
    "BatchNorm",
    "Bottleneck",
    "FeatureInfo",
    "FrozenBatchNorm",
    "ResNestBottleneck",
    "ResNet",
  ),
  "flax_resnet.folding": ("fold_batchnorm",),
  "flax_resnet.pretrained": ("load_pretrained",),
  "flax_resnet.timm_hub": ("load_pretrained_timm",),
  "flax_resnet.preprocess": ("EvalTransform",),
  "flax_resnet.torchvision_weights": ("Weights",),
  "flax_resnet.timm_weights": ("TimmWeights", "get_pretrained_cfg", "list_pretrained"),
  "flax_resnet.registry": ("ARCHITECTURES", "list_models"),
  "flax_resnet.builders": (
    "ResNet18",
    "ResNet34",
    "ResNet50",
    "ResNet101",
    "ResNet152",
    "ResNeXt50_32X4D",
    "ResNeXt101_32X8D",
    "ResNeXt101_64X4D",
    "WideResNet50_2",
    "WideResNet101_2",
    "create_model",
  ),
}
_MODULE_OF = {name: module for module, names in _WHERE.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
  if name in _MODULE_OF:
    value = getattr(importlib.import_module(_MODULE_OF[name]), name)
  elif importlib.util.find_spec(f"flax_resnet.{name}") is not None:  # flax_resnet.model, ...
    value = importlib.import_module(f"flax_resnet.{name}")
  else:
    raise AttributeError(f"module 'flax_resnet' has no attribute {name!r}")
  globals()[name] = value
  return value


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(__all__))
