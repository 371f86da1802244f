"""Every one of timm's ResNet and ResNeSt architectures computes timm's numbers: eval logits and
each stage's maps as close to float64 as timm's own float32 ones (the converter's rule).

The family tests (test_timm*.py) look closer at one net of each kind (train mode, gradients,
odd sizes, folding); this one sweeps the 79 beyond torchvision's ten, timm's own builds, at
one small input. To keep that within CI's time, each net is calibrated on small batches and
our model runs eagerly: compiling the deepest (resnetrs420) costs more than running it once.
"""

import pytest
import timm.models.resnest
import timm.models.resnet
from torch_reference import assert_parity, calibrate, smooth_images, torch

from flax_resnet.port.state_dict import from_torch_state_dict
from flax_resnet.registry import ARCHITECTURES, RESNEST_ARCHITECTURES, TIMM_ARCHITECTURES

# torchvision's ten, which timm builds alike, are held to torchvision's own in test_parity.py.
EVERY = sorted({**TIMM_ARCHITECTURES, **RESNEST_ARCHITECTURES})


def test_the_sweep_holds_every_architecture_of_timms_two_modules():
  theirs = {
    name
    for module in (timm.models.resnet, timm.models.resnest)
    for name in timm.list_models(module=module.__name__.rsplit(".", 1)[1])
  }
  assert set(EVERY) | set(ARCHITECTURES) == theirs and not set(EVERY) & set(ARCHITECTURES)


@pytest.mark.parametrize("name", EVERY)
def test_every_timm_architecture_computes_timms_eval_logits_and_maps(name):
  torch.manual_seed(0)
  reference = calibrate(timm.create_model(name), images=(4, 64, 64))
  model = from_torch_state_dict(reference.state_dict(), name)
  assert_parity(reference, model, smooth_images(1, (1, 64, 64, 3)), jit=False)
