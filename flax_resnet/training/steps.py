"""Optimiser, loss and the jitted train and eval steps."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx


def decay_mask(params) -> object:
  """True for conv and linear kernels: BatchNorm parameters and biases get no weight decay."""
  def is_kernel(path, x):
    last = path[-1]
    return getattr(last, "key", getattr(last, "name", None)) == "kernel" and x.ndim > 1
  return jax.tree_util.tree_map_with_path(is_kernel, params)


def make_optimizer(model: nnx.Module, learning_rate: float | optax.Schedule, *,
                   optimizer: str = "sgd", momentum: float = 0.9, nesterov: bool = False,
                   weight_decay: float = 1e-4, decay_all: bool = False) -> nnx.Optimizer:
  """SGD (torch-style coupled weight decay) or AdamW, over the model's ``nnx.Param``s."""
  mask = None if decay_all else decay_mask
  if optimizer == "sgd":
    tx = optax.chain(optax.add_decayed_weights(weight_decay, mask),
                     optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov))
  elif optimizer == "adamw":
    tx = optax.adamw(learning_rate, weight_decay=weight_decay, mask=mask)
  else:
    raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {optimizer!r}")
  # One program for the whole state rather than one zeros_like per parameter shape.
  return nnx.Optimizer(model, tx._replace(init=jax.jit(tx.init)), wrt=nnx.Param)


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0):
  """Mean cross-entropy in float32 (float64 for float64 logits), with torch's label smoothing."""
  logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
  targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
  return jnp.mean(optax.softmax_cross_entropy(logits, targets))


def accuracy(logits: jax.Array, labels: jax.Array) -> dict[str, jax.Array]:
  """Counts of top-1 and top-5 hits (sums, so that batches add up exactly)."""
  top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
  return {"top1": jnp.sum(top5[:, 0] == labels),
          "top5": jnp.sum(jnp.any(top5 == labels[:, None], axis=-1))}


def normalize(images: jax.Array, mean: tuple[float, ...], std: tuple[float, ...]) -> jax.Array:
  """uint8 images to float32 as torchvision's ToTensor + Normalize: (x / 255 - mean) / std.

  float64 when 64-bit types are enabled (``jax.enable_x64``), for float64 models.
  """
  dtype = jnp.result_type(float)  # float32, or float64 under enable_x64
  x = images.astype(dtype) / 255.0
  return (x - jnp.asarray(mean, dtype)) / jnp.asarray(std, dtype)


def global_norm(tree) -> jax.Array:
  """The L2 norm of all of ``tree``'s arrays together, in float32."""
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


def update(model: nnx.Module, optimizer: nnx.Optimizer, images: jax.Array, labels: jax.Array,
           label_smoothing: float = 0.0) -> dict[str, jax.Array]:
  """The step's work on the objects, in place: one optimiser update; the loss, the
  gradient's global norm (the trainer stops on a non-finite one) and accuracy counts."""
  def loss_fn(m):
    logits = m(images)
    return cross_entropy(logits, labels, label_smoothing), logits

  (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
  optimizer.update(model, grads)
  return {"loss": loss, "grad_norm": global_norm(grads),
          **accuracy(logits.astype(jnp.float32), labels)}


@functools.partial(jax.jit, static_argnames=("label_smoothing", "norm"), donate_argnames="state")
def train_step(graphdef: nnx.GraphDef, state: nnx.State, images: jax.Array, labels: jax.Array,
               label_smoothing: float = 0.0,
               norm: tuple[tuple[float, ...], tuple[float, ...]] | None = None
               ) -> tuple[nnx.State, dict[str, jax.Array]]:
  """One SGD/AdamW step (``update``); returns the new state, the loss and accuracy counts.

  ``graphdef, state = nnx.split((model, optimizer))`` with the model in train mode;
  ``state`` is donated. A plain ``jax.jit`` over the split state rather than
  ``nnx.jit`` over the objects: nnx.jit walks the model's graph on every call, which
  for a ResNet-50 costs the host 35 ms a step against 5 ms here (2-core CPU), time a
  GPU step of 50 ms cannot afford. With ``norm`` = (mean, std), ``images`` are uint8
  and normalised here, on the device.
  """
  model, optimizer = nnx.merge(graphdef, state)
  if norm is not None:
    images = normalize(images, *norm)
  metrics = update(model, optimizer, images, labels, label_smoothing)
  return nnx.state((model, optimizer)), metrics


def flat_train_step(graphdef: nnx.GraphDef, treedef, label_smoothing: float = 0.0,
                    norm: tuple[tuple[float, ...], tuple[float, ...]] | None = None):
  """``train_step`` as a jitted function of (state leaves, images, labels).

  It returns (new state leaves, metrics): lists and dicts of arrays, which
  ``jax.export`` can serialise (``train.step_cache``) and nnx.State cannot.
  ``treedef`` is that of the state: ``jax.tree.flatten(state)[1]``.
  """
  def step(leaves, images, labels):
    state = jax.tree.unflatten(treedef, leaves)
    state, metrics = train_step.__wrapped__(graphdef, state, images, labels, label_smoothing, norm)
    return jax.tree.leaves(state), metrics
  return jax.jit(step, donate_argnums=0)


@jax.jit
def eval_step(graphdef: nnx.GraphDef, state: nnx.State, images: jax.Array,
              labels: jax.Array) -> dict[str, jax.Array]:
  """Summed loss and accuracy counts; rows labelled -1 (padding) count for nothing.

  ``graphdef, state = nnx.split(model)`` with the model in eval mode.
  """
  logits = nnx.merge(graphdef, state)(images).astype(jnp.float32)
  valid = labels >= 0
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(valid, labels, 0))
  return {"loss_sum": jnp.sum(jnp.where(valid, losses, 0.0)), "count": jnp.sum(valid),
          **accuracy(logits, labels)}


@functools.partial(jax.jit, donate_argnums=0)
def ema_update(ema, state, step: jax.Array, decay: float):
  """Moves ``ema``, an average of the model's parameters and BN statistics, towards ``state``.

  ``ema`` is donated: the caller replaces it with the result. The decay warms up
  as min(decay, (1 + step) / (10 + step)), TensorFlow's ExponentialMovingAverage
  with num_updates, so early averages are not dominated by the random initialisation.
  """
  d = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
  return optax.incremental_update(state, ema, 1.0 - d)


@jax.jit
def all_finite(leaves) -> jax.Array:
  """Whether every floating-point array in ``leaves`` is free of NaN and Inf."""
  checks = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(leaves)
            if jnp.issubdtype(x.dtype, jnp.floating)]
  return jnp.all(jnp.stack(checks)) if checks else jnp.array(True)
