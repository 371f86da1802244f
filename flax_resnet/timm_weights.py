"""timm's pretrained weights for its ResNet family, as data: no torch, no timm needed.

What timm 1.0.31's ``get_pretrained_cfg`` records for every pretrained tag of
``timm/models/resnet.py`` and ``resnest.py`` (its Hugging Face hub repository, classes,
eval input size and preprocessing, licence), with the published ImageNet top-1/top-5 of
timm's ``results/results-imagenet.csv``, one row per image size it was measured at.
Names are timm's: ``"resnet50d.ra4_e3600_r224_in1k"`` is architecture ``resnet50d``, tag
``ra4_e3600_r224_in1k``; a name without a tag means the architecture's default, timm's
first tag (``DEFAULT``). Archs listed here may still be unbuilt (``registry``): this
table is timm's, building is separate.

``tests/timm_table.py`` writes ``TABLE`` from timm and the results csv (kept in
``tests/data/``), and ``tests/test_timm_table.py`` checks it against timm's own
``get_pretrained_cfg`` and ``list_pretrained``, so it cannot drift.
"""

from __future__ import annotations

import fnmatch
import re
from typing import NamedTuple

HUB_ORGANISATION = "timm"  # every tag's hub repository is timm/ARCH.TAG
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
INCEPTION_MEAN = INCEPTION_STD = (0.5, 0.5, 0.5)


class Result(NamedTuple):
  """One published ImageNet-1K evaluation of a tag: the image size, top-1 and top-5 (%),
  and the crop fraction it was measured with (timm's results table)."""

  img_size: int
  top1: float
  top5: float
  crop_pct: float


class TimmWeights(NamedTuple):
  """One pretrained tag of timm, as ``timm.models.get_pretrained_cfg(name)`` describes it:
  classes (0: a headless feature extractor), the train ``input_size`` and the eval
  ``test_input_size`` (None: the same), ``crop_pct``/``test_crop_pct``, ``crop_mode``,
  ``interpolation``, ``mean``/``std``, ``license``, and its published ``results``, best
  first (empty where timm's results table has none)."""

  arch: str
  tag: str
  num_classes: int
  input_size: tuple[int, int, int]
  test_input_size: tuple[int, int, int] | None
  crop_pct: float
  test_crop_pct: float | None
  crop_mode: str
  interpolation: str
  mean: tuple[float, ...]
  std: tuple[float, ...]
  license: str | None
  results: tuple[Result, ...] = ()

  @property
  def name(self) -> str:
    """timm's name for the tag: ``ARCH.TAG``."""
    return f"{self.arch}.{self.tag}"

  @property
  def hf_hub_id(self) -> str:
    """The Hugging Face hub repository that holds the weights (``timm/ARCH.TAG``)."""
    return f"{HUB_ORGANISATION}/{self.name}"

  @property
  def is_default(self) -> bool:
    """Whether this is what the tag-less name ``arch`` means (timm's first tag)."""
    return DEFAULT[self.arch] == self.tag

  @property
  def best(self) -> Result | None:
    """The published result with the highest top-1, or None if there is none."""
    return max(self.results, key=lambda r: r.top1, default=None)


def _r(*rows: tuple[int, float, float, float]) -> tuple[Result, ...]:
  return tuple(Result(*row) for row in rows)


_T, IM, IS, HALF = TimmWeights, IMAGENET_MEAN, IMAGENET_STD, INCEPTION_MEAN
# BEGIN TABLE: written by tests/timm_table.py; do not edit by hand
# fmt: off
TABLE: tuple[TimmWeights, ...] = (
  _T("resnet10t", "c3_in1k", 1000, (3, 176, 176), (3, 224, 224), 0.875, 0.95, "center", "bicubic", IM, IS, "apache-2.0", _r((224, 68.354, 88.034, 0.95), (176, 66.724, 86.976, 0.875))),
  _T("resnet14t", "c3_in1k", 1000, (3, 176, 176), (3, 224, 224), 0.875, 0.95, "center", "bicubic", IM, IS, "apache-2.0", _r((224, 72.242, 90.318, 0.95), (176, 71.318, 89.68, 0.875))),
  _T("resnet18", "a1_in1k", 1000, (3, 224, 224), (3, 288, 288), 0.95, 1.0, "center", "bicubic", IM, IS, "apache-2.0", _r((288, 73.164, 91.054, 1.0), (224, 71.504, 90.086, 0.95))),
  _T("resnet18", "a2_in1k", 1000, (3, 224, 224), (3, 288, 288), 0.95, 1.0, "center", "bicubic", IM, IS, "apache-2.0", _r((288, 72.364, 90.62, 1.0), (224, 70.634, 89.486, 0.95))),
  _T("resnet18", "a3_in1k", 1000, (3, 160, 160), (3, 224, 224), 0.95, 0.95, "center", "bicubic", IM, IS, "apache-2.0", _r((224, 68.25, 88.172, 0.95), (160, 65.67, 86.268, 0.95))),
  _T("resnet18", "tv_in1k", 1000, (3, 224, 224), None, 0.875, None, "center", "bilinear", IM, IS, "bsd-3-clause", _r((224, 69.752, 89.082, 0.875))),
  _T("resnet18", "fb_ssl_yfcc100m_ft_in1k", 1000, (3, 224, 224), None, 0.875, None, "center", "bilinear", IM, IS, "cc-by-nc-4.0", _r((224, 72.636, 91.416, 0.875))),
  _T("resnet18", "fb_swsl_ig1b_ft_in1k", 1000, (3, 224, 224), None, 0.875, None, "center", "bilinear", IM, IS, "cc-by-nc-4.0", _r((224, 73.286, 91.754, 0.875))),
  _T("resnet18", "gluon_in1k", 1000, (3, 224, 224), None, 0.875, None, "center", "bicubic", IM, IS, "apache-2.0", _r((224, 70.844, 89.75, 0.875))),
  _T("resnet18d", "ra2_in1k", 1000, (3, 224, 224), (3, 288, 288), 0.875, 0.95, "center", "bicubic", IM, IS, "apache-2.0", _r((288, 73.79, 91.834, 0.95), (224, 72.296, 90.682, 0.875))),
  _T("resnet18d", "ra4_e3600_r224_in1k", 1000, (3, 224, 224), (3, 288, 288), 0.9, 1.0, "center", "bicubic", HALF, HALF, "apache-2.0", _r((288, 76.012, 92.784, 1.0), (224, 74.356, 91.826, 0.9))),
  _T("resnet34", "a1_in1k", 1000, (3, 224, 224), (3, 288, 288), 0.95, 1.0, "center", "bicubic", IM, IS, "apache-2.0", _r((288, 77.93, 93.758, 1.0), (224, 76.42, 92.896, 0.95))),
  _T("resnet34", "a2_in1k", 1000, (3, 224, 224), (3, 288, 288), 0.95, 1.0, "center", "bicubic", IM, IS, "apache-2.0", _r((288, 77.15, 93.288, 1.0), (224, 75.52, 92.454, 0.95))),
  _T("resnet34", "a3_in1k", 1000, (3, 160, 160), (3, 224, 224), 0.95, 0.95, "center", "bicubic", IM, IS, "apache-2.0", _r((224, 72.996, 91.116, 0.95), (160, 70.58, 89.54, 0.95))),
  _T("resnet34", "bt_in1k", 1000, (3, 224, 224), (3, 288, 288), 0.875, 0.95, "center", "bicubic", IM, IS, "apache-2.0", _r((288, 76.506, 93.342, 0.95), (224, 75.176, 92.166, 0.875))),
  _T("resnet34", "ra4_e3600_r224_in1k", 1000, (3, 224, 224), (3, 288, 288), 0.9, 1.0, "center", "bicubic", HALF, HALF, "apache-2.0", _r((288, 78.972, 94.454, 1.0), (224, 77.492, 93.498, 0.9))),
  _T("resnet34", "tv_in1k", 1000, (3, 224, 224), None, 0.875, None, "center", "bilinear", IM, IS, "bsd-3-clause", _r((224, 73.298, 91.422, 0.875))),
  _T("resnet34", "gluon_in1k", 1000, (3, 224, 224), None, 0.875, None, "center", "bicubic", IM, IS, "apache-2.0", _r((224, 74.574, 91.988, 0.875))),
  _T("resnet34d", "ra2_in1k", 1000, (3, 224, 224), (3, 288, 288), 0.875, 0.95, "center", "bicubic", IM, IS, "apache-2.0", _r((288, 78.44, 94.348, 0.95), (224, 77.108, 93.372, 0.875))),
  _T("resnet26", "bt_in1k", 1000, (3, 224, 224), (3, 288, 288), 0.875, 0.95, "center", "bicubic", IM, IS, "apache-2.0", _r((288, 76.384, 93.178, 0.95), (224, 75.298, 92.578, 0.875))),
  _T("resnet26d", "bt_in1k", 1000, (3, 224, 224), (3, 288, 288), 0.875, 0.95, "center", "bicubic", IM, IS, "apache-2.0", _r((288, 77.422, 93.634, 0.95), (224, 76.698, 93.156, 0.875))),
  _T("resnet26t", "ra2_in1k", 1000, (3, 256, 256), (3, 320, 320), 0.94, 1.0, "center", "bicubic", IM, IS, "apache-2.0", _r((320, 78.33, 94.136, 1.0), (256, 77.878, 93.838, 0.94))),
  _T("resnet50", "a1_in1k", 1000, (3, 224, 224), (3, 288, 288), 0.95, 1.0, "center", "bicubic", IM, IS, "apache-2.0", _r((288, 81.24, 95.112, 1.0), (224, 80.382, 94.598, 0.95))),
  _T("resnet50", "a1h_in1k", 1000, (3, 176, 176), (3, 224, 224), 0.9, 1.0, "center", "bicubic", IM, IS, "apache-2.0", _r((224, 80.654, 95.312, 1.0), (176, 79.264, 94.498, 0.9))),
  _T("resnet50", "a2_in1k", 1000, (3, 224, 224), (3, 288, 288), 0.95, 1.0, "center", "bicubic", IM, IS, "apache-2.0", _r((288, 80.774, 94.978, 1.0), (224, 79.828, 94.56, 0.95))),
  _T("resnet50", "a3_in1k", 1000, (3, 160, 160), (3, 224, 224), 0.95, 0.95, "center", "bicubic", IM, IS, "apache-2.0", _r((224, 78.052, 93.78, 0.95), (160, 75.994, 92.494, 0.95))),
  _T("resnet50", "b1k_in1k", 1000, (3, 224, 224), (3, 288, 288), 0.95, 1.0, "center", "bicubic", IM, IS, "apache-2.0", _r((288, 80.708, 95.43, 1.0), (224, 79.564, 94.622, 0.95))),
  _T("resnet50", "b2k_in1k", 1000, (3, 224, 224), (3, 288, 288), 0.95, 1.0, "center", "bicubic", IM, IS, "apache-2.0", _r((288, 80.466, 95.306, 1.0), (224, 79.388, 94.58, 0.95))),
  _T("resnet50", "c1_in1k", 1000, (3, 224, 224), (3, 288, 288), 0.95, 1.0, "center", "bicubic", IM, IS, "apache-2.0", _r((288, 80.928, 95.554, 1.0), (224, 79.766, 94.954, 0.95))),
  _T("resnet50", "c2_in1k", 1000, (3, 224, 224), (3, 288, 288), 0.95, 1.0, "center", "bicubic", IM, IS, "apache-2.0", _r((288, 80.862, 95.53, 1.0), (224, 79.868, 94.862, 0.95))),
  _T("resnet50", "d_in1k", 1000, (3, 224, 224), (3, 288, 288), 0.95, 1.0, "center", "bicubic", IM, IS, "apache-2.0", _r((288, 81.012, 95.456, 1.0), (224, 79.904, 94.666, 0.95))),
  _T("resnet50", "ram_in1k", 1000, (3, 224, 224), (3, 288, 288), 0.875, 0.95, "center", "bicubic", IM, IS, "apache-2.0", _r((288, 79.982, 95.038, 0.95), (224, 79.034, 94.386, 0.875))),
  _T("resnet50", "am_in1k", 1000, (3, 224, 224), None, 0.875, None, "center", "bicubic", IM, IS, "apache-2.0", _r((224, 79.004, 94.392, 0.875))),
  _T("resnet50", "ra_in1k", 1000, (3, 224, 224), (3, 288, 288), 0.875, 0.95, "center", "bicubic", IM, IS, "apache-2.0", _r((288, 79.864, 94.97, 0.95), (224, 78.82, 94.314, 0.875))),
  _T("resnet50", "bt_in1k", 1000, (3, 224, 224), (3, 288, 288), 0.875, 0.95, "center", "bicubic", IM, IS, "apache-2.0", _r((288, 79.652, 94.908, 0.95), (224, 78.444, 94.274, 0.875))),
  _T("resnet50", "tv_in1k", 1000, (3, 224, 224), None, 0.875, None, "center", "bilinear", IM, IS, "bsd-3-clause", _r((224, 76.156, 92.866, 0.875))),
  _T("resnet50", "tv2_in1k", 1000, (3, 176, 176), (3, 224, 224), 0.875, 0.965, "center", "bilinear", IM, IS, "bsd-3-clause", _r((224, 80.846, 95.43, 0.965), (176, 79.434, 94.64, 0.875))),
  _T("resnet50", "bamboo", 0, (3, 224, 224), None, 1.0, None, "center", "bicubic", IM, IS, None),
  _T("resnet50", "fb_ssl_yfcc100m_ft_in1k", 1000, (3, 224, 224), None, 0.875, None, "center", "bilinear", IM, IS, "cc-by-nc-4.0", _r((224, 79.252, 94.826, 0.875))),
  _T("resnet50", "fb_swsl_ig1b_ft_in1k", 1000, (3, 224, 224), None, 0.875, None, "center", "bilinear", IM, IS, "cc-by-nc-4.0", _r((224, 81.146, 95.98, 0.875))),
  _T("resnet50", "gluon_in1k", 1000, (3, 224, 224), None, 0.875, None, "center", "bicubic", IM, IS, "apache-2.0", _r((224, 77.58, 93.704, 0.875))),
  _T("resnet50d", "ra2_in1k", 1000, (3, 224, 224), (3, 288, 288), 0.875, 0.95, "center", "bicubic", IM, IS, "apache-2.0", _r((288, 81.354, 95.742, 0.95), (224, 80.546, 95.16, 0.875))),
  _T("resnet50d", "ra4_e3600_r224_in1k", 1000, (3, 224, 224), (3, 288, 288), 0.95, 1.0, "center", "bicubic", HALF, HALF, "apache-2.0", _r((288, 81.84, 95.926, 1.0), (224, 80.956, 95.38, 0.95))),
  _T("resnet50d", "a1_in1k", 1000, (3, 224, 224), (3, 288, 288), 0.95, 1.0, "center", "bicubic", IM, IS, "apache-2.0", _r((288, 81.466, 95.218, 1.0), (224, 80.73, 94.678, 0.95))),
  _T("resnet50d", "a2_in1k", 1000, (3, 224, 224), (3, 288, 288), 0.95, 1.0, "center", "bicubic", IM, IS, "apache-2.0", _r((288, 81.164, 95.1, 1.0), (224, 80.268, 94.642, 0.95))),
  _T("resnet50d", "a3_in1k", 1000, (3, 160, 160), (3, 224, 224), 0.95, 0.95, "center", "bicubic", IM, IS, "apache-2.0", _r((224, 78.742, 94.236, 0.95), (160, 77.222, 93.256, 0.95))),
  _T("resnet50d", "gluon_in1k", 1000, (3, 224, 224), None, 0.875, None, "center", "bicubic", IM, IS, "apache-2.0", _r((224, 79.08, 94.458, 0.875))),
  _T("resnet101", "a1h_in1k", 1000, (3, 224, 224), (3, 288, 288), 0.95, 1.0, "center", "bicubic", IM, IS, "apache-2.0", _r((288, 82.796, 96.324, 1.0), (224, 81.95, 95.76, 0.95))),
  _T("resnet101", "a1_in1k", 1000, (3, 224, 224), (3, 288, 288), 0.95, 1.0, "center", "bicubic", IM, IS, "apache-2.0", _r((288, 82.326, 95.63, 1.0), (224, 81.494, 95.164, 0.95))),
  _T("resnet101", "a2_in1k", 1000, (3, 224, 224), (3, 288, 288), 0.95, 1.0, "center", "bicubic", IM, IS, "apache-2.0", _r((288, 82.218, 95.74, 1.0), (224, 81.344, 95.198, 0.95))),
  _T("resnet101", "a3_in1k", 1000, (3, 160, 160), (3, 224, 224), 0.95, 0.95, "center", "bicubic", IM, IS, "apache-2.0", _r((224, 79.836, 94.608, 0.95), (160, 77.928, 93.686, 0.95))),
  _T("resnet101", "tv_in1k", 1000, (3, 224, 224), None, 0.875, None, "center", "bilinear", IM, IS, "bsd-3-clause", _r((224, 77.404, 93.552, 0.875))),
  _T("resnet101", "tv2_in1k", 1000, (3, 176, 176), (3, 224, 224), 0.875, 0.965, "center", "bilinear", IM, IS, "bsd-3-clause", _r((224, 81.906, 95.768, 0.965), (176, 79.908, 94.606, 0.875))),
  _T("resnet101", "gluon_in1k", 1000, (3, 224, 224), None, 0.875, None, "center", "bicubic", IM, IS, "apache-2.0", _r((224, 79.306, 94.538, 0.875))),
  _T("resnet101d", "ra2_in1k", 1000, (3, 256, 256), (3, 320, 320), 0.95, 1.0, "center", "bicubic", IM, IS, "apache-2.0", _r((320, 83.02, 96.456, 1.0), (256, 82.254, 96.07, 0.95))),
  _T("resnet101d", "gluon_in1k", 1000, (3, 224, 224), None, 0.875, None, "center", "bicubic", IM, IS, "apache-2.0", _r((224, 80.466, 95.034, 0.875))),
  _T("resnet152", "a1h_in1k", 1000, (3, 224, 224), (3, 288, 288), 0.95, 1.0, "center", "bicubic", IM, IS, "apache-2.0", _r((288, 83.494, 96.522, 1.0), (224, 82.818, 96.124, 0.95))),
  _T("resnet152", "a1_in1k", 1000, (3, 224, 224), (3, 288, 288), 0.95, 1.0, "center", "bicubic", IM, IS, "apache-2.0", _r((288, 82.742, 95.734, 1.0), (224, 81.998, 95.294, 0.95))),
  _T("resnet152", "a2_in1k", 1000, (3, 224, 224), (3, 288, 288), 0.95, 1.0, "center", "bicubic", IM, IS, "apache-2.0", _r((288, 82.614, 95.748, 1.0), (224, 81.764, 95.27, 0.95))),
  _T("resnet152", "a3_in1k", 1000, (3, 160, 160), (3, 224, 224), 0.95, 0.95, "center", "bicubic", IM, IS, "apache-2.0", _r((224, 80.548, 95.004, 0.95), (160, 78.896, 94.14, 0.95))),
  _T("resnet152", "tv_in1k", 1000, (3, 224, 224), None, 0.875, None, "center", "bilinear", IM, IS, "bsd-3-clause", _r((224, 78.33, 94.046, 0.875))),
  _T("resnet152", "tv2_in1k", 1000, (3, 176, 176), (3, 224, 224), 0.875, 0.965, "center", "bilinear", IM, IS, "bsd-3-clause", _r((224, 82.294, 96.0, 0.965), (176, 80.222, 94.65, 0.875))),
  _T("resnet152", "gluon_in1k", 1000, (3, 224, 224), None, 0.875, None, "center", "bicubic", IM, IS, "apache-2.0", _r((224, 79.712, 94.72, 0.875))),
  _T("resnet152d", "ra2_in1k", 1000, (3, 256, 256), (3, 320, 320), 0.95, 1.0, "center", "bicubic", IM, IS, "apache-2.0", _r((320, 83.684, 96.75, 1.0), (256, 83.16, 96.37, 0.95))),
  _T("resnet152d", "gluon_in1k", 1000, (3, 224, 224), None, 0.875, None, "center", "bicubic", IM, IS, "apache-2.0", _r((224, 80.476, 95.194, 0.875))),
  _T("resnet200d", "ra2_in1k", 1000, (3, 256, 256), (3, 320, 320), 0.95, 1.0, "center", "bicubic", IM, IS, "apache-2.0", _r((320, 83.976, 96.82, 1.0), (256, 83.25, 96.552, 0.95))),
  _T("wide_resnet50_2", "racm_in1k", 1000, (3, 224, 224), (3, 288, 288), 0.875, 0.95, "center", "bicubic", IM, IS, "apache-2.0", _r((288, 82.26, 96.062, 0.95), (224, 81.466, 95.544, 0.875))),
  _T("wide_resnet50_2", "tv_in1k", 1000, (3, 224, 224), None, 0.875, None, "center", "bilinear", IM, IS, "bsd-3-clause", _r((224, 78.486, 94.084, 0.875))),
  _T("wide_resnet50_2", "tv2_in1k", 1000, (3, 176, 176), (3, 224, 224), 0.875, 0.965, "center", "bilinear", IM, IS, "bsd-3-clause", _r((224, 81.612, 95.766, 0.965), (176, 80.442, 95.076, 0.875))),
  _T("wide_resnet101_2", "tv_in1k", 1000, (3, 224, 224), None, 0.875, None, "center", "bilinear", IM, IS, "bsd-3-clause", _r((224, 78.862, 94.312, 0.875))),
  _T("wide_resnet101_2", "tv2_in1k", 1000, (3, 176, 176), (3, 224, 224), 0.875, 0.965, "center", "bilinear", IM, IS, "bsd-3-clause", _r((224, 82.514, 96.012, 0.965), (176, 80.494, 94.978, 0.875))),
  _T("resnet50_gn", "a1h_in1k", 1000, (3, 224, 224), (3, 288, 288), 0.94, 0.95, "center", "bicubic", IM, IS, "apache-2.0", _r((288, 81.216, 95.634, 0.95), (224, 80.074, 94.958, 0.94))),
  _T("resnext50_32x4d", "a1h_in1k", 1000, (3, 224, 224), (3, 288, 288), 0.95, 1.0, "center", "bicubic", IM, IS, "apache-2.0", _r((288, 82.016, 95.934, 1.0), (224, 81.14, 95.32, 0.95))),
  _T("resnext50_32x4d", "a1_in1k", 1000, (3, 224, 224), (3, 288, 288), 0.95, 1.0, "center", "bicubic", IM, IS, "apache-2.0", _r((288, 81.48, 95.152, 1.0), (224, 80.526, 94.458, 0.95))),
  _T("resnext50_32x4d", "a2_in1k", 1000, (3, 224, 224), (3, 288, 288), 0.95, 1.0, "center", "bicubic", IM, IS, "apache-2.0", _r((288, 81.304, 95.114, 1.0), (224, 80.444, 94.63, 0.95))),
  _T("resnext50_32x4d", "a3_in1k", 1000, (3, 160, 160), (3, 224, 224), 0.95, 0.95, "center", "bicubic", IM, IS, "apache-2.0", _r((224, 79.258, 94.308, 0.95), (160, 77.732, 93.314, 0.95))),
  _T("resnext50_32x4d", "ra_in1k", 1000, (3, 224, 224), (3, 288, 288), 0.875, 0.95, "center", "bicubic", IM, IS, "apache-2.0", _r((288, 80.72, 95.344, 0.95), (224, 79.8, 94.608, 0.875))),
  _T("resnext50_32x4d", "tv_in1k", 1000, (3, 224, 224), None, 0.875, None, "center", "bilinear", IM, IS, "bsd-3-clause", _r((224, 77.632, 93.674, 0.875))),
  _T("resnext50_32x4d", "tv2_in1k", 1000, (3, 176, 176), (3, 224, 224), 0.875, 0.965, "center", "bilinear", IM, IS, "bsd-3-clause", _r((224, 81.19, 95.344, 0.965), (176, 79.384, 94.302, 0.875))),
  _T("resnext50_32x4d", "fb_ssl_yfcc100m_ft_in1k", 1000, (3, 224, 224), None, 0.875, None, "center", "bilinear", IM, IS, "cc-by-nc-4.0", _r((224, 80.316, 95.386, 0.875))),
  _T("resnext50_32x4d", "fb_swsl_ig1b_ft_in1k", 1000, (3, 224, 224), None, 0.875, None, "center", "bilinear", IM, IS, "cc-by-nc-4.0", _r((224, 82.162, 96.224, 0.875))),
  _T("resnext50_32x4d", "gluon_in1k", 1000, (3, 224, 224), None, 0.875, None, "center", "bicubic", IM, IS, "apache-2.0", _r((224, 79.354, 94.424, 0.875))),
  _T("resnext50d_32x4d", "bt_in1k", 1000, (3, 224, 224), (3, 288, 288), 0.875, 0.95, "center", "bicubic", IM, IS, "apache-2.0", _r((288, 80.676, 95.426, 0.95), (224, 79.672, 94.878, 0.875))),
  _T("resnext101_32x4d", "fb_ssl_yfcc100m_ft_in1k", 1000, (3, 224, 224), None, 0.875, None, "center", "bilinear", IM, IS, "cc-by-nc-4.0", _r((224, 80.936, 95.732, 0.875))),
  _T("resnext101_32x4d", "fb_swsl_ig1b_ft_in1k", 1000, (3, 224, 224), None, 0.875, None, "center", "bilinear", IM, IS, "cc-by-nc-4.0", _r((224, 83.268, 96.76, 0.875))),
  _T("resnext101_32x4d", "gluon_in1k", 1000, (3, 224, 224), None, 0.875, None, "center", "bicubic", IM, IS, "apache-2.0", _r((224, 80.336, 94.908, 0.875))),
  _T("resnext101_64x4d", "c1_in1k", 1000, (3, 224, 224), (3, 288, 288), 0.95, 1.0, "center", "bicubic", IM, IS, "apache-2.0", _r((288, 83.158, 96.37, 1.0), (224, 82.446, 95.92, 0.95))),
  _T("resnext101_64x4d", "tv_in1k", 1000, (3, 224, 224), None, 0.875, None, "center", "bilinear", IM, IS, "bsd-3-clause", _r((224, 82.978, 96.252, 0.875))),
  _T("resnext101_64x4d", "gluon_in1k", 1000, (3, 224, 224), None, 0.875, None, "center", "bicubic", IM, IS, "apache-2.0", _r((224, 80.64, 95.0, 0.875))),
  _T("resnext101_32x8d", "tv_in1k", 1000, (3, 224, 224), None, 0.875, None, "center", "bilinear", IM, IS, "bsd-3-clause", _r((224, 79.308, 94.53, 0.875))),
  _T("resnext101_32x8d", "tv2_in1k", 1000, (3, 176, 176), (3, 224, 224), 0.875, 0.965, "center", "bilinear", IM, IS, "bsd-3-clause", _r((224, 82.832, 96.234, 0.965), (176, 81.99, 95.716, 0.875))),
  _T("resnext101_32x8d", "fb_wsl_ig1b_ft_in1k", 1000, (3, 224, 224), None, 0.875, None, "center", "bilinear", IM, IS, "cc-by-nc-4.0", _r((224, 82.72, 96.624, 0.875))),
  _T("resnext101_32x8d", "fb_ssl_yfcc100m_ft_in1k", 1000, (3, 224, 224), None, 0.875, None, "center", "bilinear", IM, IS, "cc-by-nc-4.0", _r((224, 81.62, 96.036, 0.875))),
  _T("resnext101_32x8d", "fb_swsl_ig1b_ft_in1k", 1000, (3, 224, 224), None, 0.875, None, "center", "bilinear", IM, IS, "cc-by-nc-4.0", _r((224, 84.276, 97.188, 0.875))),
  _T("resnext101_32x16d", "fb_wsl_ig1b_ft_in1k", 1000, (3, 224, 224), None, 0.875, None, "center", "bilinear", IM, IS, "cc-by-nc-4.0", _r((224, 84.166, 97.192, 0.875))),
  _T("resnext101_32x16d", "fb_ssl_yfcc100m_ft_in1k", 1000, (3, 224, 224), None, 0.875, None, "center", "bilinear", IM, IS, "cc-by-nc-4.0", _r((224, 81.856, 96.084, 0.875))),
  _T("resnext101_32x16d", "fb_swsl_ig1b_ft_in1k", 1000, (3, 224, 224), None, 0.875, None, "center", "bilinear", IM, IS, "cc-by-nc-4.0", _r((224, 83.34, 96.844, 0.875))),
  _T("resnext101_32x32d", "fb_wsl_ig1b_ft_in1k", 1000, (3, 224, 224), None, 0.875, None, "center", "bilinear", IM, IS, "cc-by-nc-4.0", _r((224, 85.09, 97.442, 0.875))),
  _T("ecaresnet26t", "ra2_in1k", 1000, (3, 256, 256), (3, 320, 320), 0.875, 0.95, "center", "bicubic", IM, IS, "apache-2.0", _r((320, 79.9, 95.07, 0.95), (256, 78.894, 94.548, 0.875))),
  _T("ecaresnetlight", "miil_in1k", 1000, (3, 224, 224), (3, 288, 288), 0.875, 0.95, "center", "bicubic", IM, IS, "apache-2.0", _r((288, 81.43, 95.79, 0.95), (224, 80.454, 95.248, 0.875))),
  _T("ecaresnet50d", "miil_in1k", 1000, (3, 224, 224), (3, 288, 288), 0.875, 0.95, "center", "bicubic", IM, IS, "apache-2.0", _r((288, 81.648, 95.884, 0.95), (224, 80.634, 95.31, 0.875))),
  _T("ecaresnet50d_pruned", "miil_in1k", 1000, (3, 224, 224), (3, 288, 288), 0.875, 0.95, "center", "bicubic", IM, IS, "apache-2.0", _r((288, 80.808, 95.566, 0.95), (224, 79.714, 94.862, 0.875))),
  _T("ecaresnet50t", "ra2_in1k", 1000, (3, 256, 256), (3, 320, 320), 0.875, 0.95, "center", "bicubic", IM, IS, "apache-2.0", _r((320, 82.37, 96.12, 0.95), (256, 81.45, 95.678, 0.875))),
  _T("ecaresnet50t", "a1_in1k", 1000, (3, 224, 224), (3, 288, 288), 0.95, 1.0, "center", "bicubic", IM, IS, "apache-2.0", _r((288, 82.11, 95.654, 1.0), (224, 81.282, 95.15, 0.95))),
  _T("ecaresnet50t", "a2_in1k", 1000, (3, 224, 224), (3, 288, 288), 0.95, 1.0, "center", "bicubic", IM, IS, "apache-2.0", _r((288, 81.682, 95.524, 1.0), (224, 80.884, 95.022, 0.95))),
  _T("ecaresnet50t", "a3_in1k", 1000, (3, 160, 160), (3, 224, 224), 0.95, 0.95, "center", "bicubic", IM, IS, "apache-2.0", _r((224, 79.548, 94.71, 0.95), (160, 77.786, 93.62, 0.95))),
  _T("ecaresnet101d", "miil_in1k", 1000, (3, 224, 224), (3, 288, 288), 0.875, 0.95, "center", "bicubic", IM, IS, "apache-2.0", _r((288, 83.006, 96.524, 0.95), (224, 82.18, 96.062, 0.875))),
  _T("ecaresnet101d_pruned", "miil_in1k", 1000, (3, 224, 224), (3, 288, 288), 0.875, 0.95, "center", "bicubic", IM, IS, "apache-2.0", _r((288, 82.016, 96.18, 0.95), (224, 80.81, 95.642, 0.875))),
  _T("ecaresnet269d", "ra2_in1k", 1000, (3, 320, 320), (3, 352, 352), 0.95, 1.0, "center", "bicubic", IM, IS, "apache-2.0", _r((352, 84.968, 97.224, 1.0), (320, 84.724, 97.18, 0.95))),
  _T("seresnet50", "a1_in1k", 1000, (3, 224, 224), (3, 288, 288), 0.95, 1.0, "center", "bicubic", IM, IS, "apache-2.0", _r((288, 81.114, 95.122, 1.0), (224, 80.012, 94.704, 0.95))),
  _T("seresnet50", "a2_in1k", 1000, (3, 224, 224), (3, 288, 288), 0.95, 1.0, "center", "bicubic", IM, IS, "apache-2.0", _r((288, 81.094, 95.23, 1.0), (224, 80.102, 94.72, 0.95))),
  _T("seresnet50", "a3_in1k", 1000, (3, 160, 160), (3, 224, 224), 0.95, 0.95, "center", "bicubic", IM, IS, "apache-2.0", _r((224, 77.036, 93.072, 0.95), (160, 75.104, 92.096, 0.95))),
  _T("seresnet50", "ra2_in1k", 1000, (3, 224, 224), (3, 288, 288), 0.875, 0.95, "center", "bicubic", IM, IS, "apache-2.0", _r((288, 81.288, 95.652, 0.95), (224, 80.26, 95.068, 0.875))),
  _T("seresnet152d", "ra2_in1k", 1000, (3, 256, 256), (3, 320, 320), 0.95, 1.0, "center", "bicubic", IM, IS, "apache-2.0", _r((320, 84.344, 97.044, 1.0), (256, 83.702, 96.794, 0.95))),
  _T("seresnext26d_32x4d", "bt_in1k", 1000, (3, 224, 224), (3, 288, 288), 0.875, 0.95, "center", "bicubic", IM, IS, "apache-2.0", _r((288, 78.816, 94.266, 0.95), (224, 77.592, 93.614, 0.875))),
  _T("seresnext26t_32x4d", "bt_in1k", 1000, (3, 224, 224), (3, 288, 288), 0.875, 0.95, "center", "bicubic", IM, IS, "apache-2.0", _r((288, 78.736, 94.318, 0.95), (224, 77.98, 93.75, 0.875))),
  _T("seresnext50_32x4d", "racm_in1k", 1000, (3, 224, 224), (3, 288, 288), 0.875, 0.95, "center", "bicubic", IM, IS, "apache-2.0", _r((288, 82.186, 96.146, 0.95), (224, 81.268, 95.624, 0.875))),
  _T("seresnext50_32x4d", "gluon_in1k", 1000, (3, 224, 224), None, 0.875, None, "center", "bicubic", IM, IS, "apache-2.0", _r((224, 79.916, 94.816, 0.875))),
  _T("seresnext101_32x4d", "gluon_in1k", 1000, (3, 224, 224), None, 0.875, None, "center", "bicubic", IM, IS, "apache-2.0", _r((224, 80.886, 95.268, 0.875))),
  _T("seresnext101_32x8d", "ah_in1k", 1000, (3, 224, 224), (3, 288, 288), 0.95, 1.0, "center", "bicubic", IM, IS, "apache-2.0", _r((288, 84.192, 96.86, 1.0), (224, 83.618, 96.412, 0.95))),
  _T("seresnext101d_32x8d", "ah_in1k", 1000, (3, 224, 224), (3, 288, 288), 0.95, 1.0, "center", "bicubic", IM, IS, "apache-2.0", _r((288, 84.38, 96.918, 1.0), (224, 83.702, 96.62, 0.95))),
  _T("resnetaa50d", "sw_in12k_ft_in1k", 1000, (3, 224, 224), (3, 288, 288), 0.95, 1.0, "center", "bicubic", IM, IS, "apache-2.0", _r((288, 82.656, 96.492, 1.0), (224, 81.782, 96.036, 0.95))),
  _T("resnetaa50d", "sw_in12k", 11821, (3, 224, 224), (3, 288, 288), 0.95, 1.0, "center", "bicubic", IM, IS, "apache-2.0"),
  _T("resnetaa50d", "d_in12k", 11821, (3, 224, 224), (3, 288, 288), 0.95, 1.0, "center", "bicubic", IM, IS, "apache-2.0"),
  _T("resnetaa101d", "sw_in12k_ft_in1k", 1000, (3, 224, 224), (3, 288, 288), 0.95, 1.0, "center", "bicubic", IM, IS, "apache-2.0", _r((288, 84.114, 97.114, 1.0), (224, 83.544, 96.828, 0.95))),
  _T("resnetaa101d", "sw_in12k", 11821, (3, 224, 224), (3, 288, 288), 0.95, 1.0, "center", "bicubic", IM, IS, "apache-2.0"),
  _T("seresnextaa101d_32x8d", "sw_in12k_ft_in1k_288", 1000, (3, 288, 288), (3, 320, 320), 0.95, 1.0, "center", "bicubic", IM, IS, "apache-2.0", _r((320, 86.722, 98.184, 1.0), (288, 86.53, 98.094, 0.95))),
  _T("seresnextaa101d_32x8d", "sw_in12k_ft_in1k", 1000, (3, 224, 224), (3, 288, 288), 0.875, 1.0, "center", "bicubic", IM, IS, "apache-2.0", _r((288, 86.524, 98.034, 1.0), (224, 85.956, 97.824, 0.875))),
  _T("seresnextaa101d_32x8d", "sw_in12k", 11821, (3, 224, 224), (3, 288, 288), 0.95, 1.0, "center", "bicubic", IM, IS, "apache-2.0"),
  _T("seresnextaa101d_32x8d", "ah_in1k", 1000, (3, 224, 224), (3, 288, 288), 0.95, 1.0, "center", "bicubic", IM, IS, "apache-2.0", _r((288, 84.58, 97.062, 1.0), (224, 83.9, 96.648, 0.95))),
  _T("seresnextaa201d_32x8d", "sw_in12k_ft_in1k_384", 1000, (3, 384, 384), None, 1.0, None, "center", "bicubic", IM, IS, "apache-2.0", _r((384, 87.304, 98.334, 1.0))),
  _T("seresnextaa201d_32x8d", "sw_in12k", 11821, (3, 320, 320), (3, 384, 384), 0.95, 1.0, "center", "bicubic", IM, IS, "apache-2.0"),
  _T("resnetblur50", "bt_in1k", 1000, (3, 224, 224), (3, 288, 288), 0.875, 0.95, "center", "bicubic", IM, IS, "apache-2.0", _r((288, 80.248, 95.2, 0.95), (224, 79.306, 94.632, 0.875))),
  _T("resnetaa50", "a1h_in1k", 1000, (3, 224, 224), (3, 288, 288), 0.95, 1.0, "center", "bicubic", IM, IS, "apache-2.0", _r((288, 81.618, 95.794, 1.0), (224, 80.614, 95.212, 0.95))),
  _T("resnetrs50", "tf_in1k", 1000, (3, 160, 160), (3, 224, 224), 0.91, None, "center", "bicubic", IM, IS, "apache-2.0", _r((224, 79.934, 94.972, 0.91), (160, 77.858, 93.81, 0.91))),
  _T("resnetrs101", "tf_in1k", 1000, (3, 192, 192), (3, 288, 288), 0.94, None, "center", "bicubic", IM, IS, "apache-2.0", _r((288, 82.288, 96.0, 0.94), (192, 80.706, 95.24, 0.94))),
  _T("resnetrs152", "tf_in1k", 1000, (3, 256, 256), (3, 320, 320), 1.0, None, "center", "bicubic", IM, IS, "apache-2.0", _r((320, 83.71, 96.614, 1.0), (256, 82.9, 96.29, 1.0))),
  _T("resnetrs200", "tf_in1k", 1000, (3, 256, 256), (3, 320, 320), 1.0, None, "center", "bicubic", IM, IS, "apache-2.0", _r((320, 84.448, 97.074, 1.0), (256, 83.884, 96.762, 1.0))),
  _T("resnetrs270", "tf_in1k", 1000, (3, 256, 256), (3, 352, 352), 1.0, None, "center", "bicubic", IM, IS, "apache-2.0", _r((352, 84.438, 96.972, 1.0), (256, 83.596, 96.616, 1.0))),
  _T("resnetrs350", "tf_in1k", 1000, (3, 288, 288), (3, 384, 384), 1.0, None, "center", "bicubic", IM, IS, "apache-2.0", _r((384, 84.71, 96.992, 1.0), (288, 84.304, 96.942, 1.0))),
  _T("resnetrs420", "tf_in1k", 1000, (3, 320, 320), (3, 416, 416), 1.0, None, "center", "bicubic", IM, IS, "apache-2.0", _r((416, 85.01, 97.11, 1.0), (320, 84.24, 96.862, 1.0))),
  _T("resnet50c", "gluon_in1k", 1000, (3, 224, 224), None, 0.875, None, "center", "bicubic", IM, IS, "apache-2.0", _r((224, 78.016, 93.994, 0.875))),
  _T("resnet101c", "gluon_in1k", 1000, (3, 224, 224), None, 0.875, None, "center", "bicubic", IM, IS, "apache-2.0", _r((224, 79.542, 94.588, 0.875))),
  _T("resnet152c", "gluon_in1k", 1000, (3, 224, 224), None, 0.875, None, "center", "bicubic", IM, IS, "apache-2.0", _r((224, 79.904, 94.854, 0.875))),
  _T("resnet50s", "gluon_in1k", 1000, (3, 224, 224), None, 0.875, None, "center", "bicubic", IM, IS, "apache-2.0", _r((224, 78.71, 94.248, 0.875))),
  _T("resnet101s", "gluon_in1k", 1000, (3, 224, 224), None, 0.875, None, "center", "bicubic", IM, IS, "apache-2.0", _r((224, 80.278, 95.16, 0.875))),
  _T("resnet152s", "gluon_in1k", 1000, (3, 224, 224), None, 0.875, None, "center", "bicubic", IM, IS, "apache-2.0", _r((224, 81.048, 95.442, 0.875))),
  _T("seresnext101_64x4d", "gluon_in1k", 1000, (3, 224, 224), None, 0.875, None, "center", "bicubic", IM, IS, "apache-2.0", _r((224, 80.884, 95.308, 0.875))),
  _T("senet154", "gluon_in1k", 1000, (3, 224, 224), None, 0.875, None, "center", "bicubic", IM, IS, "apache-2.0", _r((224, 81.258, 95.358, 0.875))),
  _T("test_resnet", "r160_in1k", 1000, (3, 160, 160), None, 0.95, None, "center", "bilinear", HALF, HALF, "apache-2.0", _r((160, 41.602, 67.984, 0.95))),
  _T("resnest14d", "gluon_in1k", 1000, (3, 224, 224), None, 0.875, None, "center", "bilinear", IM, IS, "apache-2.0", _r((224, 75.516, 92.512, 0.875))),
  _T("resnest26d", "gluon_in1k", 1000, (3, 224, 224), None, 0.875, None, "center", "bilinear", IM, IS, "apache-2.0", _r((224, 78.476, 94.3, 0.875))),
  _T("resnest50d", "in1k", 1000, (3, 224, 224), None, 0.875, None, "center", "bilinear", IM, IS, "apache-2.0", _r((224, 80.958, 95.372, 0.875))),
  _T("resnest101e", "in1k", 1000, (3, 256, 256), None, 0.875, None, "center", "bilinear", IM, IS, "apache-2.0", _r((256, 82.916, 96.31, 0.875))),
  _T("resnest200e", "in1k", 1000, (3, 320, 320), None, 0.909, None, "center", "bicubic", IM, IS, "apache-2.0", _r((320, 83.88, 96.88, 0.909))),
  _T("resnest269e", "in1k", 1000, (3, 416, 416), None, 0.928, None, "center", "bicubic", IM, IS, "apache-2.0", _r((416, 84.542, 96.988, 0.928))),
  _T("resnest50d_4s2x40d", "in1k", 1000, (3, 224, 224), None, 0.875, None, "center", "bicubic", IM, IS, "apache-2.0", _r((224, 81.146, 95.566, 0.875))),
  _T("resnest50d_1s4x24d", "in1k", 1000, (3, 224, 224), None, 0.875, None, "center", "bicubic", IM, IS, "apache-2.0", _r((224, 81.024, 95.338, 0.875))),
)
# fmt: on
# END TABLE


def _first_tags(table: tuple[TimmWeights, ...]) -> dict[str, str]:
  """{arch: its first tag in ``table``}: timm's rule for an architecture's default."""
  first: dict[str, str] = {}
  for entry in table:
    first.setdefault(entry.arch, entry.tag)
  return first


DEFAULT = _first_tags(TABLE)
_BY_NAME = {entry.name: entry for entry in TABLE}


def split_name(name: str) -> tuple[str, str]:
  """``("resnet50", "a1_in1k")`` from ``"resnet50.a1_in1k"``; the tag is ``""`` if none."""
  arch, _, tag = name.partition(".")
  return arch, tag


def natural_key(name: str) -> list[int | str]:
  """timm's sort order: digit runs compare as numbers (``resnet18`` before ``resnet101``)."""
  return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name.lower())]


def matching(names: list[str], pattern: str) -> list[str]:
  """The ``names`` that fnmatch ``pattern`` (all for ``""``), in timm's natural order."""
  found = fnmatch.filter(names, pattern) if pattern else names
  return sorted(found, key=natural_key)


def list_pretrained(pattern: str = "") -> list[str]:
  """timm's pretrained names (``ARCH.TAG``) of its ResNet family that match the fnmatch
  ``pattern``, sorted as ``timm.list_pretrained`` sorts them; as timm does, a pattern
  without a tag also matches every tag of the names it matches (``"resnet50"`` lists
  ``resnet50.a1_in1k``...). ``get_pretrained_cfg(name)`` gives each one's data."""
  if not pattern:
    return sorted(_BY_NAME, key=natural_key)
  arch, tag = split_name(pattern)
  patterns = [pattern] if tag else [f"{arch}.*", pattern]
  return sorted({n for p in patterns for n in fnmatch.filter(_BY_NAME, p)}, key=natural_key)


def find_tag(name: str) -> TimmWeights | None:
  """The entry for ``ARCH.TAG`` exactly, or None."""
  return _BY_NAME.get(name)


def get_pretrained_cfg(name: str) -> TimmWeights:
  """The table entry for ``ARCH.TAG``, or for the default tag of ``ARCH``; a ``ValueError``
  naming the architecture's tags if it has no such tag."""
  arch, tag = split_name(name)
  if arch not in DEFAULT:
    raise ValueError(
      f"{arch!r} has no pretrained weights in timm's ResNet family "
      "(flax_resnet.list_pretrained() lists those there are)"
    )
  entry = _BY_NAME.get(f"{arch}.{tag or DEFAULT[arch]}")
  if entry is None:
    tags = ", ".join(e.tag for e in TABLE if e.arch == arch)
    raise ValueError(f"{name!r}: {arch} has no pretrained tag {tag!r}; its tags: {tags}")
  return entry
