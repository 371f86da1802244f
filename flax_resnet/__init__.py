"""torchvision's ResNet family in Flax NNX, with torchvision's numbers."""

from flax_resnet.saved_model import Metadata, load, save
from flax_resnet.torch_port import ConversionError, from_torch_state_dict, to_torch_state_dict
from flax_resnet.flops import count_macs, xla_flops
from flax_resnet.model import (BasicBlock, BatchNorm, Bottleneck, FeatureInfo, FrozenBatchNorm,
                               ResNet)
from flax_resnet.preprocess import EvalTransform
from flax_resnet.registry import (ARCHITECTURES, ResNet18, ResNet34, ResNet50, ResNet101,
                                  ResNet152, ResNeXt50_32X4D, ResNeXt101_32X8D,
                                  ResNeXt101_64X4D, WideResNet50_2, WideResNet101_2,
                                  create_model, list_models)

__version__ = "0.1.0"

__all__ = [
    "ARCHITECTURES", "BasicBlock", "BatchNorm", "Bottleneck", "ConversionError", "EvalTransform",
    "FeatureInfo", "FrozenBatchNorm", "Metadata", "ResNet", "ResNet18", "ResNet34", "ResNet50", "ResNet101",
    "ResNet152", "ResNeXt50_32X4D", "ResNeXt101_32X8D", "ResNeXt101_64X4D", "WideResNet50_2",
    "WideResNet101_2", "count_macs", "create_model", "from_torch_state_dict", "list_models",
    "load", "save", "to_torch_state_dict", "xla_flops",
]
