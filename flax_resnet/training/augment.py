"""torchvision's per-image training augmentations on PIL images, without torch.

Each operation makes the PIL call torchvision's PIL backend makes
(``torchvision.transforms.autoaugment._apply_op``), with the magnitude tables of
torchvision's ``_augmentation_space`` (float32, as ``torch.linspace`` computes them) and
random draws of the same structure (which operation, which bin, which sign) from a
``np.random.Generator``. Sampling (``params``) is apart from applying (``apply``), so that
tests hand both sides the same draws. Also here: the random resized crop and the random
erasing box, both with torchvision's rules (tries, rounding, fallback).
"""

from __future__ import annotations

import abc
import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
NO_ERASE = (0, 0, 0, 0)  # erase_box's (top, left, height, width) when nothing is erased
# An operation's magnitudes (None: it takes none) and whether a drawn sign applies to them.
Space = dict[str, tuple[np.ndarray | None, bool]]


class Box(NamedTuple):
  """A rectangle of an image, in pixels, as torchvision's get_params return it."""

  top: int
  left: int
  height: int
  width: int


def linspace32(start: float, end: float, steps: int) -> np.ndarray:
  """``torch.linspace(start, end, steps)`` in float32, to the last bit, as torch's x86 CPU
  kernel (AVX2 and AVX512 alike) computes it: a float32 step, then ``start + step * i`` for
  the first half and ``end - step * (steps - 1 - i)`` for the rest, each a fused
  multiply-add (one rounding). numpy's float64 linspace rounded to float32, or unfused
  float32 arithmetic, differ in the last bit at some positions. The fused result is
  computed in float64: ``step * k`` (24 bits times a small integer) is exact there, and so
  is its sum with a float32 of these tables' ranges, so the only rounding is to float32."""
  start32, end32 = np.float32(start), np.float32(end)
  if steps == 1:
    return np.array([start32], np.float32)
  step = np.float64((end32 - start32) / np.float32(steps - 1))
  i = np.arange(steps, dtype=np.float64)
  up = np.float64(start32) + step * i
  down = np.float64(end32) - step * (steps - 1 - i)
  return np.where(i < steps // 2, up, down).astype(np.float32)


def _posterize_bits(bins: int, levels: int) -> np.ndarray:
  # torch: 8 - (arange(bins) / ((bins - 1) / levels)).round().int(), division in float32,
  # round half to even as numpy's
  ratio = np.arange(bins, dtype=np.float32) / np.float32((bins - 1) / levels)
  return (8 - np.round(ratio).astype(np.int32)).astype(np.int32)


def _space(
  bins: int,
  shear: float,
  translate: tuple[float, float],
  rotate: float,
  enhance: float,
  levels: int,
) -> Space:
  """The operations shared by the three policies, in torchvision's order after Identity."""
  return {
    "ShearX": (linspace32(0.0, shear, bins), True),
    "ShearY": (linspace32(0.0, shear, bins), True),
    "TranslateX": (linspace32(0.0, translate[0], bins), True),
    "TranslateY": (linspace32(0.0, translate[1], bins), True),
    "Rotate": (linspace32(0.0, rotate, bins), True),
    "Brightness": (linspace32(0.0, enhance, bins), True),
    "Color": (linspace32(0.0, enhance, bins), True),
    "Contrast": (linspace32(0.0, enhance, bins), True),
    "Sharpness": (linspace32(0.0, enhance, bins), True),
    "Posterize": (_posterize_bits(bins, levels), False),
    "Solarize": (linspace32(255.0, 0.0, bins), False),
    "AutoContrast": (None, False),
    "Equalize": (None, False),
  }


@functools.cache
def trivial_space(bins: int = 31) -> Space:
  """TrivialAugmentWide's ``_augmentation_space``: its wide ranges, for any image size.

  The spaces are made once per argument (every image's draw reads one): read-only."""
  return {"Identity": (None, False), **_space(bins, 0.99, (32.0, 32.0), 135.0, 0.99, 6)}


@functools.lru_cache(maxsize=64)  # per image size: bounded
def rand_space(bins: int, height: int, width: int) -> Space:
  """RandAugment's ``_augmentation_space``: translations up to 150/331 of the image."""
  translate = (150.0 / 331.0 * width, 150.0 / 331.0 * height)
  return {"Identity": (None, False), **_space(bins, 0.3, translate, 30.0, 0.9, 4)}


@functools.lru_cache(maxsize=64)  # per image size: bounded
def auto_space(bins: int, height: int, width: int) -> Space:
  """AutoAugment's ``_augmentation_space``: RandAugment's ranges, Invert, no Identity."""
  translate = (150.0 / 331.0 * width, 150.0 / 331.0 * height)
  return {**_space(bins, 0.3, translate, 30.0, 0.9, 4), "Invert": (None, False)}


def inverse_affine(
  center: tuple[float, float],
  angle: float,
  translate: tuple[float, float],
  shear: tuple[float, float],
) -> list[float]:
  """The output-to-input matrix PIL's AFFINE transform takes for a rotation by ``angle``
  and a shear (degrees) about ``center``, then a translation; scale 1. The same float
  operations, in the same order, as torchvision's ``_get_inverse_affine_matrix``, so the
  matrix is equal to the last bit."""
  rot, sx, sy = math.radians(angle), math.radians(shear[0]), math.radians(shear[1])
  (cx, cy), (tx, ty) = center, translate
  a = math.cos(rot - sy) / math.cos(sy)
  b = -math.cos(rot - sy) * math.tan(sx) / math.cos(sy) - math.sin(rot)
  c = math.sin(rot - sy) / math.cos(sy)
  d = -math.sin(rot - sy) * math.tan(sx) / math.cos(sy) + math.cos(rot)
  m = [d, -b, 0.0, -c, a, 0.0]
  m[2] += m[0] * (-cx - tx) + m[1] * (-cy - ty)
  m[5] += m[3] * (-cx - tx) + m[4] * (-cy - ty)
  m[2] += cx
  m[5] += cy
  return m


def _fill(image: Image.Image) -> int | tuple[int, ...]:
  # torchvision's fill None: black, as a tuple for a multi-band image
  bands = len(image.getbands())
  return (0,) * bands if bands > 1 else 0


def _affine(image: Image.Image, name: str, magnitude: float, resample) -> Image.Image:
  if name.startswith("Shear"):
    degrees = math.degrees(math.atan(magnitude))
    shear = (degrees, 0.0) if name == "ShearX" else (0.0, degrees)
    matrix = inverse_affine((0.0, 0.0), 0.0, (0, 0), shear)
  else:  # Translate, about the centre as torchvision's affine on PIL images; int() truncates
    move = (int(magnitude), 0) if name == "TranslateX" else (0, int(magnitude))
    matrix = inverse_affine((image.width * 0.5, image.height * 0.5), 0.0, move, (0.0, 0.0))
  return image.transform(
    image.size, Image.Transform.AFFINE, matrix, resample, fillcolor=_fill(image)
  )


_PIXEL_OPS: dict[str, Callable[[Image.Image, float], Image.Image]] = {
  "Brightness": lambda im, m: ImageEnhance.Brightness(im).enhance(1.0 + m),
  "Color": lambda im, m: ImageEnhance.Color(im).enhance(1.0 + m),
  "Contrast": lambda im, m: ImageEnhance.Contrast(im).enhance(1.0 + m),
  "Sharpness": lambda im, m: ImageEnhance.Sharpness(im).enhance(1.0 + m),
  "Posterize": lambda im, m: ImageOps.posterize(im, int(m)),
  # a float threshold, as torchvision passes it (PIL compares pixels with it)
  "Solarize": lambda im, m: ImageOps.solarize(im, m),  # type: ignore[arg-type]
  "AutoContrast": lambda im, m: ImageOps.autocontrast(im),
  "Equalize": lambda im, m: ImageOps.equalize(im),
  "Invert": lambda im, m: ImageOps.invert(im),
  "Identity": lambda im, m: im,
}


def apply_op(image: Image.Image, name: str, magnitude: float, interpolation: str) -> Image.Image:
  """``image`` after torchvision's operation ``name`` with the signed ``magnitude``
  (``_apply_op`` on a PIL image, fill None); ``interpolation`` resamples the geometric ones."""
  if name in ("ShearX", "ShearY", "TranslateX", "TranslateY"):
    return _affine(image, name, magnitude, FILTERS[interpolation])
  if name == "Rotate":
    return image.rotate(magnitude, FILTERS[interpolation], False, None, fillcolor=_fill(image))
  if name not in _PIXEL_OPS:
    raise ValueError(f"name must be one of torchvision's operations, not {name!r}")
  return _PIXEL_OPS[name](image, magnitude)


class Draw(NamedTuple):
  """One operation as a policy drew it: its name, its magnitude bin (None: it has no
  magnitudes) and whether the magnitude is negated."""

  op: str
  bin: int | None
  negative: bool


def _magnitude(space: Space, draw: Draw) -> float:
  table, _ = space[draw.op]
  # float32 to a Python float, as torchvision's float(tensor.item())
  magnitude = 0.0 if draw.bin is None or table is None else float(table[draw.bin])
  return -magnitude if draw.negative else magnitude


class _Policy(abc.ABC):
  """A policy draws ``params`` and ``apply``s them; calling it does both."""

  interpolation: str

  @abc.abstractmethod
  def params(self, rng: np.random.Generator, height: int, width: int):
    """An image's draws from ``rng``, in torchvision's order."""

  @abc.abstractmethod
  def ops(self, params, height: int, width: int) -> list[tuple[str, float]]:
    """(operation, signed magnitude) of each operation that ``params`` run, in order."""

  def apply(self, image: Image.Image, params) -> Image.Image:
    """``image`` after each (operation, signed magnitude) of ``params``, in order."""
    for name, magnitude in self.ops(params, image.height, image.width):
      image = apply_op(image, name, magnitude, self.interpolation)
    return image

  def __call__(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """``image`` after the operations drawn from ``rng``."""
    return self.apply(image, self.params(rng, image.height, image.width))


class TrivialAugmentWide(_Policy):
  """torchvision's TrivialAugmentWide: one of 14 operations, one of ``bins`` magnitudes."""

  def __init__(self, interpolation: str = "bilinear", bins: int = 31):
    self.interpolation, self.bins = interpolation, bins

  def params(self, rng: np.random.Generator, height: int, width: int) -> list[Draw]:
    """[one Draw]: the operation, then its bin if it has magnitudes, then its sign if signed."""
    space = trivial_space(self.bins)
    op = list(space)[int(rng.integers(len(space)))]
    table, signed = space[op]
    bin_ = int(rng.integers(len(table))) if table is not None else None
    return [Draw(op, bin_, bool(signed and rng.integers(2)))]

  def ops(self, params: list[Draw], height: int, width: int) -> list[tuple[str, float]]:
    """(operation, signed magnitude) of each Draw."""
    space = trivial_space(self.bins)
    return [(d.op, _magnitude(space, d)) for d in params]


class RandAugment(_Policy):
  """torchvision's RandAugment: ``num_ops`` operations of 14 drawn with replacement, each at
  bin ``magnitude`` of ``bins``."""

  def __init__(
    self, num_ops: int = 2, magnitude: int = 9, interpolation: str = "bilinear", bins: int = 31
  ):
    self.num_ops, self.magnitude = num_ops, magnitude
    self.interpolation, self.bins = interpolation, bins

  def params(self, rng: np.random.Generator, height: int, width: int) -> list[Draw]:
    """A Draw per operation: which operation, then its sign if signed."""
    space, draws = rand_space(self.bins, height, width), []
    for _ in range(self.num_ops):
      op = list(space)[int(rng.integers(len(space)))]
      table, signed = space[op]
      bin_ = self.magnitude if table is not None else None
      draws.append(Draw(op, bin_, bool(signed and rng.integers(2))))
    return draws

  def ops(self, params: list[Draw], height: int, width: int) -> list[tuple[str, float]]:
    """(operation, signed magnitude) of each Draw."""
    space = rand_space(self.bins, height, width)
    return [(d.op, _magnitude(space, d)) for d in params]


# AutoAugment's ImageNet policy: 25 sub-policies of two (operation, probability, bin)
IMAGENET_POLICY = (
  (("Posterize", 0.4, 8), ("Rotate", 0.6, 9)),
  (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
  (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
  (("Posterize", 0.6, 7), ("Posterize", 0.6, 6)),
  (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
  (("Equalize", 0.4, None), ("Rotate", 0.8, 8)),
  (("Solarize", 0.6, 3), ("Equalize", 0.6, None)),
  (("Posterize", 0.8, 5), ("Equalize", 1.0, None)),
  (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)),
  (("Equalize", 0.6, None), ("Posterize", 0.4, 6)),
  (("Rotate", 0.8, 8), ("Color", 0.4, 0)),
  (("Rotate", 0.4, 9), ("Equalize", 0.6, None)),
  (("Equalize", 0.0, None), ("Equalize", 0.8, None)),
  (("Invert", 0.6, None), ("Equalize", 1.0, None)),
  (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
  (("Rotate", 0.8, 8), ("Color", 1.0, 2)),
  (("Color", 0.8, 8), ("Solarize", 0.8, 7)),
  (("Sharpness", 0.4, 7), ("Invert", 0.6, None)),
  (("ShearX", 0.6, 5), ("Equalize", 1.0, None)),
  (("Color", 0.4, 0), ("Equalize", 0.6, None)),
  (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
  (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
  (("Invert", 0.6, None), ("Equalize", 1.0, None)),
  (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
  (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
)


def uniform32(rng: np.random.Generator, size: int) -> np.ndarray:
  """``size`` of torch.rand's float32 uniform draws in [0, 1), the multiples of 2^-24
  (numpy's float32 draws are the same). torch compares them with a Python float p in
  float32: u <= p and u < p hold as u <= float32(p) and u < float32(p) do."""
  return rng.random(size, dtype=np.float32)


class AutoParams(NamedTuple):
  """AutoAugment's draws, as its get_params: the sub-policy, two probabilities in [0, 1)
  (``uniform32``'s; an operation runs when its probability is at most the policy's, in
  float32), two signs (0: negative)."""

  policy: int
  probs: tuple[float, float]
  signs: tuple[int, int]


class AutoAugment(_Policy):
  """torchvision's AutoAugment with its ImageNet policy (10 magnitude bins)."""

  def __init__(self, interpolation: str = "bilinear"):
    self.interpolation = interpolation

  def params(self, rng: np.random.Generator, height: int, width: int) -> AutoParams:
    """The sub-policy, then both probabilities, then both signs."""
    policy = int(rng.integers(len(IMAGENET_POLICY)))
    probs = uniform32(rng, 2)
    signs = rng.integers(2, size=2)
    return AutoParams(policy, (float(probs[0]), float(probs[1])), (int(signs[0]), int(signs[1])))

  def ops(self, params: AutoParams, height: int, width: int) -> list[tuple[str, float]]:
    """(operation, signed magnitude) of each operation of the sub-policy that runs."""
    space, out = auto_space(10, height, width), []
    for (op, p, bin_), prob, sign in zip(
      IMAGENET_POLICY[params.policy], params.probs, params.signs
    ):
      if np.float32(prob) <= np.float32(p):  # torch's float32 draw against the Python p
        signed = space[op][1]
        out.append((op, _magnitude(space, Draw(op, bin_, bool(signed and sign == 0)))))
    return out


def resized_crop_box(height: int, width: int, rng: np.random.Generator) -> Box:
  """torchvision's RandomResizedCrop.get_params with scale (0.08, 1) and ratio (3/4, 4/3):
  10 tries of an area and a log-uniform aspect ratio, rounded with int(round()); when all
  fail, the whole image clamped to the ratio range, centred.

  The offset is drawn left first, then top (torchvision: top first): the same distribution,
  and the samples this pipeline drew before it followed torchvision's fallback."""
  area = height * width
  for _ in range(10):
    target = area * rng.uniform(0.08, 1.0)
    ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
    w, h = int(round(math.sqrt(target * ratio))), int(round(math.sqrt(target / ratio)))
    if 0 < w <= width and 0 < h <= height:
      left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
      return Box(top, left, h, w)
  in_ratio = width / height
  if in_ratio < 3 / 4:
    w, h = width, int(round(width / (3 / 4)))
  elif in_ratio > 4 / 3:
    w, h = int(round(height * (4 / 3))), height
  else:
    w, h = width, height
  return Box((height - h) // 2, (width - w) // 2, h, w)


def resized_crop(image: Image.Image, box: Box, size: int, interpolation: str) -> Image.Image:
  """F.resized_crop on a PIL image: crop ``box``, then resize to ``size`` x ``size`` (PIL,
  antialiased). Not PIL's resize(box=...): its filter reads pixels beyond the box's edges,
  where torchvision's crop has none."""
  crop = image.crop((box.left, box.top, box.left + box.width, box.top + box.height))
  if crop.size == (size, size):
    return crop
  return crop.resize((size, size), FILTERS[interpolation])


def random_resized_crop(
  image: Image.Image, size: int, rng: np.random.Generator, interpolation: str = "bilinear"
) -> Image.Image:
  """torchvision's RandomResizedCrop(size, interpolation) on a PIL image."""
  return resized_crop(image, resized_crop_box(image.height, image.width, rng), size, interpolation)


def erase_box(height: int, width: int, p: float, rng: np.random.Generator) -> Box:
  """torchvision's RandomErasing(p, scale=(0.02, 0.33), ratio=(0.3, 3.3)) box for a
  ``height`` x ``width`` image: with probability ``p``, 10 tries of an area and a log-uniform
  ratio (height = sqrt(area * ratio)), each side below the image's; ``NO_ERASE`` when not
  drawn or every try fails. ``p`` 0 draws nothing (torchvision's trainer then has no
  RandomErasing), so the stream of draws after it is unchanged. Drawn as torch's: a
  ``uniform32`` below p in float32."""
  if p <= 0 or not uniform32(rng, 1)[0] < np.float32(p):
    return Box(*NO_ERASE)
  area = height * width
  for _ in range(10):
    target = area * rng.uniform(0.02, 0.33)
    ratio = math.exp(rng.uniform(math.log(0.3), math.log(3.3)))
    h, w = int(round(math.sqrt(target * ratio))), int(round(math.sqrt(target / ratio)))
    if h < height and w < width:
      top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
      return Box(top, left, h, w)
  return Box(*NO_ERASE)
