"""Every one of timm's ResNet and ResNeSt architectures computes timm's numbers: eval logits and
each stage's maps as close to float64 as timm's own float32 ones (the converter's rule).

The family tests (test_timm*.py) look closer at one net of each kind (train mode, gradients,
odd sizes, folding); this one sweeps the 79 beyond torchvision's ten, timm's own builds, at
one small input. To keep that within CI's time, each net is calibrated on small batches and
our model runs eagerly: compiling the deepest (resnetrs420) costs more than running it once.
"""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import timm.models.resnest
import timm.models.resnet
from torch_reference import calibrate, nchw, smooth_images, torch

from flax_resnet.port.parity import judge, torch_features
from flax_resnet.port.state_dict import from_torch_state_dict
from flax_resnet.registry import ARCHITECTURES, RESNEST_ARCHITECTURES, TIMM_ARCHITECTURES

# torchvision's ten, which timm builds alike, are held to torchvision's own in test_parity.py.
EVERY = sorted({**TIMM_ARCHITECTURES, **RESNEST_ARCHITECTURES})
MAPS = ("stem", "layer1", "layer2", "layer3", "layer4", "logits")


def test_the_sweep_holds_every_architecture_of_timms_two_modules():
  theirs = {
    name
    for module in (timm.models.resnet, timm.models.resnest)
    for name in timm.list_models(module=module.__name__.rsplit(".", 1)[1])
  }
  assert set(EVERY) | set(ARCHITECTURES) == theirs and not set(EVERY) & set(ARCHITECTURES)


def eager_features(model, x: np.ndarray) -> dict[str, np.ndarray]:
  """Our stages' maps and logits, op by op (no compilation), at highest matmul precision."""
  with jax.default_matmul_precision("highest"):
    maps = model.features(jnp.asarray(x))
    logits = model.forward_head(maps[model.feature_info[-1].name])
  return {**{k: np.asarray(v) for k, v in maps.items()}, "logits": np.asarray(logits)}


@pytest.mark.parametrize("name", EVERY)
def test_every_timm_architecture_computes_timms_eval_logits_and_maps(name):
  torch.manual_seed(0)
  reference = calibrate(timm.create_model(name), images=(4, 64, 64))
  model = from_torch_state_dict(reference.state_dict(), name)
  x = smooth_images(1, (1, 64, 64, 3))
  ours, theirs = eager_features(model, x), torch_features(reference, nchw(x))
  exact = torch_features(copy.deepcopy(reference).double(), nchw(x).double())
  for key in MAPS:
    assert ours[key].shape == theirs[key].shape, key
    verdict = judge(*(a.reshape(len(a), -1) for a in (ours[key], theirs[key], exact[key])))
    assert verdict["ours_vs_float64"] <= verdict["bound"], (key, verdict)
  assert judge(ours["logits"], theirs["logits"], exact["logits"])["passed"]
