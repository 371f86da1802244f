"""Optimiser, loss and the jitted train and eval steps."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from flax_resnet.choices import OPTIMIZERS
from flax_resnet.model import ResNet


def _name(key) -> object:
  """A path entry's name: a dict key or an attribute."""
  return getattr(key, "key", getattr(key, "name", None))


def decay_group(params, norm_weight_decay: float | None, bias_weight_decay: float | None) -> object:
  """Each parameter's weight-decay group, as torchvision's ``set_weight_decay`` sorts them:
  ``"bias"`` for a bias when ``bias_weight_decay`` is given (its custom key, matched
  first), ``"norm"`` for a norm layer's parameter (a layer with a ``scale``: BatchNorm,
  GroupNorm) when ``norm_weight_decay`` is given, else ``"other"`` (``weight_decay``)."""
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  norms = {path[:-1] for path, _ in flat if _name(path[-1]) == "scale"}

  def group(path, _):
    if bias_weight_decay is not None and _name(path[-1]) == "bias":
      return "bias"
    return "norm" if norm_weight_decay is not None and path[:-1] in norms else "other"

  return jax.tree_util.tree_map_with_path(group, params)


def decay_masks(
  weight_decay: float, norm_weight_decay: float | None, bias_weight_decay: float | None
) -> list[tuple[float, Callable | None]]:
  """(rate, optax mask) of each weight-decay group (``decay_group``) that decays; ``weight_decay``'s
  first and always, its mask ``None`` when every parameter is in it. A group of rate 0 is left
  out, as torch's optimisers skip it."""
  if norm_weight_decay is None and bias_weight_decay is None:
    return [(weight_decay, None)]

  def mask(name: str) -> Callable:
    return lambda params: jax.tree.map(
      lambda g: g == name, decay_group(params, norm_weight_decay, bias_weight_decay)
    )

  rates = {"norm": norm_weight_decay, "bias": bias_weight_decay}
  return [(weight_decay, mask("other"))] + [(r, mask(g)) for g, r in rates.items() if r]


def make_optimizer(
  model: ResNet, learning_rate: float | optax.Schedule, **options: Any
) -> nnx.Optimizer:
  """``transform``'s optimiser over the model's ``nnx.Param``s, ``options`` being its
  keywords; ``ValueError`` for a ``frozen`` part the model lacks."""
  frozen = options.get("frozen", ())
  unknown = set(frozen) - set(parts(model))
  if unknown:
    raise ValueError(
      f"cannot freeze {', '.join(sorted(unknown))}: the model's parts are {', '.join(parts(model))}"
    )
  tx = transform(learning_rate, **options)
  # One program for the whole state rather than one zeros_like per parameter shape.
  return nnx.Optimizer(model, tx._replace(init=jax.jit(tx.init)), wrt=nnx.Param)


def transform(
  learning_rate: float | optax.Schedule,
  *,
  optimizer: str = "sgd",
  momentum: float = 0.9,
  nesterov: bool = False,
  weight_decay: float = 1e-4,
  decay_all: bool = False,
  norm_weight_decay: float | None = 0.0,
  bias_weight_decay: float | None = 0.0,
  clip_grad_norm: float = 0.0,
  frozen: Sequence[str] = (),
  backbone_lr_mult: float = 1.0,
) -> optax.GradientTransformation:
  """SGD (torch-style coupled weight decay) or AdamW, for a ResNet's parameters.

  Weight decay by parameter group as torchvision's ``set_weight_decay`` (``decay_masks``):
  ``weight_decay`` for kernels, ``norm_weight_decay`` for norm layers' scales and biases,
  ``bias_weight_decay`` for every bias (first); ``None`` puts them in ``weight_decay``'s
  group, as ``decay_all`` does for both. ``clip_grad_norm`` > 0 first scales the gradient
  down to that global L2 norm when it is longer (``clip_by_global_norm``), as torchvision's
  reference trainer calls ``nn.utils.clip_grad_norm_`` before ``optimizer.step()``: the
  weight decay is added after clipping, inside the step. ``frozen`` parts (``stem``, ``layerN``;
  see ``part_of``) get no update at all, not even weight decay, no optimiser state,
  and take no part in the clipped norm (torch's frozen parameters have no gradient);
  ``freeze_norms`` puts their BatchNorm in eval mode. ``backbone_lr_mult`` multiplies
  the learning rate of every parameter but ``fc``'s.
  """
  tx = base_transform(
    optimizer,
    learning_rate,
    momentum=momentum,
    nesterov=nesterov,
    weight_decay=weight_decay,
    decay_all=decay_all,
    norm_weight_decay=norm_weight_decay,
    bias_weight_decay=bias_weight_decay,
  )
  if backbone_lr_mult != 1:
    # SGD's and AdamW's updates are linear in the learning rate (momentum and Adam's
    # moments do not depend on it), so scaling the update is torch's per-group lr.
    tx = optax.chain(
      tx,
      optax.multi_transform(
        {"head": optax.identity(), "backbone": optax.scale(backbone_lr_mult)},
        _labels(lambda part: "head" if part == "fc" else "backbone"),
      ),
    )
  if clip_grad_norm:
    tx = optax.chain(clip_by_global_norm(clip_grad_norm), tx)
  if frozen:
    tx = optax.multi_transform(
      {"train": tx, "frozen": optax.set_to_zero()},
      _labels(lambda part: "frozen" if part in frozen else "train"),
    )
  return tx


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
  """torch's ``nn.utils.clip_grad_norm_``: the gradient times min(1, max_norm / (norm + 1e-6)),
  norm its global L2 norm (optax's ``clip_by_global_norm`` divides by the norm alone)."""

  def update(updates, state, params=None):
    del params
    factor = jnp.minimum(1.0, max_norm / (optax.tree.norm(updates) + 1e-6))
    return jax.tree.map(lambda g: (g * factor).astype(g.dtype), updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def parts(model: ResNet) -> tuple[str, ...]:
  """The parts of a ResNet that can be frozen: ``stem``, ``layer1``, ``layer2``..."""
  return tuple(info.name for info in model.feature_info)


STEM_MODULES = ("conv1", "bn1", "maxpool")  # the stem part's modules (maxpool: timm's conv pool)


def part_of(path: tuple) -> str:
  """The part a parameter at state ``path`` belongs to: ``stem`` (``conv1``, ``bn1``, timm's
  conv ``maxpool``), ``layerN`` or ``fc``."""
  first = str(getattr(path[0], "key", getattr(path[0], "name", path[0])))
  return "stem" if first in STEM_MODULES else first


def _labels(label: Callable[[str], str]) -> Callable:
  """optax's labels function: ``label`` of each parameter's part, by its path."""
  return lambda params: jax.tree_util.tree_map_with_path(lambda p, _: label(part_of(p)), params)


def freeze_norms(model: ResNet, frozen: Sequence[str]) -> None:
  """BatchNorm of the ``frozen`` parts in eval mode: it normalises with its running
  statistics and leaves them as they are. Call it after ``model.train()``, which undoes it."""
  for part in frozen:
    if part == "stem":  # timm's deep stem and conv pool hold norms too
      for name in STEM_MODULES:
        if hasattr(model, name):
          getattr(model, name).set_attributes(use_running_average=True, raise_if_not_found=False)
    else:
      getattr(model, part).set_attributes(use_running_average=True, raise_if_not_found=False)


def base_transform(
  optimizer: str,
  learning_rate: float | optax.Schedule,
  *,
  momentum: float,
  nesterov: bool,
  weight_decay: float,
  decay_all: bool,
  norm_weight_decay: float | None = 0.0,
  bias_weight_decay: float | None = 0.0,
) -> optax.GradientTransformation:
  """The optimiser's own transformation: SGD with coupled decay, or AdamW, with the decay of
  each parameter group (``decay_masks``; ``decay_all``: every parameter by ``weight_decay``)."""
  if decay_all:
    norm_weight_decay = bias_weight_decay = None
  groups = decay_masks(weight_decay, norm_weight_decay, bias_weight_decay)
  decays = [optax.add_decayed_weights(rate, mask) for rate, mask in groups]
  if optimizer == "sgd":
    return optax.chain(*decays, optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov))
  if optimizer == "adamw":
    if len(groups) == 1:  # optax's own, as before groups (its state's structure)
      return optax.adamw(learning_rate, weight_decay=groups[0][0], mask=groups[0][1])
    # optax.adamw's chain, with one decay per group
    return optax.chain(optax.scale_by_adam(), *decays, optax.scale_by_learning_rate(learning_rate))
  raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0):
  """Mean cross-entropy in float32 (float64 for float64 logits), with torch's label smoothing."""
  logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
  targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
  return jnp.mean(optax.softmax_cross_entropy(logits, targets))


def soft_cross_entropy(logits: jax.Array, targets: jax.Array, label_smoothing: float = 0.0):
  """Mean cross-entropy against probability ``targets`` (B, C), smoothed as torch's
  CrossEntropyLoss smooths probabilities: (1 - ε) t + ε / C."""
  logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
  targets = optax.smooth_labels(targets.astype(logits.dtype), label_smoothing)
  return jnp.mean(optax.softmax_cross_entropy(logits, targets))


def accuracy(logits: jax.Array, labels: jax.Array) -> dict[str, jax.Array]:
  """Counts of top-1 and top-5 hits (sums, so that batches add up exactly)."""
  top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
  return {
    "top1": jnp.sum(top5[:, 0] == labels),
    "top5": jnp.sum(jnp.any(top5 == labels[:, None], axis=-1)),
  }


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


def global_norm(tree) -> jax.Array:
  """The L2 norm of all of ``tree``'s arrays together, in float32."""
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


def update(
  model: nnx.Module,
  optimizer: nnx.Optimizer,
  images: jax.Array,
  labels: jax.Array,
  label_smoothing: float = 0.0,
  accumulate_steps: int = 1,
  frozen: Sequence[str] = (),
  targets: jax.Array | None = None,
) -> dict[str, jax.Array]:
  """The step's work on the objects, in place: one optimiser update; the loss, the
  gradient's global norm (the trainer stops on a non-finite one) and accuracy counts.

  ``accumulate_steps`` = k splits the batch into k micro-batches (``micro_batches``),
  one at a time through the network: the gradient is their mean, as one batch of all
  of them, and BatchNorm normalises each with its own statistics and moves its running
  statistics k times, as torch's gradient accumulation does. The ``frozen`` parts'
  parameters are not differentiated (zeros go to the optimiser, which ignores them):
  the backward pass stops where nothing before it trains. ``targets`` (B, C), when given,
  are the loss's probability targets (MixUp/CutMix's); accuracy counts ``labels``.
  """
  wrt = trainable(frozen)
  if accumulate_steps > 1:
    loss, grads, counts = accumulated_gradient(
      model, images, labels, label_smoothing, accumulate_steps, wrt, targets
    )
  else:

    def loss_fn(m):
      logits = m(images)
      return loss_of(logits, labels, targets, label_smoothing), logits

    (loss, logits), grads = nnx.value_and_grad(
      loss_fn, argnums=nnx.DiffState(0, wrt), has_aux=True
    )(model)
    counts = accuracy(logits.astype(jnp.float32), labels)
  norm = global_norm(grads)
  if frozen:  # the optimiser takes a gradient for every Param
    grads = nnx.merge_state(jax.tree.map(jnp.zeros_like, nnx.state(model, nnx.Param)), grads)
  optimizer.update(model, grads)
  return {"loss": loss, "grad_norm": norm, **counts}


def loss_of(
  logits: jax.Array, labels: jax.Array, targets: jax.Array | None, label_smoothing: float
) -> jax.Array:
  """``cross_entropy`` of the labels, or ``soft_cross_entropy`` of ``targets`` when given."""
  if targets is None:
    return cross_entropy(logits, labels, label_smoothing)
  return soft_cross_entropy(logits, targets, label_smoothing)


def trainable(frozen: Sequence[str]) -> nnx.filterlib.Filter:
  """The nnx filter of the parameters outside the ``frozen`` parts."""
  if not frozen:
    return nnx.Param
  return nnx.All(nnx.Param, lambda path, _: part_of(path) not in frozen)


def micro_batches(x: jax.Array, k: int) -> jax.Array:
  """``x`` (B, ...) as k micro-batches (k, B / k, ...); micro-batch j holds rows j, j + k,
  j + 2k...: each device's contiguous shard of a sharded batch gives every micro-batch
  an equal part, so none moves between devices and per-device BatchNorm groups stay
  the devices' shards."""
  return jnp.moveaxis(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 1, 0)


def accumulated_gradient(
  model: nnx.Module,
  images: jax.Array,
  labels: jax.Array,
  label_smoothing: float,
  k: int,
  wrt: nnx.filterlib.Filter = nnx.Param,
  targets: jax.Array | None = None,
) -> tuple[jax.Array, nnx.State, dict[str, jax.Array]]:
  """(mean loss, mean gradient, summed accuracy counts) of ``k`` micro-batches, in a
  ``lax.scan``: one micro-batch's activations are alive at a time. The model's other
  state (BatchNorm's running statistics) is carried from one micro-batch to the next
  and written back. ``wrt``: the parameters differentiated; ``targets``: as ``update``'s."""
  # Two filters, two states: nnx.split is typed for any number of them.
  graphdef, params, rest = nnx.split(model, wrt, ...)  # type: ignore[misc]

  def micro(carry, batch):
    rest, total = carry
    x, y, t = batch

    def loss_fn(params, rest):
      # copy: variables of this trace; merge would reuse the caller's, which BatchNorm
      # cannot update from inside the scan (TraceContextError).
      m = nnx.merge(graphdef, params, rest, copy=True)
      logits = m(x)
      loss = loss_of(logits, y, t, label_smoothing)
      return loss, (logits, nnx.state(m, nnx.Not(wrt)))

    (loss, (logits, rest)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, rest)
    total = jax.tree.map(jnp.add, total, grads)
    return (rest, total), (loss, accuracy(logits.astype(jnp.float32), y))

  (rest, total), (losses, counts) = jax.lax.scan(
    micro,
    (rest, jax.tree.map(jnp.zeros_like, params)),
    jax.tree.map(lambda a: micro_batches(a, k), (images, labels, targets)),
  )
  nnx.update(model, rest)
  # Equal micro-batches: the mean of their mean losses is the batch's mean loss.
  return (
    jnp.mean(losses),
    jax.tree.map(lambda g: g / k, total),
    jax.tree.map(lambda c: jnp.sum(c, axis=0), counts),
  )


@functools.partial(
  jax.jit,
  static_argnames=("label_smoothing", "norm", "accumulate_steps", "frozen", "mixing"),
  donate_argnames="state",
)
def train_step(
  graphdef: nnx.GraphDef,
  state: nnx.State,
  images: jax.Array,
  labels: jax.Array,
  label_smoothing: float = 0.0,
  norm: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
  accumulate_steps: int = 1,
  frozen: tuple[str, ...] = (),
  boxes: jax.Array | None = None,
  mixing: Mix | None = None,
) -> tuple[nnx.State, dict[str, jax.Array]]:
  """One SGD/AdamW step (``update``); returns the new state, the loss and accuracy counts.

  ``graphdef, state = nnx.split((model, optimizer))`` with the model in train mode;
  ``state`` is donated. A plain ``jax.jit`` over the split state rather than
  ``nnx.jit`` over the objects: nnx.jit walks the model's graph on every call, which
  for a ResNet-50 costs the host 35 ms a step against 5 ms here (2-core CPU), time a
  GPU step of 50 ms cannot afford. With ``norm`` = (mean, std), ``images`` are uint8
  and normalised here, on the device. ``accumulate_steps`` = k takes the batch in k
  micro-batches (``update``); the batch must divide by k. ``frozen``: the parts that
  the optimiser freezes (``make_optimizer``), left out of the backward pass.

  The normalised batch then goes through torchvision's batch augmentations in its
  reference trainer's order: ``boxes`` (B, 4), when given, are random erasing's (``erase``);
  ``mixing`` MixUp/CutMix (``mix``) with the key of the optimizer's step count
  (``step_key``), on the whole batch before any split into micro-batches, as torchvision
  mixes the collated batch. Without both the step is what it was before they existed.
  """
  model, optimizer = nnx.merge(graphdef, state)
  if norm is not None:
    images = normalize(images, *norm)
  if boxes is not None:
    images = erase(images, boxes)
  targets = None
  if mixing is not None:
    key = step_key(mixing.seed, optimizer.step[...])
    images, targets = mix(key, images, labels, mixing)
  metrics = update(
    model, optimizer, images, labels, label_smoothing, accumulate_steps, frozen, targets
  )
  return nnx.state((model, optimizer)), metrics


def flat_train_step(
  graphdef: nnx.GraphDef,
  treedef,
  label_smoothing: float = 0.0,
  norm: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
  accumulate_steps: int = 1,
  frozen: tuple[str, ...] = (),
  mixing: Mix | None = None,
):
  """``train_step`` as a jitted function of (state leaves, images, labels[, erase boxes]).

  It returns (new state leaves, metrics): lists and dicts of arrays, which
  ``jax.export`` can serialise (``train.step_cache``) and nnx.State cannot.
  ``treedef`` is that of the state: ``jax.tree.flatten(state)[1]``.
  """

  def step(leaves, images, labels, *boxes):
    state = jax.tree.unflatten(treedef, leaves)
    state, metrics = train_step.__wrapped__(
      graphdef,
      state,
      images,
      labels,
      label_smoothing,
      norm,
      accumulate_steps,
      frozen,
      *boxes,
      mixing=mixing,
    )
    return jax.tree.leaves(state), metrics

  return jax.jit(step, donate_argnums=0)


@jax.jit
def eval_step(
  graphdef: nnx.GraphDef, state: nnx.State, images: jax.Array, labels: jax.Array
) -> dict[str, jax.Array]:
  """Summed loss and accuracy counts; rows labelled -1 (padding) count for nothing.

  ``graphdef, state = nnx.split(model)`` with the model in eval mode.
  """
  logits = nnx.merge(graphdef, state)(images).astype(jnp.float32)
  valid = labels >= 0
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(valid, labels, 0))
  return {
    "loss_sum": jnp.sum(jnp.where(valid, losses, 0.0)),
    "count": jnp.sum(valid),
    **accuracy(logits, labels),
  }


@functools.partial(jax.jit, donate_argnums=0, static_argnames="warmup")
def ema_update(ema, state, step: jax.Array, decay: float, warmup: bool = True):
  """Moves ``ema``, an average of the model's parameters and BN statistics, towards ``state``:
  decay * ema + (1 - decay) * state.

  ``ema`` is donated: the caller replaces it with the result. With ``warmup`` the decay
  warms up as min(decay, (1 + step) / (10 + step)), TensorFlow's ExponentialMovingAverage
  with num_updates, so early averages are not dominated by the random initialisation
  (``step``: the update's number); without, it is ``decay`` (0: a copy of ``state``).
  Leaves that are not floating point (the random streams' keys and counts of drop path and
  DropBlock) are copied from ``state``: they are no weights to average.
  """
  d = jnp.minimum(decay, (1.0 + step) / (10.0 + step)) if warmup else decay

  def move(new, old):
    if not jnp.issubdtype(new.dtype, jnp.floating):
      return jnp.copy(new)
    return optax.incremental_update(new, old, 1.0 - d)

  return jax.tree.map(move, state, ema)


@jax.jit
def all_finite(leaves) -> jax.Array:
  """Whether every floating-point array in ``leaves`` is free of NaN and Inf."""
  checks = [
    jnp.all(jnp.isfinite(x))
    for x in jax.tree.leaves(leaves)
    if jnp.issubdtype(x.dtype, jnp.floating)
  ]
  return jnp.all(jnp.stack(checks)) if checks else jnp.array(True)
