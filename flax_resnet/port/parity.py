"""Numerical comparison of a flax-resnet model with its torchvision (or timm) original."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from flax_resnet.port.torch_files import to_torch_state_dict


def torch_features(torch_model, x_nchw) -> dict[str, Any]:
  """torchvision's or timm's stem (conv1/bn1/relu) and layer outputs, and its logits, as NHWC
  numpy."""
  import torch

  m = torch_model
  timm = hasattr(m, "act1")  # timm's ResNet names its stem ReLU act1 and pools in its head
  with torch.no_grad():
    x = (m.act1 if timm else m.relu)(m.bn1(m.conv1(x_nchw)))
    out = {"stem": x}
    x = m.maxpool(x)
    for i in range(1, 5):
      x = getattr(m, f"layer{i}")(x)
      out[f"layer{i}"] = x
    out["logits"] = m.forward_head(x) if timm else m.fc(torch.flatten(m.avgpool(x), 1))
  return {k: v.permute(0, 2, 3, 1).numpy() if v.ndim == 4 else v.numpy() for k, v in out.items()}


def flax_features(model, x_nhwc, *, jit: bool = True) -> dict[str, np.ndarray]:
  """The same maps and logits from the flax model at highest matmul precision: jitted, or
  with ``jit=False`` op by op (a deep net run once costs less than its compilation)."""
  graphdef, state = nnx.split(model)

  def run(state, x):
    m = nnx.merge(graphdef, state)
    feats = m.features(x)
    return {**feats, "logits": m.forward_head(feats[m.feature_info[-1].name])}

  with jax.default_matmul_precision("highest"):
    out = (jax.jit(run) if jit else run)(state, jnp.asarray(x_nhwc))
    return {k: np.asarray(v) for k, v in out.items()}


# Relative error that any float32 computation of these nets may carry, about 8 ulps of the
# largest logit: the floor under the "twice torch's own error" rule, for nets that torch
# happens to compute almost exactly.
FLOAT32_FLOOR = 1e-6


def smooth_images(seed: int, shape) -> np.ndarray:
  """NHWC float32 images with spatial structure (upsampled noise), roughly unit scale.

  Unlike white noise they drive a ResNet the way photographs do: deep activations
  grow, and so does float32 rounding, which is what verification must see.
  """
  import torch

  n, h, w, c = shape
  rng = np.random.default_rng(seed)
  coarse = torch.from_numpy(rng.standard_normal((n, c, max(h // 8, 2), max(w // 8, 2)))).float()
  fine = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear")
  noise = torch.from_numpy(rng.standard_normal((n, c, h, w))).float()
  return (fine + 0.3 * noise).permute(0, 2, 3, 1).numpy().copy()


def compare(ours: np.ndarray, theirs: np.ndarray) -> dict[str, float]:
  """Max absolute difference, and it relative to the reference's max magnitude."""
  diff = float(np.max(np.abs(ours.astype(np.float64) - theirs)))
  return {"max_abs": diff, "max_rel": diff / max(float(np.max(np.abs(theirs))), 1e-30)}


def top5_agreement(ours: np.ndarray, theirs: np.ndarray) -> float:
  """Fraction of samples whose ordered top-5 classes are identical."""
  k = min(5, ours.shape[-1])
  a, b = np.argsort(-ours, -1)[:, :k], np.argsort(-theirs, -1)[:, :k]
  return float(np.mean(np.all(a == b, -1)))


def top5_as_exact(ours: np.ndarray, exact: np.ndarray, atol: float) -> bool:
  """Whether our ordered top-5 is float64's, up to classes whose float64 logits lie within
  ``atol`` of each other (an order that no computation within the bound can decide)."""
  k = min(5, ours.shape[-1])
  picked = np.take_along_axis(exact, np.argsort(-ours, -1)[:, :k], -1)
  wanted = -np.sort(-exact, -1)[:, :k]
  return bool(np.all(np.abs(picked - wanted) <= atol))


def judge(
  ours: np.ndarray, theirs: np.ndarray, exact: np.ndarray, tolerance: float | None = None
) -> dict[str, Any]:
  """Our float32 output against torch's float32 (``theirs``) and float64 (``exact``) ones.

  The default rule holds us to torchvision's own accuracy: our error against float64
  may be at most twice torch's float32 error against float64, plus ``FLOAT32_FLOOR``
  (all relative to float64's largest magnitude). A fixed ``tolerance`` instead bounds
  the relative difference from torch's float32 output. Either way the ordered top-5
  must be float64's. ``passed`` says whether both hold.
  """
  scale = max(float(np.max(np.abs(exact))), 1e-30)
  ours_err = float(np.max(np.abs(ours.astype(np.float64) - exact))) / scale
  torch_err = float(np.max(np.abs(theirs.astype(np.float64) - exact))) / scale
  vs_torch = compare(ours, theirs)
  if tolerance is None:
    rule, measured, bound = "float64", ours_err, 2 * torch_err + FLOAT32_FLOOR
  else:
    rule, measured, bound = "fixed", vs_torch["max_rel"], tolerance
  top5 = top5_as_exact(ours, exact, 2 * bound * scale)
  return {
    **vs_torch,
    "ours_vs_float64": ours_err,
    "torch_vs_float64": torch_err,
    "rule": rule,
    "bound": bound,
    "top5_as_float64": top5,
    "top5_agreement": top5_agreement(ours, theirs),
    "passed": bool(measured <= bound and top5),
  }


def verify(
  model,
  arch: str | None,
  options: Mapping[str, Any],
  batch: int = 2,
  size: int = 224,
  seed: int = 0,
  tolerance: float | None = None,
) -> dict[str, Any] | None:
  """Loads the model's weights into the matching torchvision or timm model (``twin``), runs
  both, and torch once more in float64, on a fixed batch of ``smooth_images``; ``judge``'s
  verdict, and which library was the ``reference``. None when neither torchvision's nor
  timm's own ResNet builds such a model."""
  import torch

  from flax_resnet.port.twin import is_timms, torch_resnet

  reference = torch_resnet(arch, options, library_only=True)
  if reference is None:
    return None
  reference.load_state_dict(to_torch_state_dict(model), strict=True)
  reference.eval()
  model.eval()
  x = smooth_images(seed, (batch, size, size, model.in_channels))
  x_nchw = torch.from_numpy(x).permute(0, 3, 1, 2)
  with torch.no_grad():
    theirs = reference(x_nchw).numpy()
    exact = reference.double()(x_nchw.double()).numpy()
  ours = flax_features(model, x)["logits"]
  return {
    **judge(ours, theirs, exact, tolerance),
    "batch": [batch, size, size, model.in_channels],
    "seed": seed,
    "input": "smooth_images",
    "reference": "timm" if is_timms(arch, options) else "torchvision",
  }
