"""The jitted train and eval steps, their loss, the eval over a split, the EMA of the weights,
and the check that a step's results are finite (``Diverged``).

A train step is set by one ``StepSpec`` (``step_spec`` reads it from a run's config); the
batch it takes is prepared on the device by ``batch.prepare``, the optimiser it updates built
by ``optimiser``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Sharding

from flax_resnet.training import batch, data
from flax_resnet.training.batch import Mix
from flax_resnet.training.config import Config, DataConfig
from flax_resnet.training.data import SkipLog
from flax_resnet.training.models import part_of

# README's train_step example builds its optimiser with this name, from this module.
from flax_resnet.training.optimiser import make_optimizer as make_optimizer


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


@dataclasses.dataclass(frozen=True, kw_only=True)
class StepSpec:
  """What a train step computes besides its state and batch: every field named, none
  defaulted (``PLAIN`` is the step without options; ``dataclasses.replace`` changes one).
  Frozen and hashable: a static argument of the jitted step, part of its program.

  ``label_smoothing``: the loss's (torch's). ``norm`` = (mean, std): the images are uint8,
  normalised on the device; None: they come normalised. ``accumulate_steps`` = k: the batch
  goes through in k micro-batches (``update``) and must divide by k. ``frozen``: the parts
  the optimiser freezes (``optimiser.make_optimizer``), left out of the backward pass.
  ``mixing``: MixUp/CutMix (``batch.Mix``), or None.
  """

  label_smoothing: float
  norm: tuple[tuple[float, ...], tuple[float, ...]] | None
  accumulate_steps: int
  frozen: tuple[str, ...]
  mixing: Mix | None

  def __post_init__(self):
    # A list would make the jitted step fail on an unhashable static argument, far from here.
    for name in ("norm", "frozen"):
      value = getattr(self, name)
      if value is not None and not isinstance(value, tuple):
        raise TypeError(f"StepSpec {name} must be a tuple, got {type(value).__name__}")
    if self.accumulate_steps < 1:
      raise ValueError(f"StepSpec accumulate_steps must be >= 1, got {self.accumulate_steps}")


PLAIN = StepSpec(label_smoothing=0.0, norm=None, accumulate_steps=1, frozen=(), mixing=None)


def step_spec(cfg: Config, frozen: tuple[str, ...], devices: int) -> StepSpec:
  """The train step of run ``cfg`` over ``devices`` devices: its images normalised on the
  device, mixed in one group per device; ``frozen``: ``models.frozen``'s parts."""
  return StepSpec(
    label_smoothing=cfg.label_smoothing,
    norm=(tuple(cfg.mean), tuple(cfg.std)),
    accumulate_steps=cfg.accumulate_steps,
    frozen=frozen,
    mixing=batch.mix_settings(cfg, devices),
  )


@functools.partial(jax.jit, static_argnames="spec", donate_argnames="state")
def train_step(
  graphdef: nnx.GraphDef,
  state: nnx.State,
  images: jax.Array,
  labels: jax.Array,
  boxes: jax.Array | None = None,
  spec: StepSpec = PLAIN,
) -> tuple[nnx.State, dict[str, jax.Array]]:
  """One SGD/AdamW step (``update``) as ``spec`` sets it; returns the new state, the loss
  and accuracy counts.

  ``graphdef, state = nnx.split((model, optimizer))`` with the model in train mode;
  ``state`` is donated. A plain ``jax.jit`` over the split state rather than
  ``nnx.jit`` over the objects: nnx.jit walks the model's graph on every call, which
  for a ResNet-50 costs the host 35 ms a step against 5 ms here (2-core CPU), time a
  GPU step of 50 ms cannot afford. The batch is prepared first (``batch.prepare``:
  normalised, ``boxes`` (B, 4) erased when given, mixed), on the whole batch before any
  split into micro-batches. Without options (``PLAIN``) the step is what it was before
  they existed.
  """
  model, optimizer = nnx.merge(graphdef, state)
  images, targets = batch.prepare(
    images, labels, optimizer.step[...], spec.norm, boxes, spec.mixing
  )
  metrics = update(
    model,
    optimizer,
    images,
    labels,
    spec.label_smoothing,
    spec.accumulate_steps,
    spec.frozen,
    targets,
  )
  return nnx.state((model, optimizer)), metrics


def flat_train_step(graphdef: nnx.GraphDef, treedef, spec: StepSpec):
  """``train_step`` as a jitted function of (state leaves, images, labels[, erase boxes]).

  It returns (new state leaves, metrics): lists and dicts of arrays, which ``jax.export``
  serialises as they are (``training.step_cache``); an ``nnx.State`` is a pytree type of
  flax's, which it serialises only once registered.
  ``treedef`` is that of the state: ``jax.tree.flatten(state)[1]``.
  """

  def step(leaves, images, labels, *boxes):
    state = jax.tree.unflatten(treedef, leaves)
    state, metrics = train_step.__wrapped__(graphdef, state, images, labels, *boxes, spec=spec)
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


def evaluate(
  graphdef: nnx.GraphDef,
  config: DataConfig,
  sharding: Sharding,
  skips: SkipLog,
  model_state: nnx.State,
) -> dict[str, float]:
  """Eval loss, top-1 and top-5 of the model ``graphdef``, ``model_state`` over the eval split
  of ``config`` (each batch sharded by ``sharding``; unreadable images counted in ``skips``)."""
  model = nnx.merge(graphdef, model_state)
  model.eval()
  graphdef, state = nnx.split(model)
  totals = {"loss_sum": 0.0, "count": 0, "top1": 0, "top5": 0}
  source, batches = data.eval_batches(config, jax.process_index(), jax.process_count())
  for local in batches:
    skips.add(source, local)
    out = eval_step(graphdef, state, *batch.device_batch(local, sharding))
    for k in totals:
      totals[k] += float(out[k])
  n = max(totals["count"], 1)
  return {"loss": totals["loss_sum"] / n, "top1": totals["top1"] / n, "top5": totals["top5"] / n}


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


class Diverged(Exception):
  """A step's loss, gradient norm or weights were not finite; nothing from it was saved."""

  def __init__(self, step: int, what: str, last_saved: int | None, workdir: Path):
    kept = (
      f"the last checkpoint, step {last_saved}, holds finite weights"
      if last_saved is not None
      else "no checkpoint was saved"
    )
    super().__init__(
      f"step {step}: {what}: training diverged and stopped; {kept} "
      f"in {workdir / 'checkpoints'}. Lower lr or check the data"
    )


@jax.jit
def all_finite(leaves) -> jax.Array:
  """Whether every floating-point array in ``leaves`` is free of NaN and Inf."""
  checks = [
    jnp.all(jnp.isfinite(x))
    for x in jax.tree.leaves(leaves)
    if jnp.issubdtype(x.dtype, jnp.floating)
  ]
  return jnp.all(jnp.stack(checks)) if checks else jnp.array(True)
