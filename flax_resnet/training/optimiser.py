"""A run's optimiser from its config: the optimiser itself (SGD or AdamW), its parameter
groups and masks (weight decay by group, frozen parts, the backbone's rate), the learning-rate
schedules and the EMA's."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from flax_resnet.choices import OPTIMIZERS
from flax_resnet.model import ResNet
from flax_resnet.training import models
from flax_resnet.training.config import Config
from flax_resnet.training.models import part_of, parts


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
  return _groups_apart(tx, clip_grad_norm, frozen, backbone_lr_mult)


def _groups_apart(
  tx: optax.GradientTransformation,
  clip_grad_norm: float,
  frozen: Sequence[str],
  backbone_lr_mult: float,
) -> optax.GradientTransformation:
  """``tx`` with ``transform``'s backbone rate, clipping and frozen parts around it."""
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


def _labels(label: Callable[[str], str]) -> Callable:
  """optax's labels function: ``label`` of each parameter's part, by its path."""
  return lambda params: jax.tree_util.tree_map_with_path(lambda p, _: label(part_of(p)), params)


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


def schedule(cfg: Config, steps_per_epoch: int) -> optax.Schedule:
  """Linear warm-up from ``lr_warmup_decay`` times the peak, then cosine decay over
  ``epochs``; the peak is lr * global_batch / 256. ``lr_update`` = "epoch": the rate
  changes once per epoch (``epoch_schedule``).

  ``max_steps`` only stops the run early: a run stopped and resumed with another
  ``max_steps`` takes the same steps as one that never stopped.
  """
  peak = cfg.lr * cfg.global_batch / 256
  if cfg.lr_update == "epoch":
    return epoch_schedule(cfg, steps_per_epoch, peak)
  warmup = int(cfg.warmup_epochs * steps_per_epoch)
  total_steps = cfg.epochs * steps_per_epoch
  # optax wants at least one warm-up step and one decay step after it.
  rate = optax.warmup_cosine_decay_schedule(
    cfg.lr_warmup_decay * peak if warmup else peak,
    peak,
    max(warmup, 1),
    max(total_steps, warmup + 1, 2),
  )
  # optax divides the int32 step count, which JAX turns into float32 even under
  # enable_x64; counting in the default int (int64 there) keeps a float64 run's rate exact.
  return lambda count: rate(jnp.asarray(count, jnp.result_type(int)))


def epoch_schedule(cfg: Config, steps_per_epoch: int, peak: float) -> optax.Schedule:
  """The rate of torchvision's reference trainer, whose schedulers step once per epoch: in
  epoch e (of step // steps_per_epoch), LinearLR's lr_warmup_decay + (1 - lr_warmup_decay) * e / W
  while e < W = warmup_epochs, then CosineAnnealingLR's 0.5 * (1 + cos(pi * (e - W) /
  (epochs - W))), as their SequentialLR; 0 from epoch ``epochs`` on."""
  w, start, length = cfg.warmup_epochs, cfg.lr_warmup_decay, cfg.epochs - cfg.warmup_epochs

  def rate(count):
    epoch = (jnp.asarray(count, jnp.result_type(int)) // steps_per_epoch).astype(float)
    cosine = 0.5 * (1 + jnp.cos(jnp.pi * jnp.minimum(epoch - w, length) / length))
    if not w:
      return peak * cosine
    return peak * jnp.where(epoch < w, start + (1 - start) * epoch / w, cosine)

  return rate


def ema_update_args(cfg: Config, step: int, steps_per_epoch: int) -> dict | None:
  """``steps.ema_update``'s step, decay and warm-up after step ``step`` (from 0), or ``None``
  when the average stays: it moves after the first step of each epoch and every ``ema_steps``-th
  after it. From the step's number alone, so that a resumed run moves it as one that never
  stopped.

  "warmup": the decay warms up by the update's number. "torchvision": the reference trainer's
  --model-ema, 1 - ema_decay scaled by its adjust, global_batch * ema_steps / epochs (at most
  1); AveragedModel copies at its first update, and the reference resets it after every
  update of an epoch < warmup_epochs: an update copies when the one before it (the previous
  epoch's last for the first of an epoch) was in such an epoch.
  """
  epoch, i = divmod(step, steps_per_epoch)
  if i % cfg.ema_steps:
    return None
  if cfg.ema_style == "warmup":
    per_epoch = -(-steps_per_epoch // cfg.ema_steps)
    return {"step": epoch * per_epoch + i // cfg.ema_steps, "decay": cfg.ema_decay}
  adjust = cfg.global_batch * cfg.ema_steps / cfg.epochs
  decay = 1.0 - min(1.0, (1.0 - cfg.ema_decay) * adjust)
  copy = epoch - (i == 0) < cfg.warmup_epochs
  return {"step": 0, "decay": 0.0 if copy else decay, "warmup": False}


def run_optimizer(cfg: Config, model: ResNet, steps_per_epoch: int) -> nnx.Optimizer:
  """The optimiser that ``cfg`` describes, over ``model``'s parameters."""
  return make_optimizer(
    model,
    schedule(cfg, steps_per_epoch),
    optimizer=cfg.optimizer,
    momentum=cfg.momentum,
    nesterov=cfg.nesterov,
    weight_decay=cfg.weight_decay,
    decay_all=cfg.decay_all,
    norm_weight_decay=cfg.norm_weight_decay,
    bias_weight_decay=cfg.bias_weight_decay,
    clip_grad_norm=cfg.clip_grad_norm,
    frozen=models.frozen(cfg, model),
    backbone_lr_mult=cfg.backbone_lr_mult,
  )
