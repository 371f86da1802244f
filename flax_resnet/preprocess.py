"""Eval preprocessing equal to torchvision's ``weights.transforms()`` and to timm's eval
``create_transform``, without torch.

torchvision's ``ImageClassification`` on a PIL image resizes with PIL (bilinear, which is
antialiased), centre-crops, scales to [0, 1] and normalises; timm's eval transform resizes by
``crop_pct`` in one of three ``crop_mode``s, then crops or pads. We call the same PIL resize,
crop and pad, repeat the float32 arithmetic, and return NHWC arrays.
"""

from __future__ import annotations

import io
import math
import numbers
import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_PIL_FILTERS = {
  "bilinear": Image.Resampling.BILINEAR,
  "bicubic": Image.Resampling.BICUBIC,
  "nearest": Image.Resampling.NEAREST,
}
CROP_MODES = ("center", "squash", "border")
# timm's values for a data config that has none (timm.data.constants, resolve_data_config).
TIMM_CROP_PCT = 0.875
TIMM_INTERPOLATION = "bicubic"
TIMM_INPUT_SIZE = (3, 224, 224)


@dataclass(frozen=True)
class EvalTransform:
  """Resize, centre-crop (padding where the image is smaller), scale to [0, 1], normalise.

  ``crop_mode`` says how the image meets ``resize_size``:

  - ``"center"``: an int is the shorter side's length, the longer side truncated
    (torchvision's ``resize``); a (height, width) is covered keeping the aspect ratio, each
    side rounded (timm's ``ResizeKeepRatio``);
  - ``"squash"``: resized to exactly ``resize_size``, the aspect ratio not kept;
  - ``"border"``: fitted inside ``resize_size`` keeping the aspect ratio, each side rounded,
    and padded up to the crop with the mean's colour, ``round(255 * mean)`` (timm's
    ``CenterCropOrPad``); the other modes pad with black, as torchvision's ``center_crop``.

  Sizes are an int (a square) or (height, width); a square pair is kept as its int.
  The defaults are torchvision's ResNet transform; ``from_timm`` builds timm's.
  """

  resize_size: int | tuple[int, int] = 256
  crop_size: int | tuple[int, int] = 224
  interpolation: str = "bilinear"
  mean: tuple[float, ...] = IMAGENET_MEAN
  std: tuple[float, ...] = IMAGENET_STD
  crop_mode: str = "center"

  def __post_init__(self):
    """``ValueError`` naming the first field that cannot describe a transform."""
    for name in ("resize_size", "crop_size"):
      object.__setattr__(self, name, _checked_size(name, getattr(self, name)))
    if not isinstance(self.interpolation, str) or self.interpolation not in _PIL_FILTERS:
      raise ValueError(
        f"interpolation must be one of {tuple(_PIL_FILTERS)}, not {self.interpolation!r}"
      )
    for name in ("mean", "std"):
      object.__setattr__(self, name, _checked_values(name, getattr(self, name)))
    if self.crop_mode not in CROP_MODES:
      raise ValueError(f"crop_mode must be one of {CROP_MODES}, not {self.crop_mode!r}")

  @classmethod
  def from_timm(
    cls,
    *,
    input_size: int | Sequence[int],
    interpolation: str,
    crop_pct: float | None = None,
    crop_mode: str | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
  ) -> EvalTransform:
    """timm's eval transform, ``timm.data.create_transform(**config)``, for a data config
    (``resolve_data_config``'s keys; ``timm_data_config`` resolves one from a pretrained cfg).

    ``input_size`` is the crop: an int, (height, width) or (3, height, width). Each side is
    first resized to ``floor(side / crop_pct)`` (None: timm's 0.875) in ``crop_mode`` (None:
    ``"center"``). ``ValueError`` naming the parameter that cannot describe a transform.
    """
    height, width = _timm_image_size(input_size)
    scale = _timm_scale_size(height, width, crop_pct)
    return cls(
      resize_size=scale,
      crop_size=(height, width),
      interpolation=interpolation,
      mean=_as_tuple(mean),
      std=_as_tuple(std),
      crop_mode="center" if crop_mode is None else crop_mode,
    )

  def to_json(self) -> dict:
    """The fields as JSON values; ``crop_mode`` only where it is not ``"center"``, so that a
    torchvision transform's metadata keeps the five keys that older versions read."""
    fields = asdict(self)
    if self.crop_mode == "center":
      del fields["crop_mode"]
    return fields

  @classmethod
  def from_json(cls, d: dict) -> EvalTransform:
    """The transform ``to_json`` wrote; ``ValueError`` naming a field of the wrong type."""
    return cls(**d)

  def __call__(self, image: Image.Image) -> np.ndarray:
    """One PIL image to a float32 (crop height, crop width, 3) array."""
    resize = _RESIZES[self.crop_mode]
    image = resize(to_rgb(image), self.resize_size, _PIL_FILTERS[self.interpolation])
    image = center_crop_or_pad(image, self.crop_size, self._fill())
    x = np.asarray(image, dtype=np.uint8).astype(np.float32) / np.float32(255)
    return (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)

  def load(self, paths: Iterable[str | os.PathLike]) -> np.ndarray:
    """Files to an NHWC float32 batch; unreadable files raise naming the file."""
    return np.stack([self.read(p) for p in paths])

  def read(self, path: str | os.PathLike) -> np.ndarray:
    """One file's array; ``ValueError`` naming the file if it cannot be read, or cannot be
    preprocessed (too thin an image for a ``border`` resize)."""
    image = open_image(path)
    try:
      return self(image)
    except ValueError as e:
      raise ValueError(f"cannot preprocess image {path}: {e}") from e

  def _fill(self) -> int | tuple[int, ...]:
    """The padding's colour: black, or in ``border`` mode the mean's, as timm rounds it."""
    if self.crop_mode != "border":
      return 0
    fill = tuple(round(255 * v) for v in self.mean)
    return fill * 3 if len(fill) == 1 else fill


def timm_data_config(
  pretrained_cfg: Mapping[str, Any], use_test_size: bool = False
) -> dict[str, Any]:
  """What timm's ``resolve_data_config(pretrained_cfg=..., use_test_size=...)`` resolves, for
  ``EvalTransform.from_timm(**config)``: a pretrained cfg's (``PretrainedCfg.to_dict()``, or a
  hub ``config.json``'s ``pretrained_cfg``) ``input_size``, ``crop_pct`` (``test_input_size``
  and ``test_crop_pct`` instead where ``use_test_size`` and the cfg has them), ``crop_mode``,
  ``interpolation``, ``mean`` and ``std``, and timm's defaults for those it leaves empty."""
  if not isinstance(pretrained_cfg, Mapping):
    raise ValueError(f"pretrained_cfg must be a mapping of timm's fields, not {pretrained_cfg!r}")
  cfg = pretrained_cfg
  if use_test_size and cfg.get("test_input_size") is not None:
    input_size = cfg["test_input_size"]
  elif cfg.get("input_size") is not None:
    input_size = cfg["input_size"]
  else:
    input_size = TIMM_INPUT_SIZE
  crop_pct = (use_test_size and cfg.get("test_crop_pct")) or cfg.get("crop_pct") or TIMM_CROP_PCT
  return {
    "input_size": input_size,
    "interpolation": cfg.get("interpolation") or TIMM_INTERPOLATION,
    "mean": cfg.get("mean") or IMAGENET_MEAN,
    "std": cfg.get("std") or IMAGENET_STD,
    "crop_pct": crop_pct,
    "crop_mode": cfg.get("crop_mode") or "center",
  }


def _as_tuple(values: Any) -> Any:
  """A list as its tuple; anything else as it is, for ``_checked_values`` to judge."""
  return tuple(values) if isinstance(values, list) else values


def _is_positive_int(value: Any) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool) and int(value) >= 1


def _checked_size(name: str, value: Any) -> int | tuple[int, int]:
  """A positive int, or (height, width) of them (a square one as its int), or ``ValueError``."""
  if _is_positive_int(value):
    return int(value)
  if isinstance(value, (list, tuple)) and len(value) == 2 and all(map(_is_positive_int, value)):
    height, width = int(value[0]), int(value[1])
    return height if height == width else (height, width)
  raise ValueError(f"{name} must be a positive integer or [height, width] of them, not {value!r}")


def _checked_values(name: str, values: Any) -> tuple[float, ...]:
  """``mean`` or ``std`` as a tuple (JSON's and a caller's lists, kept as the tuples they
  mean) of 1 or 3 finite numbers, above 0 for ``std``; or ``ValueError``."""
  values = _as_tuple(values)
  if not (
    isinstance(values, tuple)
    and values
    and all(
      isinstance(v, numbers.Real)
      and not isinstance(v, bool)
      and math.isfinite(v)
      and (float(v) > 0 or name == "mean")
      for v in values
    )
  ):
    raise ValueError(
      f"{name} must be a list of finite numbers"
      f"{' above 0' if name == 'std' else ''}, not {values!r}"
    )
  if len(values) not in (1, 3):
    raise ValueError(f"{name} must have 3 values (one per colour) or 1, not {len(values)}")
  return values


def _timm_image_size(input_size: Any) -> tuple[int, int]:
  """(height, width) of timm's ``input_size``, or ``ValueError`` naming it."""
  sizes = [input_size] * 2 if _is_positive_int(input_size) else input_size
  if isinstance(sizes, (list, tuple)) and len(sizes) == 3 and sizes[0] == 3:
    sizes = sizes[1:]
  if isinstance(sizes, (list, tuple)) and len(sizes) == 2 and all(map(_is_positive_int, sizes)):
    return int(sizes[0]), int(sizes[1])
  raise ValueError(
    "input_size must be a positive integer, (height, width) or (3, height, width), "
    f"not {input_size!r}"
  )


def _timm_scale_size(height: int, width: int, crop_pct: Any) -> tuple[int, int]:
  """timm's resize before the crop, ``floor(side / crop_pct)``, or ``ValueError`` naming
  ``crop_pct``."""
  if crop_pct is None:
    crop_pct = TIMM_CROP_PCT
  elif not (
    isinstance(crop_pct, numbers.Real)
    and not isinstance(crop_pct, bool)
    and math.isfinite(crop_pct)
    and float(crop_pct) > 0
  ):
    raise ValueError(f"crop_pct must be a number above 0, not {crop_pct!r}")
  # crop_pct as given, not float(): the division is timm's, in the caller's number type.
  scale = (math.floor(height / crop_pct), math.floor(width / crop_pct))
  if min(scale) < 1:
    raise ValueError(
      f"crop_pct {crop_pct!r} resizes a {height}x{width} input_size to {scale[0]}x{scale[1]}"
    )
  return scale


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


def resize_keep_ratio(
  image: Image.Image, size: tuple[int, int], resample: int, longest: bool
) -> Image.Image:
  """timm's ``ResizeKeepRatio`` (without its random scale): the image scaled by one factor to
  cover ``size`` (height, width), its sides' smaller ratio to it, or with ``longest`` to fit
  inside it, the larger ratio; each side rounded as Python's ``round`` (half to even)."""
  target_h, target_w = size
  w, h = image.size
  ratios = (h / target_h, w / target_w)
  ratio = max(ratios) if longest else min(ratios)
  new_w, new_h = round(w / ratio), round(h / ratio)
  if min(new_w, new_h) < 1:
    raise ValueError(f"image of {w}x{h} is too thin to resize into {target_w}x{target_h}")
  if (new_w, new_h) == (w, h):
    return image
  return image.resize((new_w, new_h), resample)


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
  return (size, size) if isinstance(size, int) else size


def _resize_center(image: Image.Image, size: int | tuple[int, int], resample: int):
  if isinstance(size, int):  # timm too, for a square resize: torchvision's Resize(int)
    return resize_shorter_side(image, size, resample)
  return resize_keep_ratio(image, size, resample, longest=False)


def _resize_squash(image: Image.Image, size: int | tuple[int, int], resample: int):
  h, w = _pair(size)
  return image if image.size == (w, h) else image.resize((w, h), resample)


def _resize_border(image: Image.Image, size: int | tuple[int, int], resample: int):
  return resize_keep_ratio(image, _pair(size), resample, longest=True)


_RESIZES: dict[str, Callable[[Image.Image, Any, int], Image.Image]] = {
  "center": _resize_center,
  "squash": _resize_squash,
  "border": _resize_border,
}


def center_crop_or_pad(
  image: Image.Image, size: int | tuple[int, int], fill: int | tuple[int, ...] = 0
) -> Image.Image:
  """torchvision's ``center_crop`` (``fill`` 0) and timm's ``CenterCropOrPad``: a side shorter
  than the crop is first padded with ``fill``, its odd pixel at the end (right, bottom); the
  crop is then taken from the middle, its offsets rounded half to even."""
  crop_h, crop_w = _pair(size)
  w, h = image.size
  if crop_w > w or crop_h > h:
    pad_w, pad_h = max(crop_w - w, 0), max(crop_h - h, 0)
    border = (pad_w // 2, pad_h // 2, (pad_w + 1) // 2, (pad_h + 1) // 2)
    image = ImageOps.expand(image, border=border, fill=fill)
    w, h = image.size
  top, left = int(round((h - crop_h) / 2.0)), int(round((w - crop_w) / 2.0))
  return image.crop((left, top, left + crop_w, top + crop_h))


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
