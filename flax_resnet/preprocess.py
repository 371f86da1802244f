"""Eval preprocessing equal to torchvision's ``weights.transforms()``, without torch.

torchvision's ``ImageClassification`` on a PIL image resizes with PIL (bilinear,
which is antialiased), centre-crops, scales to [0, 1] and normalises; we call the
same PIL resize and repeat the float32 arithmetic, and return NHWC arrays.
"""

from __future__ import annotations

import io
import math
import numbers
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_PIL_FILTERS = {
  "bilinear": Image.Resampling.BILINEAR,
  "bicubic": Image.Resampling.BICUBIC,
  "nearest": Image.Resampling.NEAREST,
}


@dataclass(frozen=True)
class EvalTransform:
  """Resize the shorter side, centre-crop, scale to [0, 1], normalise."""

  resize_size: int = 256
  crop_size: int = 224
  interpolation: str = "bilinear"
  mean: tuple[float, ...] = IMAGENET_MEAN
  std: tuple[float, ...] = IMAGENET_STD

  def __post_init__(self):
    """``ValueError`` naming the first field that cannot describe a transform."""
    for name in ("resize_size", "crop_size"):
      value = getattr(self, name)
      if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, not {value!r}")
    if self.interpolation not in _PIL_FILTERS:
      raise ValueError(
        f"interpolation must be one of {tuple(_PIL_FILTERS)}, not {self.interpolation!r}"
      )
    for name in ("mean", "std"):
      values = getattr(self, name)
      if isinstance(values, list):  # JSON's and a caller's lists, kept as the tuples they mean
        values = tuple(values)
        object.__setattr__(self, name, values)
      if not (
        isinstance(values, tuple)
        and values
        and all(
          isinstance(v, numbers.Real)
          and not isinstance(v, bool)
          and math.isfinite(v)
          and (v > 0 or name == "mean")
          for v in values
        )
      ):
        raise ValueError(
          f"{name} must be a list of finite numbers"
          f"{' above 0' if name == 'std' else ''}, not {values!r}"
        )

  def to_json(self) -> dict:
    return asdict(self)

  @classmethod
  def from_json(cls, d: dict) -> EvalTransform:
    """The transform ``to_json`` wrote; ``ValueError`` naming a field of the wrong type."""
    return cls(**d)

  def __call__(self, image: Image.Image) -> np.ndarray:
    """One PIL image to a float32 (crop, crop, 3) array."""
    image = resize_shorter_side(to_rgb(image), self.resize_size, _PIL_FILTERS[self.interpolation])
    image = center_crop(image, self.crop_size)
    x = np.asarray(image, dtype=np.uint8).astype(np.float32) / np.float32(255)
    return (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)

  def load(self, paths: Iterable[str | os.PathLike]) -> np.ndarray:
    """Files to an NHWC float32 batch; unreadable files raise naming the file."""
    return np.stack([self(open_image(p)) for p in paths])


def open_image(path: str | os.PathLike | io.BytesIO, name: str | None = None) -> Image.Image:
  """Reads an image fully (so errors surface here) as 8-bit RGB (``to_rgb``), or raises
  ``ValueError`` naming the file (or ``name``, for bytes in memory); an image over PIL's
  pixel limit (a decompression bomb) is refused before it is decoded."""
  shown = name or path
  try:
    with warnings.catch_warnings():
      # PIL decodes images between once and twice its limit with a warning: an error here.
      # (catch_warnings is not thread-safe: where threads race, the check below refuses.)
      warnings.simplefilter("error", Image.DecompressionBombWarning)
      image = Image.open(path)
    with image:
      _refuse_over_the_pixel_limit(image)
      image.load()
      return to_rgb(image)
  except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
    raise ValueError(f"cannot read image {shown}: refused: {e}") from e
  except (OSError, ValueError) as e:
    raise ValueError(f"cannot read image {shown}: {e}") from e


def _refuse_over_the_pixel_limit(image: Image.Image) -> None:
  """PIL itself refuses only images over twice ``Image.MAX_IMAGE_PIXELS`` and decodes those
  between once and twice with a warning; we refuse everything over it, from the header,
  before any pixel is decoded (for PIL's formats that skip its own check too)."""
  limit = Image.MAX_IMAGE_PIXELS
  if limit and image.width * image.height > limit:
    raise Image.DecompressionBombError(
      f"{image.width}x{image.height} = {image.width * image.height} pixels is over PIL's "
      f"limit of {limit} (Image.MAX_IMAGE_PIXELS; raise it if you trust the file)"
    )


def to_rgb(image: Image.Image) -> Image.Image:
  """8-bit RGB. 16-bit greyscale (PNG's ``I;16``, or ``I`` within 0..65535) is scaled to
  8 bits (v / 257, rounded) where PIL's ``convert`` would clip everything above 255;
  other 32-bit integer and floating-point pixels have no known range and are refused."""
  if image.mode in SIXTEEN_BIT_MODES or image.mode == "I":
    image = Image.fromarray(_sixteen_to_eight_bits(np.asarray(image), image.mode), "L")
  elif image.mode == "F":
    raise ValueError("floating-point pixels (mode F) have no known range")
  return image if image.mode == "RGB" else image.convert("RGB")


def _sixteen_to_eight_bits(x: np.ndarray, mode: str) -> np.ndarray:
  """round(v / 257) as uint8, in integers: (v + 128) // 257 is the same for every v in
  0..65535 (v / 257 is never a tie), and takes 4 bytes a pixel at most, where float64
  and int64 copies took 24 (4.6 GB for a 13000x13000 image)."""
  if x.size and (x.min() < 0 or x.max() > 65535):
    raise ValueError(
      f"mode {mode} pixels range over {x.min()}..{x.max()}, not 16-bit: "
      "refusing to guess their scale"
    )
  wide = x.astype(np.uint32)  # a copy: uint16 has no room for v + 128
  wide += 128
  wide //= 257
  return wide.astype(np.uint8)


def resize_shorter_side(image: Image.Image, size: int, resample: int) -> Image.Image:
  """torchvision's ``resize(img, [size])``: the shorter side to ``size``, the longer
  side truncated, as ``int(size * long / short)``."""
  w, h = image.size
  short, long = (w, h) if w <= h else (h, w)
  new_long = int(size * long / short)
  new_w, new_h = (size, new_long) if w <= h else (new_long, size)
  if (new_w, new_h) == (w, h):
    return image
  return image.resize((new_w, new_h), resample)


def center_crop(image: Image.Image, size: int) -> Image.Image:
  """torchvision's ``center_crop`` (images at least ``size`` on each side)."""
  w, h = image.size
  if w < size or h < size:
    raise ValueError(f"image of {w}x{h} is smaller than the crop size {size}")
  top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
  return image.crop((left, top, left + size, top + size))


def from_torchvision_weights(weights) -> EvalTransform:
  """The ``EvalTransform`` a torchvision weights entry records."""
  t = weights.transforms()
  return EvalTransform(
    resize_size=_first(t.resize_size),
    crop_size=_first(t.crop_size),
    interpolation=t.interpolation.value,
    mean=tuple(t.mean),
    std=tuple(t.std),
  )


def _first(size: int | Sequence[int]) -> int:
  return size if isinstance(size, int) else int(size[0])
