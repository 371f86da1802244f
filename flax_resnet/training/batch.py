"""A batch on the device, as the train step takes it: placed on the devices from each
process's rows (``device_batch``), then normalised, erased and mixed (MixUp/CutMix) in
torchvision's reference trainer's order (``prepare``), inside the step's program."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Sharding

from flax_resnet.training.config import Config


def check_devices(cfg: Config, devices: int) -> None:
  """``ValueError`` for a ``global_batch`` that does not split into an equal share of each of
  ``devices`` devices, or of each micro-batch (``accumulate_steps``) of each."""
  if cfg.global_batch % devices:
    raise ValueError(f"global_batch {cfg.global_batch} is not divisible by the {devices} devices")
  if cfg.global_batch % (devices * cfg.accumulate_steps):
    raise ValueError(
      f"config accumulate_steps={cfg.accumulate_steps}: global_batch "
      f"{cfg.global_batch} does not split into {cfg.accumulate_steps} micro-batches "
      f"with an equal share of each of the {devices} devices"
    )


def device_batch(local: dict, sharding: Sharding, erase: bool = False) -> tuple[jax.Array, ...]:
  """(images, labels) and, with ``erase``, the erase boxes of this process's rows ``local``:
  global arrays, each sharded over the devices by its rows (``sharding``)."""
  make = jax.make_array_from_process_local_data
  arrays = [local["image"], np.asarray(local["label"], np.int32)]
  if erase:
    arrays.append(np.asarray(local["erase"], np.int32))
  return tuple(make(sharding, a) for a in arrays)


def prepare(
  images: jax.Array,
  labels: jax.Array,
  step: jax.Array,
  norm: tuple[tuple[float, ...], tuple[float, ...]] | None,
  boxes: jax.Array | None,
  mixing: Mix | None,
) -> tuple[jax.Array, jax.Array | None]:
  """(images, soft targets or None) as the step trains on them: uint8 ``images`` normalised
  by ``norm`` = (mean, std) when given, then torchvision's batch augmentations in its
  reference trainer's order: ``boxes`` (B, 4), when given, are random erasing's (``erase``);
  ``mixing`` MixUp/CutMix (``mix``) with the key of the optimizer's ``step`` count
  (``step_key``), on the whole batch, as torchvision mixes the collated batch."""
  if norm is not None:
    images = normalize(images, *norm)
  if boxes is not None:
    images = erase(images, boxes)
  if mixing is None:
    return images, None
  return mix(step_key(mixing.seed, step), images, labels, mixing)


def mix_settings(cfg: Config, groups: int) -> Mix | None:
  """The run's MixUp/CutMix settings, ``None`` when both alphas are 0: ``groups`` groups, one
  per device, as torchvision mixes each GPU's batch."""
  if not (cfg.mixup_alpha > 0 or cfg.cutmix_alpha > 0):
    return None
  return Mix(cfg.num_classes, cfg.mixup_alpha, cfg.cutmix_alpha, groups, cfg.seed)


def normalize(images: jax.Array, mean: tuple[float, ...], std: tuple[float, ...]) -> jax.Array:
  """uint8 images to float32 as torchvision's ToTensor + Normalize: (x / 255 - mean) / std.

  float64 when 64-bit types are enabled (``jax.enable_x64``), for float64 models.
  """
  dtype = jnp.result_type(float)  # float32, or float64 under enable_x64
  x = images.astype(dtype) / 255.0
  return (x - jnp.asarray(mean, dtype)) / jnp.asarray(std, dtype)


def erase(images: jax.Array, boxes: jax.Array) -> jax.Array:
  """``images`` (B, H, W, C), normalised, with each one's box of ``boxes`` (B, 4) int32 =
  (top, left, height, width) set to 0: torchvision's ``F.erase`` with v=0 on the normalised
  tensor, as its RandomErasing(value=0) after Normalize. A box of height or width 0 erases
  nothing (the host draws the boxes; zeros where an image is not erased)."""
  top, left, height, width = (boxes[:, i] for i in range(4))
  mask = _box_mask(top, left, top + height, left + width, *images.shape[1:3])
  return jnp.where(mask[..., None], jnp.zeros((), images.dtype), images)


def _box_mask(y1, x1, y2, x2, height: int, width: int) -> jax.Array:
  """(B, height, width): True at rows y1 <= r < y2 and columns x1 <= c < x2 of each box."""
  rows, cols = jnp.arange(height), jnp.arange(width)
  in_rows = (rows >= y1[:, None]) & (rows < y2[:, None])
  in_cols = (cols >= x1[:, None]) & (cols < x2[:, None])
  return in_rows[:, :, None] & in_cols[:, None, :]


class Mix(NamedTuple):
  """The train step's MixUp/CutMix settings: static (hashable), part of the compiled program.

  ``groups``: the batch's contiguous parts, each mixed on its own with its own draw (the
  data-parallel devices' shards: torchvision mixes each GPU's collated batch); ``seed``:
  optimizer step t draws from ``step_key(seed, t)``.
  """

  num_classes: int
  mixup_alpha: float = 0.0
  cutmix_alpha: float = 0.0
  groups: int = 1
  seed: int = 0


def step_key(seed: int, step: jax.Array) -> jax.Array:
  """The random key of optimizer step ``step`` (its count before the update): a function of
  the step alone, so that a resumed run draws what the uninterrupted one drew."""
  return jax.random.fold_in(jax.random.key(seed), step)


def mix_params(key: jax.Array, mix: Mix, height: int, width: int) -> dict[str, jax.Array]:
  """One draw per group (``mix.groups``) of torchvision v2's ``RandomChoice([MixUp, CutMix])``
  (those with alpha > 0, equally likely) and the chosen one's ``make_params``.

  Each array has a leading axis of groups: ``cutmix`` (bool), ``lam`` (float32) the weight of
  each image's own label (MixUp's λ ~ Beta(α, α); CutMix's ``lam_adjusted``, 1 - box area /
  image area), ``box`` (int32 y1, x1, y2, x2) CutMix's pasted rows and columns, empty for
  MixUp. λ is float32 as torch's Beta draws; every draw is of a fixed dtype, the same with
  64-bit types enabled or not.
  """
  draw = jax.vmap(lambda k: _draw(k, mix, height, width))(jax.random.split(key, mix.groups))
  # outside the vmap: cutmix_box's division stays a division (see there)
  box, lam_adjusted = cutmix_box(draw["lam_cutmix"], draw["r_x"], draw["r_y"], height, width)
  cutmix = draw["cutmix"]
  return {
    "cutmix": cutmix,
    "lam": jnp.where(cutmix, lam_adjusted, draw["lam_mixup"]),
    "box": jnp.where(cutmix[:, None], box, 0),
  }


def _draw(key: jax.Array, mix: Mix, height: int, width: int) -> dict[str, jax.Array]:
  """One group's random numbers: the choice, both λs, CutMix's centre."""
  k_choice, k_mixup, k_cutmix, k_x, k_y = jax.random.split(key, 5)
  if mix.mixup_alpha > 0 and mix.cutmix_alpha > 0:
    cutmix = jax.random.uniform(k_choice, dtype=jnp.float32) < 0.5
  else:
    cutmix = jnp.asarray(mix.cutmix_alpha > 0)
  return {
    "cutmix": cutmix,
    "lam_mixup": _beta(k_mixup, mix.mixup_alpha),
    "lam_cutmix": _beta(k_cutmix, mix.cutmix_alpha),
    "r_x": jax.random.randint(k_x, (), 0, width, jnp.int32),
    "r_y": jax.random.randint(k_y, (), 0, height, jnp.int32),
  }


# torch's Dirichlet (its Beta's sampler) clamps each share to [tiny, 1 - 2^-24] in float32
LAM_RANGE = (float(jnp.finfo(jnp.float32).tiny), 1.0 - 2.0**-24)


def _beta(key: jax.Array, alpha: float) -> jax.Array:
  """λ ~ Beta(alpha, alpha) in float32 as torch draws it; 1 (no mixing) for an alpha that is off.

  torch divides two gammas in float64 and rounds the quotient to float32 within ``LAM_RANGE``:
  never 0 or 1 (at alpha 0.2 one draw in 50 is 1 - 2^-24). jax.random.beta's gammas are
  float32 logarithms (the same keys and gammas here), but its 1 / (1 + small) rounds on a grid
  twice as coarse below 1 and gives 1 itself; here the smaller share, accurate to float32,
  is subtracted from 1 instead, which rounds as torch's quotient does, then clamped."""
  if alpha <= 0:
    return jnp.ones((), jnp.float32)
  key_a, key_b = jax.random.split(key)
  log_a = jax.random.loggamma(key_a, alpha, dtype=jnp.float32)
  log_b = jax.random.loggamma(key_b, alpha, dtype=jnp.float32)
  small = jnp.exp(-jnp.abs(log_a - log_b))  # the smaller gamma over the larger, in [0, 1]
  minor = small / (1 + small)  # the smaller one's share, at most 1/2
  lam = jnp.where(log_a >= log_b, 1 - minor, minor)
  return jnp.clip(lam, *LAM_RANGE)


def cutmix_box(
  lam: jax.Array, r_x: jax.Array, r_y: jax.Array, height: int, width: int
) -> tuple[jax.Array, jax.Array]:
  """CutMix's boxes (..., 4) = (y1, x1, y2, x2) and adjusted λs from λs and centres (r_x, r_y)
  of any one shape, by torchvision's rule: half sides int(r W), int(r H) with
  r = sqrt(1 - λ) / 2, clamped to the image, λ = 1 - area / (W H).

  The half sides are exact (``_half_side``); torchvision's float64 differs from exact only
  for λ below ~1e-15, where it rounds 1 - λ up. λ is the float32 nearest the exact quotient,
  as is float32(torchvision's float64 λ) but for double rounding (~2^-29 odds).
  """
  half_w, half_h = _half_side(lam, width), _half_side(lam, height)
  x1, y1 = jnp.maximum(r_x - half_w, 0), jnp.maximum(r_y - half_h, 0)
  x2, y2 = jnp.minimum(r_x + half_w, width), jnp.minimum(r_y + half_h, height)
  area = width * height
  kept = (area - (x2 - x1) * (y2 - y1)).astype(jnp.float32)
  return jnp.stack([y1, x1, y2, x2], axis=-1).astype(jnp.int32), _divide(kept, area)


def _divide(x: jax.Array, divisor: int) -> jax.Array:
  """x / divisor rounded once, as IEEE division. XLA turns a division by a (broadcast)
  constant into a product with its rounded reciprocal, at times 1 ulp off; a divisor of
  x's shape behind a barrier stays a division. Under vmap the barrier would hold a scalar
  again: call this on whole arrays."""
  return x / jax.lax.optimization_barrier(jnp.full(x.shape, divisor, jnp.float32))


def _half_side(lam: jax.Array, size: int) -> jax.Array:
  """floor(sqrt(1 - λ) / 2 * size) for a float32 λ, exact for sizes up to 4096: float32's
  estimate is off by at most one (a relative error ~1e-7 of a value below 2048), and
  ``_fits`` picks the largest of its neighbours that fits. float32 alone would round
  sqrt(1 - λ) up to 1 for λ < 6e-8: a half side of size / 2 where torchvision's is one less."""
  guess = jnp.floor(0.5 * jnp.sqrt(1.0 - lam) * size).astype(jnp.int32)
  return jnp.where(
    _fits(lam, guess + 1, size), guess + 1, jnp.where(_fits(lam, guess, size), guess, guess - 1)
  )


def _fits(lam: jax.Array, k: jax.Array, size: int) -> jax.Array:
  """Whether 2k <= sqrt(1 - λ) size, that is λ <= n / d with n = size² - 4k², d = size²
  (integers, exact in float32 up to 2^24). q, the float32 nearest n / d, decides it for a
  float32 λ: λ < q means λ <= n / d and λ > q the opposite; only λ = q is left, to the
  exact sign of q d - n (``_above``): float32's λ d would round a q just above a tie down
  onto n (at 224, λ = 0.9999203 for k = 1). λ and q are compared by their bits, ordered as
  the non-negative floats are: XLA flushes a subnormal λ to 0 in a float comparison."""
  n = size * size - 4 * k * k
  q = _divide(n.astype(jnp.float32), size * size)
  lam_bits, q_bits = (jax.lax.bitcast_convert_type(x, jnp.int32) for x in (lam, q))
  return (lam_bits < q_bits) | ((lam_bits == q_bits) & ~_above(q, n, size * size))


def _above(q: jax.Array, n: jax.Array, d: int) -> jax.Array:
  """Whether q d > n, exactly, for q the float32 nearest n / d (integers 0 <= n <= d < 2^32):
  in 32-bit integers, without 64-bit types. q = m 2^-s (m its 24-bit integer
  significand), so q d - n = (m d - n 2^s) 2^-s; the integer m d - n 2^s is at most d / 2 in
  magnitude (q is within half its unit 2^-s of n / d), so its value modulo 2^32 (uint32
  arithmetic, which wraps) read as an int32 is exact."""
  bits = jax.lax.bitcast_convert_type(q, jnp.uint32)
  biased = (bits >> 23).astype(jnp.int32)  # q >= 0: no sign bit
  significand = (bits & 0x7FFFFF) | jnp.where(biased > 0, 0x800000, 0).astype(jnp.uint32)
  shift = 150 - jnp.maximum(biased, 1)  # q = significand 2^-shift, subnormals included
  # n 2^shift modulo 2^32: 0 from shift 32 on (a shift past the width is not one to rely on)
  scaled = jnp.where(
    shift < 32, n.astype(jnp.uint32) << jnp.minimum(shift, 31).astype(jnp.uint32), 0
  )
  difference = significand * jnp.uint32(d) - scaled.astype(jnp.uint32)
  return jax.lax.bitcast_convert_type(difference, jnp.int32) > 0


def mix(
  key: jax.Array, images: jax.Array, labels: jax.Array, settings: Mix
) -> tuple[jax.Array, jax.Array]:
  """(mixed images, soft targets (B, num_classes)) of a batch: ``mix_params`` drawn from
  ``key``, then ``apply_mix``."""
  params = mix_params(key, settings, *images.shape[1:3])
  return apply_mix(images, labels, params, settings.num_classes)


def apply_mix(
  images: jax.Array, labels: jax.Array, params: dict[str, jax.Array], num_classes: int
) -> tuple[jax.Array, jax.Array]:
  """torchvision v2's MixUp or CutMix on each group of the batch with its ``params``
  (``mix_params``): the group rolled by one (``roll(1, 0)``: image i takes image i - 1's),
  MixUp blends the images, CutMix pastes the box; the one-hot targets blend with λ, in
  float32 as torchvision's (whatever the images' dtype)."""
  groups = params["lam"].shape[0]
  x = images.reshape(groups, -1, *images.shape[1:])
  t = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32).reshape(groups, -1, num_classes)
  x, t = jax.vmap(_mix_group)(x, t, params["cutmix"], params["lam"], params["box"])
  return x.reshape(images.shape), t.reshape(-1, num_classes)


def _mix_group(x, t, cutmix, lam, box) -> tuple[jax.Array, jax.Array]:
  """One group's MixUp or CutMix: torchvision's rolled * (1 - λ) + x * λ, and its paste."""
  rolled_x, rolled_t = jnp.roll(x, 1, axis=0), jnp.roll(t, 1, axis=0)
  lam_x = lam.astype(x.dtype)  # torch's Python float λ meets the images in their dtype
  blended = rolled_x * (1 - lam_x) + x * lam_x
  inside = _box_mask(box[None, 0], box[None, 1], box[None, 2], box[None, 3], *x.shape[1:3])
  pasted = jnp.where(inside[..., None], rolled_x, x)
  return jnp.where(cutmix, pasted, blended), rolled_t * (1 - lam) + t * lam
