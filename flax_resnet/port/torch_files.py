"""torch's files: reading .pth/.safetensors, torchvision's weights through torch.hub's cache
(their SHA-256 checked), and models as torch tensors to write. torch is imported inside the
functions that need it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flax_resnet.errors import MissingExtra, one_line
from flax_resnet.files import sha256
from flax_resnet.model import ResNet
from flax_resnet.port.state_dict import ConversionError, to_state_dict
from flax_resnet.torchvision_weights import hash_prefix


class DownloadError(ConversionError):
  """torchvision's file ``url`` could not be downloaded (``reason``); ``file`` is where
  torch.hub's cache would keep it, where a copy fetched elsewhere may be placed."""

  def __init__(self, weights: str, url: str, file: Path, reason: Exception):
    super().__init__(
      f"$weights: could not download {url} ({reason}). Offline, fetch that file "
      f"elsewhere and place it at {file}",
      weights=weights,
    )
    self.url, self.file, self.reason = url, file, reason


def require_torch(what: str) -> None:
  """Imports torch and torchvision, or raises ``MissingExtra`` saying that ``what`` needs
  the ``torch`` extra: one line, where Python would print a ModuleNotFoundError's traceback
  from deep inside the conversion."""
  try:
    import torch  # noqa: F401
    import torchvision  # noqa: F401
  except ModuleNotFoundError as e:
    raise MissingExtra(
      f"{what} needs torch and torchvision, and {e.name} is not installed: "
      "pip install 'flax-resnet[torch]'"
    ) from None


def require_timm(what: str) -> None:
  """Imports torch, torchvision and timm, or raises ``MissingExtra`` in one line naming the
  ``timm`` extra, which installs all three (as ``require_torch`` names ``torch``)."""
  try:
    import timm  # noqa: F401
    import torch  # noqa: F401
    import torchvision  # noqa: F401
  except ModuleNotFoundError as e:
    raise MissingExtra(
      f"{what} needs torch, torchvision and timm, and {e.name} is not installed: "
      "pip install 'flax-resnet[timm]'"
    ) from None


def to_torch_state_dict(
  model: ResNet, num_batches_tracked: int | Mapping[str, int] = 0
) -> dict[str, Any]:
  """The model's weights as a torchvision state dict of torch tensors, strict-loadable
  (``state_dict.to_state_dict``'s keys and values)."""
  import torch

  return {k: torch.from_numpy(v) for k, v in to_state_dict(model, num_batches_tracked).items()}


def load_file(path: Path) -> Any:
  """A .pth/.pt (weights_only, never an unsafe fallback) or .safetensors file; a
  ``ConversionError`` naming the file and what is wrong with it otherwise."""
  if not path.is_file():
    raise ConversionError(f"{path}: no such file")
  if path.stat().st_size == 0:
    raise ConversionError(f"{path}: empty file")
  if path.suffix == ".safetensors":
    return _load_safetensors(path)
  import pickle

  import torch

  try:
    return torch.load(path, map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as e:
    if "weights only load failed" in str(e).lower() and "unsupported global" in str(e).lower():
      raise ConversionError(
        f"{path}: refused: the file holds Python objects other than tensors, "
        "which could run code when loaded; only plain state dicts are accepted"
      ) from e
    raise ConversionError(f"{path}: not a PyTorch checkpoint ({one_line(e)})") from e
  except (RuntimeError, EOFError, OSError) as e:
    raise ConversionError(f"{path}: truncated or corrupt ({one_line(e)})") from e
  except Exception as e:  # the weights-only unpickler fails on junk with assorted errors
    raise ConversionError(
      f"{path}: not a PyTorch checkpoint ({type(e).__name__}: {one_line(e)})"
    ) from e


def _load_safetensors(path: Path) -> dict:
  from safetensors import SafetensorError
  from safetensors.torch import load_file as load_st

  try:
    return load_st(path)
  except (SafetensorError, OSError, ValueError) as e:
    raise ConversionError(f"{path}: truncated or corrupt safetensors file ({e})") from e


def check_hash(file: Path, name: str | None = None) -> str:
  """The SHA-256 of ``file``; a ``ConversionError`` naming the file and both hashes unless
  it starts with the prefix in ``name`` (a URL or file name; default the file's own name)."""
  digest = sha256(file)
  prefix = hash_prefix(name or file.name)
  if prefix and not digest.startswith(prefix):
    raise ConversionError(
      f"{file}: SHA-256 {digest} does not start with {prefix}, the hash in "
      "torchvision's file name: not torchvision's file (another model, or a "
      "damaged download); remove it and fetch it again"
    )
  return digest


def file_source(path: Path) -> dict[str, Any]:
  """The metadata's ``source`` of a state-dict file: its absolute path and SHA-256."""
  return {"kind": "file", "file": str(path.absolute()), "sha256": sha256(path)}


def fetch_weights(name: str, arch: str | None):
  """(torchvision weights entry, its state dict, the metadata's ``source``: name, URL, the
  file in torch.hub's cache and its SHA-256), through torch.hub's cache."""
  import torch
  from torchvision.models import get_model_weights, get_weight

  if "." not in name and not arch:
    raise ConversionError(
      "$weights without a 'ModelName_Weights.' prefix needs an arch", weights=name
    )
  try:
    weights = get_weight(name) if "." in name else get_model_weights(arch)[name]
  except (KeyError, ValueError, AttributeError) as e:
    raise ConversionError(f"$weights: not a torchvision weights entry ({e})", weights=name) from e
  file = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
  # torch.hub checks the hash only of what it downloads; a file placed by hand is checked here.
  digest = check_hash(file, weights.url) if file.is_file() else None
  try:
    state = torch.hub.load_state_dict_from_url(
      weights.url, progress=True, check_hash=True, weights_only=True, map_location="cpu"
    )
  except OSError as e:  # URLError is an OSError
    raise DownloadError(name, weights.url, file, e) from None  # .reason keeps e
  if digest is None and file.is_file():
    digest = check_hash(file, weights.url)
  source = {
    "kind": "torchvision_weights",
    "name": str(weights),
    "url": weights.url,
    "file": str(file),
    "sha256": digest,
  }
  return weights, state, source
