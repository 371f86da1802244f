"""torchvision (and timm) models whose BatchNorm looks trained, their flax conversions, and
the parity check between the two."""

import copy
import functools
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="parity tests need torch (pip install -e '.[dev]')")
torchvision = pytest.importorskip("torchvision", reason="parity tests need torchvision")

from flax_resnet.port.parity import (  # noqa: E402
  flax_features,
  judge,
  smooth_images,  # noqa: F401 (re-exported for the tests)
  torch_features,
)
from flax_resnet.port.state_dict import from_torch_state_dict  # noqa: E402
from flax_resnet.port.twin import torch_resnet  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def without(*modules: str) -> str:
  """Python source that makes ``modules`` unimportable, as they are where the extra that brings
  them is not installed: a subprocess's first lines (``run_python``)."""
  return "import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in modules)


WITHOUT_TORCH = without("torch", "torchvision")  # Python without the torch extra
WITHOUT_TIMM = without("torch", "torchvision", "timm")  # nor the timm extra


def run_python(
  code: str, *args: str, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess:
  """``python -c code args...`` in the checkout's root, ``env`` added to this environment."""
  return subprocess.run(
    [sys.executable, "-c", code, *args],
    cwd=ROOT,
    env={**os.environ, **(env or {})},
    capture_output=True,
    text=True,
    timeout=600,
  )


def nchw(x: np.ndarray):
  return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()


def calibrate(
  model,
  seed: int = 0,
  randomize_affine: bool = True,
  in_channels: int = 3,
  bn_scale: tuple[float, float] | None = None,
  images: tuple[int, int, int] = (8, 64, 64),
):
  """Gives BatchNorm non-trivial statistics: random affine parameters, then running
  statistics averaged over a few batches, so activations look like a trained net's.

  ``bn_scale`` = (low, high) draws every BatchNorm weight uniformly from that range, as
  in nets whose residual branches all carry weight (their float32 error, torch's
  included, grows with depth); by default each branch's last BatchNorm is kept small.
  ``images`` = (batch, height, width) of the two calibration batches.
  """
  gen = torch.Generator().manual_seed(seed)
  bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
  # Trained ResNets keep each residual branch's last BN scale small (that is what
  # zero_init_residual starts from); with scales near 1 there, a random net's
  # activations and float32 rounding grow with depth, torch's own included.
  last = {
    id(getattr(b, "bn3", None) or b.bn2)
    for b in model.modules()
    if hasattr(b, "bn2") and hasattr(b, "conv2")
  }
  with torch.no_grad():
    for bn in bns:
      if randomize_affine:
        low, high = bn_scale or ((0.0, 0.4) if id(bn) in last else (0.5, 1.5))
        bn.weight.copy_(low + (high - low) * torch.rand(bn.weight.shape, generator=gen))
        bn.bias.copy_(torch.randn(bn.bias.shape, generator=gen) * 0.2)
      bn.reset_running_stats()
      bn.momentum = None  # cumulative average over the calibration batches
    model.train()
    for i in range(2):
      model(nchw(smooth_images(seed + 100 + i, (*images, in_channels))))
  for bn in bns:
    bn.momentum = 0.1
  return model.eval()


@functools.lru_cache(maxsize=2)
def calibrated_pair(
  name: str,
  options: tuple = (),
  randomize_affine: bool = True,
  bn_scale: tuple[float, float] | None = None,
):
  """(torchvision model, converted flax model), both in eval mode; ``options`` are
  flax-resnet's (``port.twin`` builds the torchvision model)."""
  opts = dict(options)
  in_channels = opts.get("in_channels", 3)
  torch.manual_seed(0)
  reference = torch_resnet(name, opts)
  calibrate(
    reference, randomize_affine=randomize_affine, in_channels=in_channels, bn_scale=bn_scale
  )
  dilation = opts.get("replace_stride_with_dilation")
  extra = {"replace_stride_with_dilation": tuple(dilation)} if dilation else {}
  model = from_torch_state_dict(reference.state_dict(), name, **extra)
  model.eval()
  return reference, model


def assert_parity(reference, model, x, *, jit: bool = True):
  """Logits and every feature map as close to float64 as the reference's (torchvision's or
  timm's) float32 ones are.

  The converter's rule (``parity.judge``): our error against a float64 run of the reference
  is at most twice torch's own float32 error plus a floor of 1e-6, relative to the
  map's largest magnitude; the logits' ordered top-5 is float64's. ``jit=False`` runs ours
  op by op.
  """
  ours, theirs = flax_features(model, x, jit=jit), torch_features(reference, nchw(x))
  exact = torch_features(copy.deepcopy(reference).double(), nchw(x).double())
  for key in ("stem", "layer1", "layer2", "layer3", "layer4", "logits"):
    assert ours[key].shape == theirs[key].shape, key
    flat = [a.reshape(len(a), -1) for a in (ours[key], theirs[key], exact[key])]
    verdict = judge(*flat)
    assert verdict["ours_vs_float64"] <= verdict["bound"], (key, verdict)
  assert judge(ours["logits"], theirs["logits"], exact["logits"])["passed"]
