"""torchvision's AugMix (``torchvision.transforms.AugMix``, v1) on the host, in numpy.

torchvision converts the PIL image to a uint8 tensor and runs every operation with its tensor
backend, whose results differ from PIL's by more than a grey level (the geometric ops sample
through ``grid_sample``, the colour ops blend in float32 and truncate). This module writes those
tensor semantics on HWC uint8 arrays, so that a pipeline without torch draws the same images:
the ops equal torchvision's exactly where the tensor op is integer or its float result is
truncated from the same float32 operations, and within one grey level where a float is rounded
(the bilinear warp). ``AugMix`` draws its parameters (``params``) apart from applying them
(``apply``), so that a test can hand the same draws to torchvision.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import numpy as np
from PIL import Image

from flax_resnet.training.augment import inverse_affine, linspace32

NUM_BINS = 10  # torchvision's _PARAMETER_MAX: the magnitude tables' length
MIXTURE_WIDTH = 3  # torchvision's defaults, which its reference trainer keeps
ALPHA = 1.0  # the Dirichlet's concentration, for the mix and for the chains
MAX_CHAIN_DEPTH = 3  # chain_depth=-1: a depth drawn from 1..3
# torchvision's op order (all_ops=True): a draw's op index points into it
OPS = (
  "ShearX",
  "ShearY",
  "TranslateX",
  "TranslateY",
  "Rotate",
  "Posterize",
  "Solarize",
  "AutoContrast",
  "Equalize",
  "Brightness",
  "Color",
  "Contrast",
  "Sharpness",
)
SIGNED = frozenset(
  (
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Rotate",
    "Brightness",
    "Color",
    "Contrast",
    "Sharpness",
  )
)
UNSCALED = frozenset(("AutoContrast", "Equalize"))  # no magnitude: no bin is drawn
# torch's float32 constants, which numpy's float32 reproduces operation by operation
GREY_WEIGHTS = (np.float32(0.2989), np.float32(0.587), np.float32(0.114))


@functools.lru_cache(maxsize=64)  # per image size: bounded
def magnitude_tables(image_size: tuple[int, int]) -> dict[str, np.ndarray | None]:
  """torchvision's AugMix magnitude table of every op (float32, ``NUM_BINS`` bins) for an image
  of ``image_size`` = (height, width); None for the ops without a magnitude. Made once per
  size (every image's draws read them): read-only."""
  height, width = image_size
  posterize = np.arange(NUM_BINS, dtype=np.float32) / np.float32((NUM_BINS - 1) / 4)
  tables = {
    "ShearX": linspace32(0.0, 0.3, NUM_BINS),
    "ShearY": linspace32(0.0, 0.3, NUM_BINS),
    "TranslateX": linspace32(0.0, width / 3.0, NUM_BINS),
    "TranslateY": linspace32(0.0, height / 3.0, NUM_BINS),
    "Rotate": linspace32(0.0, 30.0, NUM_BINS),
    "Posterize": (4 - np.round(posterize).astype(np.int32)).astype(np.float32),
    "Solarize": linspace32(255.0, 0.0, NUM_BINS),
  }
  for name in ("Brightness", "Color", "Contrast", "Sharpness"):
    tables[name] = linspace32(0.0, 0.9, NUM_BINS)
  return {name: tables.get(name) for name in OPS}


# ---- the geometric ops: torchvision's _gen_affine_grid and grid_sample (bilinear, zeros)


def _source_coordinates(matrix: list[float], height: int, width: int) -> np.ndarray:
  """Each output pixel's sampling point, in input pixels (x, y): the matrix acts on coordinates
  centred on the image (pixel centres at half-integers), normalised to [-1, 1] and mapped back
  as grid_sample does with align_corners=False, all in float32 as torch."""
  theta: np.ndarray = np.asarray(matrix, np.float32).reshape(2, 3)
  theta = theta / np.array([[0.5 * width], [0.5 * height]], np.float32)
  xs = linspace32(-width * 0.5 + 0.5, width * 0.5 - 0.5, width)[None, :]
  ys = linspace32(-height * 0.5 + 0.5, height * 0.5 - 0.5, height)[:, None]
  points = []
  for row, size in zip(theta, (width, height)):
    normalised = xs * row[0] + ys * row[1] + row[2]
    # torch's CPU kernel: (g + 1) * (size / 2) - 0.5 as one fused multiply-add, which float64
    # reproduces (the float32 product is exact in it)
    scaled = (normalised + np.float32(1)).astype(np.float64) * np.float32(size / 2) - 0.5
    points.append(scaled.astype(np.float32))
  return np.stack(points)


def warp(image: np.ndarray, matrix: list[float]) -> np.ndarray:
  """torchvision's tensor ``affine``/``rotate`` without fill, bilinear: each output pixel
  interpolates its four input neighbours, those outside the image counting as 0, and the
  float32 result is rounded (half to even) to uint8."""
  height, width = image.shape[:2]
  x, y = _source_coordinates(matrix, height, width)
  x0, y0 = np.floor(x), np.floor(y)
  west, north = x - x0, y - y0  # the distances to the west and north neighbours
  east, south = np.float32(1) - west, np.float32(1) - north
  # Two rows and columns of zeros around the image hold every neighbour outside it: a
  # corner clipped to them, and its east or south neighbour, read 0 as torch counts it.
  stride = width + 4
  pixels = np.pad(image, ((2, 2), (2, 2), (0, 0))).reshape(-1, image.shape[2]).astype(np.float64)
  north_west = (np.clip(y0, -2, height).astype(np.intp) + 2) * stride
  north_west += np.clip(x0, -2, width).astype(np.intp) + 2
  corners = (
    (north_west, south * east),
    (north_west + 1, south * west),
    (north_west + stride, north * east),
    (north_west + stride + 1, north * west),
  )
  out = np.zeros((), np.float32)
  for index, weight in corners:
    term = weight.astype(np.float64)[..., None] * np.take(pixels, index, axis=0)
    # torch accumulates the corners with fused multiply-adds: one float32 rounding per corner
    out = (out + term).astype(np.float32)  # 0 + term: term exactly
  return np.rint(out).astype(np.uint8)


def shear(image: np.ndarray, magnitude: float, axis: int) -> np.ndarray:
  """ShearX (axis 0) or ShearY (axis 1): torchvision shears by atan(magnitude) degrees about
  the top-left corner."""
  height, width = image.shape[:2]
  shear_angle = math.degrees(math.atan(magnitude))
  angles = (shear_angle, 0.0) if axis == 0 else (0.0, shear_angle)
  matrix = inverse_affine((-width * 0.5, -height * 0.5), 0.0, (0.0, 0.0), angles)
  return warp(image, matrix)


def translate(image: np.ndarray, magnitude: float, axis: int) -> np.ndarray:
  """TranslateX (axis 0) or TranslateY (axis 1) by ``int(magnitude)`` pixels (truncated)."""
  pixels = float(int(magnitude))
  shift = (pixels, 0.0) if axis == 0 else (0.0, pixels)
  return warp(image, inverse_affine((0.0, 0.0), 0.0, shift, (0.0, 0.0)))


def rotate(image: np.ndarray, angle: float) -> np.ndarray:
  """Rotation by ``angle`` degrees counter-clockwise about the image centre, same size."""
  return warp(image, inverse_affine((0.0, 0.0), -angle, (0.0, 0.0), (0.0, 0.0)))


# ---- the colour ops: float32 blends truncated to uint8, and the integer ops


def blend(image: np.ndarray, other: np.ndarray | np.float32, ratio: float) -> np.ndarray:
  """torchvision's ``_blend``: ratio·image + (1 − ratio)·other in float32, clamped to [0, 255]
  and truncated (torch's float-to-uint8 cast), with torch's float32 ratio and 1 − ratio."""
  mixed = np.float32(ratio) * image.astype(np.float32)
  mixed += np.float32(1.0 - ratio) * np.asarray(other).astype(np.float32)
  return np.clip(mixed, 0, 255).astype(np.uint8)


def grayscale(image: np.ndarray) -> np.ndarray:
  """torchvision's tensor ``rgb_to_grayscale``: 0.2989 R + 0.587 G + 0.114 B in float32,
  truncated to uint8, shape (H, W, 1); a one-channel image as it is."""
  if image.shape[-1] == 1:
    return image
  r, g, b = (image[..., c].astype(np.float32) for c in range(3))
  grey = GREY_WEIGHTS[0] * r + GREY_WEIGHTS[1] * g + GREY_WEIGHTS[2] * b
  return grey.astype(np.uint8)[..., None]


def brightness(image: np.ndarray, factor: float) -> np.ndarray:
  """``adjust_brightness``: a blend with black."""
  return blend(image, np.zeros_like(image), factor)


def saturation(image: np.ndarray, factor: float) -> np.ndarray:
  """``adjust_saturation`` (AugMix's Color): a blend with the grey image; one channel as it is."""
  if image.shape[-1] == 1:
    return image
  return blend(image, grayscale(image), factor)


def contrast(image: np.ndarray, factor: float) -> np.ndarray:
  """``adjust_contrast``: a blend with the grey image's mean, which torch sums in float32 and
  divides by the pixel count; the integer sum here is exact, as torch's float32 sum of integers
  is below 2**24 (images up to 257 × 256 pixels); above, the mean may differ in its last bit."""
  grey = grayscale(image)
  mean = np.float32(grey.sum(dtype=np.int64)) / np.float32(grey.size)
  return blend(image, mean, factor)


def sharpness(image: np.ndarray, factor: float) -> np.ndarray:
  """``adjust_sharpness``: a blend with the image whose inner pixels are smoothed by the 3 × 3
  kernel (1 around, 5 in the middle, over 13) and rounded. torch convolves in float32, but an
  integer sum over 13 lies at least 1/26 from a rounding boundary, far beyond float32's error,
  so the exact integer rounding here gives torch's pixels."""
  height, width = image.shape[:2]
  if height <= 2 or width <= 2:
    return image
  pixels = image.astype(np.int32)
  total = (
    sum(pixels[dy : height - 2 + dy, dx : width - 2 + dx] for dy in range(3) for dx in range(3))
    + 4 * pixels[1:-1, 1:-1]
  )
  blurred = image.copy()
  blurred[1:-1, 1:-1] = (2 * total + 13) // 26  # round(total / 13); never a tie
  return blend(image, blurred, factor)


def autocontrast(image: np.ndarray) -> np.ndarray:
  """``autocontrast``: each channel stretched to [0, 255] in float32, truncated; the scale is
  torch's 255 / (max − min), computed as reciprocal then product; a flat channel is unchanged."""
  low = image.min(axis=(0, 1)).astype(np.float32)
  high = image.max(axis=(0, 1)).astype(np.float32)
  flat = high == low
  with np.errstate(divide="ignore"):
    scale = (np.float32(1) / (high - low)) * np.float32(255)
  low, scale = np.where(flat, np.float32(0), low), np.where(flat, np.float32(1), scale)
  stretched = (image.astype(np.float32) - low) * scale
  return np.clip(stretched, 0, 255).astype(np.uint8)


def _equalize_channel(channel: np.ndarray) -> np.ndarray:
  """torchvision's ``_scale_channel``: its integer histogram-equalising table."""
  hist = np.bincount(channel.ravel(), minlength=256)
  step = hist[hist != 0][:-1].sum() // 255
  if step == 0:
    return channel
  table = (np.cumsum(hist) + step // 2) // step
  table = np.clip(np.concatenate([[0], table[:-1]]), 0, 255)
  return table[channel].astype(np.uint8)


def equalize(image: np.ndarray) -> np.ndarray:
  """``equalize``: each channel through its own equalising table (integer: exact)."""
  return np.stack([_equalize_channel(image[..., c]) for c in range(image.shape[-1])], axis=-1)


def posterize(image: np.ndarray, bits: int) -> np.ndarray:
  """``posterize``: keeps the top ``bits`` bits (0 bits: black)."""
  return image & np.uint8(-(2 ** (8 - bits)) & 0xFF)


def solarize(image: np.ndarray, threshold: float) -> np.ndarray:
  """``solarize``: inverts the pixels at or above ``threshold`` (compared in float32, as torch
  promotes a uint8 tensor against a float)."""
  return np.where(image >= np.float32(threshold), 255 - image, image)


def apply_op(image: np.ndarray, name: str, magnitude: float) -> np.ndarray:
  """torchvision's ``autoaugment._apply_op`` on a uint8 tensor, bilinear and without fill (as
  AugMix calls it), on an HWC uint8 array: the op of that ``name`` with its signed
  ``magnitude``."""
  ops = {
    "ShearX": lambda: shear(image, magnitude, 0),
    "ShearY": lambda: shear(image, magnitude, 1),
    "TranslateX": lambda: translate(image, magnitude, 0),
    "TranslateY": lambda: translate(image, magnitude, 1),
    "Rotate": lambda: rotate(image, magnitude),
    "Brightness": lambda: brightness(image, 1.0 + magnitude),
    "Color": lambda: saturation(image, 1.0 + magnitude),
    "Contrast": lambda: contrast(image, 1.0 + magnitude),
    "Sharpness": lambda: sharpness(image, 1.0 + magnitude),
    "Posterize": lambda: posterize(image, int(magnitude)),
    "Solarize": lambda: solarize(image, magnitude),
    "AutoContrast": lambda: autocontrast(image),
    "Equalize": lambda: equalize(image),
  }
  op = ops.get(name)
  if op is None:
    raise ValueError(f"name={name!r} is not one of AugMix's ops {OPS}")
  return op()


# ---- AugMix: the draws, and the mix


class OpDraw(NamedTuple):
  """One op of a chain as torchvision draws it: the op, its magnitude bin (None where the op
  has no magnitude), whether the sign was flipped (only signed ops draw one), and the signed
  magnitude these give."""

  name: str
  bin: int | None
  negative: bool
  magnitude: float


@dataclasses.dataclass(frozen=True)
class AugMixParams:
  """One image's AugMix draws: ``weights`` (float32, 2), the Dirichlet weights of the original
  and of the chains' mix (torchvision's ``m``); ``chain_weights`` (float32, ``MIXTURE_WIDTH``),
  the chains' Dirichlet weights before scaling by ``weights[1]``; ``chains``, each chain's ops."""

  weights: np.ndarray
  chain_weights: np.ndarray
  chains: tuple[tuple[OpDraw, ...], ...]


class AugMix:
  """torchvision's ``AugMix(severity=severity, interpolation=interpolation)``: width 3, depths
  drawn from 1..3, alpha 1, all 13 ops, no fill, on a PIL image through its tensor ops."""

  def __init__(self, severity: int = 3, interpolation: str = "bilinear") -> None:
    if not 1 <= severity <= NUM_BINS:
      raise ValueError(f"severity={severity} must be in [1, {NUM_BINS}]")
    if interpolation != "bilinear":
      # torchvision's AugMix warps a tensor, and tensor affine/rotate refuse bicubic
      # (ValueError at the first geometric op): refused here at once instead
      raise ValueError(
        f"interpolation={interpolation!r}: AugMix supports only 'bilinear', as torchvision's, "
        "whose tensor affine and rotate refuse bicubic"
      )
    self.severity = severity
    self.interpolation = interpolation

  def params(self, rng: np.random.Generator, image_size: tuple[int, int]) -> AugMixParams:
    """Draws an image's parameters from ``rng`` for ``image_size`` = (height, width), with
    torchvision's distributions: Dirichlet(alpha) weights, each chain's depth uniform in
    1..3, each op uniform over ``OPS``, its bin uniform below ``severity``, its sign fair."""
    weights = rng.dirichlet([ALPHA, ALPHA]).astype(np.float32)
    chain_weights = rng.dirichlet([ALPHA] * MIXTURE_WIDTH).astype(np.float32)
    tables = magnitude_tables(image_size)
    chains = []
    for _ in range(MIXTURE_WIDTH):
      depth = int(rng.integers(1, MAX_CHAIN_DEPTH + 1))
      chains.append(tuple(self._draw_op(rng, tables) for _ in range(depth)))
    return AugMixParams(weights, chain_weights, tuple(chains))

  def _draw_op(self, rng: np.random.Generator, tables: dict) -> OpDraw:
    """One op, its bin and its sign."""
    name = OPS[int(rng.integers(len(OPS)))]
    table = tables[name]
    bin_ = None if table is None else int(rng.integers(self.severity))
    magnitude = 0.0 if table is None else float(table[bin_])
    negative = name in SIGNED and bool(rng.integers(2))
    return OpDraw(name, bin_, negative, -magnitude if negative else magnitude)

  def apply(self, image: np.ndarray, params: AugMixParams) -> np.ndarray:
    """The mix of HWC uint8 ``image`` under ``params``: weights[0]·image plus each chain's
    image times its weight, accumulated in float32 in torchvision's order, truncated to uint8."""
    mix = params.weights[0] * image.astype(np.float32)
    for weight, chain in zip(params.chain_weights * params.weights[1], params.chains):
      augmented = image
      for op in chain:
        augmented = apply_op(augmented, op.name, op.magnitude)
      mix += weight * augmented.astype(np.float32)
    return mix.astype(np.uint8)

  def __call__(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """AugMix of an RGB or L PIL ``image`` with draws from ``rng``."""
    if image.mode not in ("RGB", "L"):
      raise ValueError(f"image.mode={image.mode!r}: AugMix takes RGB or L images")
    pixels = np.asarray(image)
    pixels = pixels[..., None] if pixels.ndim == 2 else pixels
    out = self.apply(pixels, self.params(rng, pixels.shape[:2]))
    return Image.fromarray(out[..., 0] if image.mode == "L" else out)
