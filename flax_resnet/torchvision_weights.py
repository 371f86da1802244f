"""torchvision's pretrained weights for the ten architectures, as data: no torch needed.

What torchvision 0.29.1's ``ResNet50_Weights`` and the others record (file, published
ImageNet-1K accuracy, eval preprocessing, parameter count, which entry is ``DEFAULT``):
names are checked and ``DEFAULT`` resolved before torch is imported, and a cached
conversion's source hash is checked against the file name's. ``tests/test_pretrained.py``
checks this table against torchvision's own enums, so it cannot drift.
"""

from __future__ import annotations

import os
import re
from typing import NamedTuple

URL_BASE = "https://download.pytorch.org/models/"
HASH_IN_NAME = re.compile(r"-([a-f0-9]*)\.")  # torch.hub's rule for the hash in a file name


def hash_prefix(name: str) -> str | None:
  """The SHA-256 prefix a torchvision file name carries (``resnet18-f37072fd.pth`` ->
  ``f37072fd``), found as torch.hub finds it; None if the name carries none."""
  match = HASH_IN_NAME.search(os.path.basename(name))
  return match[1] if match and match[1] else None


class Weights(NamedTuple):
  """One torchvision weights entry: ``arch`` and ``name`` (``IMAGENET1K_V2``), its file in
  torchvision's download folder (the 8 hex digits after the dash start its SHA-256), the
  published ImageNet-1K acc@1/acc@5 (%), the eval preprocessing (resize the short side,
  centre crop, interpolation) and the parameter count."""

  arch: str
  name: str
  file: str
  acc1: float
  acc5: float
  resize: int
  crop: int
  num_params: int
  interpolation: str = "bilinear"

  @property
  def url(self) -> str:
    """Where torchvision downloads the file from."""
    return URL_BASE + self.file

  @property
  def hash_prefix(self) -> str | None:
    """The SHA-256 prefix in the file's name (torch.hub's rule)."""
    return hash_prefix(self.file)

  @property
  def is_default(self) -> bool:
    """Whether torchvision's ``DEFAULT`` for ``arch`` is this entry."""
    return DEFAULT[self.arch] == self.name


_W = Weights
# fmt: off
TABLE: tuple[Weights, ...] = (
  _W("resnet18", "IMAGENET1K_V1", "resnet18-f37072fd.pth", 69.758, 89.078, 256, 224, 11_689_512),
  _W("resnet34", "IMAGENET1K_V1", "resnet34-b627a593.pth", 73.314, 91.42, 256, 224, 21_797_672),
  _W("resnet50", "IMAGENET1K_V1", "resnet50-0676ba61.pth", 76.13, 92.862, 256, 224, 25_557_032),
  _W("resnet50", "IMAGENET1K_V2", "resnet50-11ad3fa6.pth", 80.858, 95.434, 232, 224, 25_557_032),
  _W("resnet101", "IMAGENET1K_V1", "resnet101-63fe2227.pth", 77.374, 93.546, 256, 224, 44_549_160),
  _W("resnet101", "IMAGENET1K_V2", "resnet101-cd907fc2.pth", 81.886, 95.78, 232, 224, 44_549_160),
  _W("resnet152", "IMAGENET1K_V1", "resnet152-394f9c45.pth", 78.312, 94.046, 256, 224, 60_192_808),
  _W("resnet152", "IMAGENET1K_V2", "resnet152-f82ba261.pth", 82.284, 96.002, 232, 224, 60_192_808),
  _W("resnext50_32x4d", "IMAGENET1K_V1", "resnext50_32x4d-7cdf4587.pth", 77.618, 93.698, 256, 224, 25_028_904),
  _W("resnext50_32x4d", "IMAGENET1K_V2", "resnext50_32x4d-1a0047aa.pth", 81.198, 95.34, 232, 224, 25_028_904),
  _W("resnext101_32x8d", "IMAGENET1K_V1", "resnext101_32x8d-8ba56ff5.pth", 79.312, 94.526, 256, 224, 88_791_336),
  _W("resnext101_32x8d", "IMAGENET1K_V2", "resnext101_32x8d-110c445d.pth", 82.834, 96.228, 232, 224, 88_791_336),
  _W("resnext101_64x4d", "IMAGENET1K_V1", "resnext101_64x4d-173b62eb.pth", 83.246, 96.454, 232, 224, 83_455_272),
  _W("wide_resnet50_2", "IMAGENET1K_V1", "wide_resnet50_2-95faca4d.pth", 78.468, 94.086, 256, 224, 68_883_240),
  _W("wide_resnet50_2", "IMAGENET1K_V2", "wide_resnet50_2-9ba9bcbe.pth", 81.602, 95.758, 232, 224, 68_883_240),
  _W("wide_resnet101_2", "IMAGENET1K_V1", "wide_resnet101_2-32ee1156.pth", 78.848, 94.284, 256, 224, 126_886_696),
  _W("wide_resnet101_2", "IMAGENET1K_V2", "wide_resnet101_2-d733dc28.pth", 82.51, 96.02, 232, 224, 126_886_696),
)
# fmt: on
DEFAULT = {
  "resnet18": "IMAGENET1K_V1",
  "resnet34": "IMAGENET1K_V1",
  "resnet50": "IMAGENET1K_V2",
  "resnet101": "IMAGENET1K_V2",
  "resnet152": "IMAGENET1K_V2",
  "resnext50_32x4d": "IMAGENET1K_V2",
  "resnext101_32x8d": "IMAGENET1K_V2",
  "resnext101_64x4d": "IMAGENET1K_V1",
  "wide_resnet50_2": "IMAGENET1K_V2",
  "wide_resnet101_2": "IMAGENET1K_V2",
}


def list_pretrained(arch: str | None = None) -> list[Weights]:
  """torchvision's weights entries, of every architecture or of ``arch`` only."""
  if arch is not None and all(w.arch != arch for w in TABLE):
    raise ValueError(
      f"no torchvision weights for arch={arch!r}; architectures with weights: "
      f"{', '.join(dict.fromkeys(w.arch for w in TABLE))}"
    )
  return [w for w in TABLE if arch in (None, w.arch)]


def find(arch: str, name: str) -> Weights | None:
  """The entry ``name`` (``DEFAULT`` resolved) of ``arch``, or None if torchvision has none."""
  name = DEFAULT.get(arch, name) if name == "DEFAULT" else name
  return next((w for w in TABLE if (w.arch, w.name) == (arch, name)), None)
