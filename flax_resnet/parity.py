"""Numerical comparison of a flax-resnet model with its torchvision original."""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from flax_resnet.convert import to_torch_state_dict, torchvision_model


def torch_features(torch_model, x_nchw) -> dict[str, Any]:
  """torchvision's stem (conv1/bn1/relu) and layer outputs, and its logits, as NHWC numpy."""
  import torch

  m = torch_model
  with torch.no_grad():
    x = m.relu(m.bn1(m.conv1(x_nchw)))
    out = {"stem": x}
    x = m.maxpool(x)
    for i in range(1, 5):
      x = getattr(m, f"layer{i}")(x)
      out[f"layer{i}"] = x
    out["logits"] = m.fc(torch.flatten(m.avgpool(x), 1))
  return {k: v.permute(0, 2, 3, 1).numpy() if v.ndim == 4 else v.numpy() for k, v in out.items()}


def flax_features(model, x_nhwc) -> dict[str, np.ndarray]:
  """The same maps and logits from the flax model, jitted, at highest matmul precision."""
  graphdef, state = nnx.split(model)

  @jax.jit
  def run(state, x):
    m = nnx.merge(graphdef, state)
    feats = m.features(x)
    return {**feats, "logits": m.forward_head(feats[m.feature_info[-1].name])}

  with jax.default_matmul_precision("highest"):
    return {k: np.asarray(v) for k, v in run(state, jnp.asarray(x_nhwc)).items()}


def compare(ours: np.ndarray, theirs: np.ndarray) -> dict[str, float]:
  """Max absolute difference, and it relative to the reference's max magnitude."""
  diff = float(np.max(np.abs(ours.astype(np.float64) - theirs)))
  return {"max_abs": diff, "max_rel": diff / max(float(np.max(np.abs(theirs))), 1e-30)}


def top5_agreement(ours: np.ndarray, theirs: np.ndarray) -> float:
  """Fraction of samples whose ordered top-5 classes are identical."""
  k = min(5, ours.shape[-1])
  a, b = np.argsort(-ours, -1)[:, :k], np.argsort(-theirs, -1)[:, :k]
  return float(np.mean(np.all(a == b, -1)))


def verify(model, arch: str | None, options: Mapping[str, Any], batch: int = 2, size: int = 224,
           seed: int = 0) -> dict[str, Any] | None:
  """Loads the model's weights into the matching torchvision model and compares logits
  on a fixed random batch. None when torchvision has no such model."""
  import torch

  reference = torchvision_model(arch, options)
  if reference is None:
    return None
  reference.load_state_dict(to_torch_state_dict(model), strict=True)
  reference.eval()
  model.eval()
  x = np.random.default_rng(seed).standard_normal(
      (batch, size, size, model.in_channels)).astype(np.float32)
  with torch.no_grad():
    theirs = reference(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
  ours = flax_features(model, x)["logits"]
  return {**compare(ours, theirs), "top5_agreement": top5_agreement(ours, theirs),
          "batch": [batch, size, size, model.in_channels], "seed": seed}
