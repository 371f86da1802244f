"""Train or fine-tune a flax-resnet model: one command from a laptop CPU to a TPU pod.

    python train/train.py --config train/configs/cifar10_resnet18.py --workdir runs/c10 \\
        --set data_dir=/data/cifar10 --set epochs=30

A run resumes from the latest checkpoint in --workdir. The batch is sharded over
every device of every process (jax.distributed, initialised automatically on
TPU pods and from --coordinator/--num-processes/--process-id elsewhere).
BatchNorm statistics are computed over the whole global batch by default;
``--set bn_stats=per_device`` computes them over each device's shard, as PyTorch
DDP does per GPU.
"""

from __future__ import annotations

import argparse
import fcntl
import inspect
import json
import os
import signal
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import flax_resnet
from flax_resnet.cli import EXIT_DIVERGED, EXIT_INTERRUPTED, report
from flax_resnet.cpu import use_every_core
from flax_resnet.model import DEFAULT_CHANNELS
from flax_resnet.caches import enable_compilation_cache
from flax_resnet.training import checkpoints, config as config_lib, data, step_cache
from flax_resnet.files import write_atomic
from flax_resnet.training.plot import append_metric, repair_last_line
from flax_resnet.training import steps as steps_lib
from flax_resnet.training.steps import (all_finite, ema_update, eval_step, flat_train_step,
                                       freeze_norms, make_optimizer)

def setup_distributed(args) -> None:
  """``jax.distributed.initialize`` from the flags, automatically on TPU pods, else nothing."""
  if args.coordinator:
    jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
  elif os.environ.get("TPU_NAME") or os.environ.get("JAX_COORDINATOR_ADDRESS"):
    jax.distributed.initialize()
  else:
    return
  # A first collective while the processes are still in step: CPU (gloo) collectives set
  # up their context on first use and give up when the processes arrive 30 s apart.
  from jax.experimental import multihost_utils
  multihost_utils.sync_global_devices("flax_resnet:start")


def model_spec(cfg) -> tuple[str | None, dict]:
  """(arch, options) for ``flax_resnet.registry.build_model``; arch None for custom depths."""
  options = dict(num_classes=cfg.num_classes, stem=cfg.stem,
                 dtype=None if cfg.dtype == "float32" else cfg.dtype,
                 norm="frozen_batch" if cfg.freeze_bn else "batch")
  if not cfg.layers:
    return cfg.arch, options
  block = flax_resnet.registry.architecture(cfg.arch).block
  return None, dict(options, block=block, layers=tuple(cfg.layers),
                    channels=tuple(cfg.channels) or DEFAULT_CHANNELS[:len(cfg.layers)])


def build_model(cfg) -> nnx.Module:
  """A fresh model, or one started from ``init_from``: a converted checkpoint, or
  torchvision's weights by name (``weights_name``)."""
  arch, options = model_spec(cfg)
  model = flax_resnet.registry.build_model(arch, dict(options, rngs=nnx.Rngs(cfg.seed)))
  if cfg.init_from:
    source, meta, what = load_init(cfg, arch, options)
    keep_head = meta.options.get("num_classes") == cfg.num_classes
    check_same_network(cfg.init_from, (arch, options), (meta.arch, meta.options))
    state = nnx.state(source)
    if not keep_head:
      del state["fc"]  # a fresh head for the new classes
    check_same_shapes(cfg.init_from, nnx.state(model), state, skip=() if keep_head else ("fc",))
    nnx.update(model, state)
    print(f"initialised from {what} ({'its' if keep_head else 'a fresh'} head)", flush=True)
  return model


TORCHVISION_PREFIX = "torchvision:"


def weights_name(init_from: str) -> str | None:
  """The torchvision weights name ``init_from`` gives, or None for a checkpoint folder:
  ``torchvision:NAME`` always names weights; a bare ``IMAGENET1K_V2``, ``DEFAULT`` or
  ``ResNet50_Weights.IMAGENET1K_V2`` does unless a path of that name exists."""
  if init_from.startswith(TORCHVISION_PREFIX):
    return init_from[len(TORCHVISION_PREFIX):]
  from flax_resnet.pretrained import entry_name
  try:
    entry_name(init_from)  # the spelling weights= accepts
  except ValueError:
    return None
  return None if os.path.exists(init_from) else init_from


def load_init(cfg, arch: str | None, options: dict) -> tuple[nnx.Module, object, str]:
  """(model, metadata, a description) that ``init_from`` names, in the run's norm and
  dtype: a converted folder read, or torchvision's weights for ``arch`` converted once
  through the cache that ``create_model(weights=...)`` uses."""
  weights = weights_name(cfg.init_from)
  common = {"norm": options["norm"], "dtype": options["dtype"]}
  if weights is None:
    return (*flax_resnet.load(cfg.init_from, **common), cfg.init_from)
  if arch is None:
    raise ValueError(f"config init_from={cfg.init_from!r}: torchvision's weights are for "
                     f"{cfg.arch}'s own depths and widths; set layers= and channels= empty")
  from flax_resnet.pretrained import load_pretrained, resolve_entry
  try:
    source, meta = load_pretrained(arch, weights, **common)
  except ValueError as e:
    raise ValueError(f"config init_from={cfg.init_from!r}: {e}") from e
  return source, meta, f"torchvision's {arch} {resolve_entry(arch, weights)}"


# Constructor options that make another network, whether or not its tensors' shapes
# differ (a dilation or a stem keeps some); num_classes decides whether the head is kept,
# dtype and norm are the run's own.
NETWORK_OPTIONS = ("block", "layers", "channels", "groups", "width_per_group", "stem",
                   "replace_stride_with_dilation", "in_channels", "expansion", "norm_groups")


def network_options(arch: str | None, options: dict) -> dict:
  """``NETWORK_OPTIONS`` as (arch, options) build them, defaults and the table included."""
  parameters = inspect.signature(flax_resnet.ResNet.__init__).parameters.values()
  defaults = {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}
  table = flax_resnet.registry.architecture(arch)._asdict() if arch else {}
  merged = {**defaults, **table, **options}
  plain = {k: list(v) if isinstance(v, (list, tuple)) else v
           for k, v in merged.items() if k in NETWORK_OPTIONS}
  block = plain["block"]  # a class or its name
  plain["block"] = block if isinstance(block, str) else block.__name__.lower().replace(
      "block", "")
  if not any(plain["replace_stride_with_dilation"] or ()):
    plain["replace_stride_with_dilation"] = None  # None and all False are the same network
  return plain


def check_same_network(path: str, ours: tuple, theirs: tuple) -> None:
  """``ValueError`` naming the first ``NETWORK_OPTIONS`` entry in which checkpoint ``path``
  (``theirs``: its arch and options) differs from the run's model (``ours``)."""
  if ours[0] and theirs[0] and ours[0] != theirs[0]:
    raise ValueError(f"init_from {path} holds {theirs[0]}, this run builds {ours[0]}: set "
                     f"--set arch={theirs[0]}, or start from a {ours[0]} checkpoint")
  mine, saved = network_options(*ours), network_options(*theirs)
  for k in NETWORK_OPTIONS:
    if mine[k] != saved[k]:
      raise ValueError(f"init_from {path} is a network with {k}={saved[k]!r}, this run builds "
                       f"{k}={mine[k]!r}: set the run's {k} to match, or start from another "
                       "checkpoint")


def check_same_shapes(path: str, ours: nnx.State, theirs: nnx.State, skip=()) -> None:
  """``ValueError`` naming the first tensor whose key or shape differs between checkpoint
  ``path`` (``theirs``) and the run's model (``ours``), ``skip``ped top-level keys apart:
  ``nnx.update`` would otherwise put a tensor of another shape in the model silently."""
  def shapes(state):
    return {".".join(str(getattr(k, "key", k)) for k in key): tuple(np.shape(x))
            for key, x in jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(state))[0]
            if str(getattr(key[0], "key", key[0])) not in skip}
  mine, saved = shapes(ours), shapes(theirs)
  for key in [*mine, *saved]:
    if mine.get(key) != saved.get(key):
      there = saved[key] if key in saved else "absent"
      here = mine[key] if key in mine else "absent"
      raise ValueError(f"init_from {path}: {key} has shape {there} there and {here} in this "
                       "run's model: start from a checkpoint of the same network")


def schedule(cfg, steps_per_epoch: int) -> optax.Schedule:
  """Linear warm-up then cosine decay over ``epochs``; the peak is lr * global_batch / 256.

  ``max_steps`` only stops the run early: a run stopped and resumed with another
  ``max_steps`` takes the same steps as one that never stopped.
  """
  peak = cfg.lr * cfg.global_batch / 256
  warmup = int(cfg.warmup_epochs * steps_per_epoch)
  total_steps = cfg.epochs * steps_per_epoch
  # optax wants at least one warm-up step and one decay step after it.
  rate = optax.warmup_cosine_decay_schedule(0.0 if warmup else peak, peak, max(warmup, 1),
                                            max(total_steps, warmup + 1, 2))
  # optax divides the int32 step count, which JAX turns into float32 even under
  # enable_x64; counting in the default int (int64 there) keeps a float64 run's rate exact.
  return lambda count: rate(jnp.asarray(count, jnp.result_type(int)))


def frozen(cfg, model: nnx.Module) -> tuple[str, ...]:
  """The parts of ``model`` that the run keeps as they are: every part but ``fc`` for a
  linear probe, else those ``freeze`` names; ``ValueError`` for one the model lacks."""
  have = steps_lib.parts(model)
  if cfg.linear_probe:
    return have
  names = config_lib.frozen_parts(cfg.freeze)
  missing = [name for name in names if name not in have]
  if missing:
    raise ValueError(f"config freeze={cfg.freeze!r}: this model has no {missing[0]}; its "
                     f"parts are {', '.join(have)}")
  return names


def run_optimizer(cfg, model: nnx.Module, steps_per_epoch: int) -> nnx.Optimizer:
  """The optimiser that ``cfg`` describes, over ``model``'s parameters."""
  return make_optimizer(
      model, schedule(cfg, steps_per_epoch), optimizer=cfg.optimizer, momentum=cfg.momentum,
      nesterov=cfg.nesterov, weight_decay=cfg.weight_decay, decay_all=cfg.decay_all,
      clip_grad_norm=cfg.clip_grad_norm, frozen=frozen(cfg, model),
      backbone_lr_mult=cfg.backbone_lr_mult)


class Preemption:
  """Turns SIGTERM (TPU preemption, job schedulers) and SIGINT (Ctrl-C) into a flag the
  loop checks: the run saves and stops. A second Ctrl-C stops at once, without saving
  (``KeyboardInterrupt``, reported in one line)."""

  def __init__(self):
    self.requested: str | None = None  # the signal's name, once one came
    signal.signal(signal.SIGTERM, self._handle)
    signal.signal(signal.SIGINT, self._handle)

  def _handle(self, signum, frame):
    if self.requested == "SIGINT" and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.requested = signal.Signals(signum).name


def check_config(cfg, devices: int) -> None:
  """Config errors that only show once the device count is known, as ValueErrors."""
  if cfg.global_batch % devices:
    raise ValueError(f"global_batch {cfg.global_batch} is not divisible by the {devices} devices")
  if cfg.global_batch % (devices * cfg.accumulate_steps):
    raise ValueError(f"config accumulate_steps={cfg.accumulate_steps}: global_batch "
                     f"{cfg.global_batch} does not split into {cfg.accumulate_steps} micro-batches "
                     f"with an equal share of each of the {devices} devices")
  flax_resnet.registry.architecture(cfg.arch)


# Fields a resumed run may change: they decide when to stop, log, save or evaluate, and
# where and how the same images are read, never what a step computes; remat trades the
# step's memory for compute, the same function (in bfloat16, rounded otherwise).
RESUMABLE = ("max_steps", "log_every", "workers", "prefetch", "keep_checkpoints",
             "checkpoint_every", "eval_every_epochs", "step_cache", "data_dir", "remat")


def changed_on_resume(cfg, workdir: Path) -> list[str]:
  """The fields that differ from the run already in ``workdir`` (none for a new run).

  Raises ``ValueError`` naming every changed field outside ``RESUMABLE``: those
  would make the resumed run compute something else than the run it continues.
  """
  saved_file = workdir / "config.json"
  if not (saved_file.is_file() and checkpoints.has_checkpoints(workdir)):
    return []
  try:
    saved = json.loads(saved_file.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{saved_file} is corrupt ({e}): cannot check the resumed settings") from e
  new = json.loads(json.dumps(cfg.to_json()))  # tuples as lists, as saved
  changed = sorted(k for k in new if k in saved and saved[k] != new[k])
  refused = [k for k in changed if k not in RESUMABLE]
  if refused:
    raise ValueError(f"workdir {workdir} holds a run with other settings: " + ", ".join(
        f"{k} {saved[k]!r} -> {new[k]!r}" for k in refused) + "; they change what the run "
        "computes: set them back, or use another --workdir")
  return [f"{k} {saved[k]!r} -> {new[k]!r}" for k in changed]


class Diverged(Exception):
  """A step's loss, gradient norm or weights were not finite; nothing from it was saved."""

  def __init__(self, step: int, what: str, last_saved: int | None, workdir: Path):
    kept = (f"the last checkpoint, step {last_saved}, holds finite weights"
            if last_saved is not None else "no checkpoint was saved")
    super().__init__(f"step {step}: {what}: training diverged and stopped; {kept} "
                     f"in {workdir / 'checkpoints'}. Lower lr or check the data")


class Trainer:
  """Owns the model, optimiser, data iterator and checkpoints of one run."""

  def __init__(self, cfg, workdir: Path):
    self.cfg, self.workdir = cfg, workdir
    self.mesh = Mesh(np.array(jax.devices()), ("data",))
    self.batch_sharding = NamedSharding(self.mesh, P("data"))
    check_config(cfg, jax.device_count())
    self.batches, self.source = data.train_batches(cfg, jax.process_index(),
                                                   jax.process_count())
    self.data_fingerprint = None  # synthetic data: nothing to compare on resume
    if self.source is not None:
      data.check_splits(cfg, self.source)
      self.data_fingerprint = self.source.fingerprint()
    count = len(self.source) if self.source else data.SYNTHETIC_EPOCH
    self.steps_per_epoch = max(count // cfg.global_batch, 1)
    self.total_steps = cfg.max_steps or cfg.epochs * self.steps_per_epoch
    self.step_cache = self._start_step_cache()  # loads while the model is built
    self._step = None
    self._build_state()
    # The first write to the workdir: every check of the input has passed.
    workdir.mkdir(parents=True, exist_ok=True)
    self.checkpoints = checkpoints.manager(workdir, cfg.keep_checkpoints)
    self.step, self.skips, self.best = 0, data.SkipLog(), None  # None until an eval
    self._unchecked: tuple[int, dict] | None = None  # the last step's metrics, not yet checked

  def _build_state(self) -> None:
    """The run's state, in the one form the jitted steps take and give: leaves.

    ``leaves`` are those of the split (model, optimizer), in train mode, replicated
    over the mesh; ``ema_leaves`` the model's part of them, averaged. Objects are
    rebuilt from them only to evaluate (``_evaluate``) and to save (``states``).
    """
    cfg = self.cfg
    model = build_model(cfg)
    if cfg.bn_stats == "per_device":  # each device's shard is one BatchNorm group
      model.set_attributes(batch_groups=jax.device_count(), raise_if_not_found=False)
    model.set_attributes(moments=cfg.bn_moments, backward=cfg.bn_backward,
                         raise_if_not_found=False)
    model.remat = cfg.remat
    optimizer = run_optimizer(cfg, model, self.steps_per_epoch)
    model.train()
    self.frozen = frozen(cfg, model)
    freeze_norms(model, self.frozen)
    self.model_graphdef = nnx.split(model)[0]
    self.graphdef, state = nnx.split((model, optimizer))
    state = jax.device_put(state, NamedSharding(self.mesh, P()))
    # The step takes and gives the state's leaves: no per-step flatten and unflatten.
    self.leaves, self.treedef = jax.tree.flatten(state)
    self.model_treedef = jax.tree.structure(state[0])
    self.ema_leaves = None
    if cfg.ema_decay:  # own buffers: the step donates the model's
      self.ema_leaves = jax.jit(lambda xs: [jnp.copy(x) for x in xs])(self.model_leaves)

  @property
  def model_leaves(self) -> list[jax.Array]:
    """The model's leaves: (model, optimizer) flattens the model first."""
    return self.leaves[:self.model_treedef.num_leaves]

  def states(self) -> dict[str, nnx.State]:
    """The state by name, as checkpoints hold it: model, optimizer and, when kept, ema."""
    state = jax.tree.unflatten(self.treedef, self.leaves)
    named = {"model": state[0], "optimizer": state[1]}
    if self.ema_leaves is not None:
      named["ema"] = jax.tree.unflatten(self.model_treedef, self.ema_leaves)
    return named

  def _start_step_cache(self) -> step_cache.StepCache | None:
    if not self.cfg.step_cache or jax.process_count() > 1:
      return None
    key = step_cache.run_key(config=self.cfg.to_json(), steps_per_epoch=self.steps_per_epoch,
                             total_steps=self.total_steps)
    return step_cache.StepCache(key, self.mesh, donate_argnums=(0,))

  def _compile_step(self, args: tuple):
    """The train step over the state's leaves: from the step cache, else traced."""
    step = flat_train_step(self.graphdef, self.treedef, self.cfg.label_smoothing,
                           (tuple(self.cfg.mean), tuple(self.cfg.std)), self.cfg.accumulate_steps,
                           self.frozen)
    if self.step_cache is None:
      return step
    compiled = self.step_cache.get(step, args, str(self.treedef))
    if compiled is None:
      return step
    print(f"train step: {'loaded from' if self.step_cache.source == 'disk' else 'traced into'} "
          f"{self.step_cache.path}", flush=True)
    return compiled

  def resume(self) -> None:
    """Continues from the newest intact checkpoint: newer damaged ones are moved aside
    with a warning each (``checkpoints.restore_newest_intact``)."""
    found = checkpoints.restore_newest_intact(self.checkpoints, self.states(),
                                              self._check_resumable, _warn)
    if found is None:
      return
    step, meta, restored = found
    self.leaves = jax.tree.leaves((restored["model"], restored["optimizer"]))
    if self.ema_leaves is not None:
      self.ema_leaves = jax.tree.leaves(restored["ema"])
    # The saved position, in the form of this run's worker count (it may have changed).
    self.batches.set_state(data.state_for_workers(
        meta["data_state"], meta["config"]["workers"], self.cfg.workers))
    self.step, self.skips.count, self.best = step, meta["skipped"], meta["best_top1"]
    print(f"resumed from step {step}", flush=True)

  def _check_resumable(self, meta: dict) -> None:
    """Raises ``ValueError`` for a checkpoint of another architecture, EMA setting or
    training images."""
    if meta["config"]["arch"] != self.cfg.arch:
      raise ValueError(f"workdir {self.workdir} holds a checkpoint of {meta['config']['arch']}; "
                       f"this run is {self.cfg.arch}: use another --workdir")
    if bool(meta["config"].get("ema_decay")) != bool(self.cfg.ema_decay):
      raise ValueError(f"workdir {self.workdir} holds a checkpoint with ema_decay="
                       f"{meta['config'].get('ema_decay')}; this run has ema_decay="
                       f"{self.cfg.ema_decay}: keep EMA on or off for the whole run")
    if self.data_fingerprint is not None:
      data.check_same_images(meta.get("train_data"), self.data_fingerprint,
                             f"data_dir {self.cfg.data_dir}")

  def save(self, metrics: dict | None = None) -> None:
    self.check_finite()  # a checkpoint never holds what a NaN made
    if not all_finite(self.leaves):  # an update can overflow after a finite step
      raise Diverged(self.step, "NaN or Inf in the weights", self.checkpoints.latest_step(),
                     self.workdir)
    meta = {"config": self.cfg.to_json(), "data_state": self.batches.get_state(),
            "skipped": self.skips.count, "best_top1": self.best, "step": self.step,
            "train_data": self.data_fingerprint}
    checkpoints.save(self.checkpoints, self.step, self.states(), meta, metrics)

  def global_batch(self, local: dict) -> tuple[jax.Array, jax.Array]:
    make = jax.make_array_from_process_local_data
    return (make(self.batch_sharding, local["image"]),
            make(self.batch_sharding, np.asarray(local["label"], np.int32)))

  def train_one(self) -> dict:
    local = next(self.batches)
    self.skips.add(self.source, local)
    images, labels = self.global_batch(local)
    if self._step is None:
      self._step = self._compile_step((self.leaves, images, labels))
    self.leaves, metrics = self._step(self.leaves, images, labels)
    # The previous step's figures are checked while this one runs: the device never waits.
    self.check_finite()
    self._unchecked = (self.step + 1, metrics)
    if self.ema_leaves is not None:
      self.ema_leaves = ema_update(self.ema_leaves, self.model_leaves, self.step,
                                   self.cfg.ema_decay)
    self.step += 1
    return metrics

  def check_finite(self) -> None:
    """Raises ``Diverged`` if the last step's loss or gradient norm is NaN or infinite."""
    if self._unchecked is None:
      return
    step, metrics = self._unchecked
    self._unchecked = None
    loss, norm = float(metrics["loss"]), float(metrics["grad_norm"])
    if not (np.isfinite(loss) and np.isfinite(norm)):
      raise Diverged(step, f"loss {loss:.6g}, gradient norm {norm:.6g}",
                     self.checkpoints.latest_step(), self.workdir)

  def evaluate(self) -> dict[str, float]:
    """Eval loss, top-1 and top-5 of the model, and of its EMA (``ema_*``) when kept."""
    self.check_finite()
    states = self.states()
    metrics = self._evaluate(states["model"])
    if "ema" in states:
      metrics.update({f"ema_{k}": v for k, v in self._evaluate(states["ema"]).items()})
    return metrics

  def _evaluate(self, model_state: nnx.State) -> dict[str, float]:
    model = nnx.merge(self.model_graphdef, model_state)
    model.eval()
    graphdef, state = nnx.split(model)
    totals = {"loss_sum": 0.0, "count": 0, "top1": 0, "top5": 0}
    source, batches = data.eval_batches(self.cfg, jax.process_index(), jax.process_count())
    for local in batches:
      self.skips.add(source, local)
      out = eval_step(graphdef, state, *self.global_batch(local))
      for k in totals:
        totals[k] += float(out[k])
    n = max(totals["count"], 1)
    return {"loss": totals["loss_sum"] / n, "top1": totals["top1"] / n,
            "top5": totals["top5"] / n}


LOG_SECONDS = 30  # a progress line at least this often, whatever log_every says


class Progress:
  """Lines with loss, images/s and ETA every ``log_every`` steps and at least every
  ``LOG_SECONDS``; TensorBoard scalars and metrics.jsonl at the ``log_every`` steps only,
  so that they do not depend on the machine's speed."""

  def __init__(self, trainer: Trainer, workdir: Path):
    self.trainer, self.start, self.last = trainer, time.perf_counter(), time.perf_counter()
    self.first_step, self.images = trainer.step, 0
    self.writer, self.metrics_file = None, workdir / "metrics.jsonl"
    self.logdir = workdir / "tensorboard" if jax.process_index() == 0 else None
    self.pending: list[tuple[str, float, int]] = []  # scalars waiting for the writer
    if self.logdir and repair_last_line(self.metrics_file):
      print(f"note: removed the last line of {self.metrics_file}, cut short when the run "
            "before stopped", flush=True)

  def step(self, metrics: dict) -> None:
    t = self.trainer
    if self.logdir and not self.writer:
      # Importing tensorboardX takes 2 s of a core: not while the first step runs.
      jax.block_until_ready(metrics)
      self.writer = ThreadPoolExecutor(1).submit(_summary_writer, self.logdir)
    self.images += t.cfg.global_batch
    scheduled = t.step % t.cfg.log_every == 0 or t.step == t.total_steps
    if not scheduled and time.perf_counter() - self.last < LOG_SECONDS:
      return
    loss = float(metrics["loss"])
    self.last = time.perf_counter()
    rate = self.images / (self.last - self.start)
    eta = (t.total_steps - t.step) * t.cfg.global_batch / max(rate, 1e-9)
    print(f"step {t.step}/{t.total_steps} loss {loss:.4f} {rate:.1f} img/s "
          f"ETA {_duration(eta)} skipped {t.skips.count}", flush=True)
    if scheduled:
      self.scalar("train/loss", loss)
      self.scalar("train/images_per_s", rate)

  def scalar(self, name: str, value: float) -> None:
    """TensorBoard (once its writer is ready), and metrics.jsonl for train/plot.py."""
    if self.logdir:
      self.pending.append((name, value, self.trainer.step))
      append_metric(self.metrics_file, self.trainer.step, name, value)
      if self.writer and self.writer.done():
        self._flush()

  def _flush(self) -> None:
    writer = self.writer.result()
    for name, value, step in self.pending:
      writer.add_scalar(name, value, step)
    self.pending.clear()

  def close(self) -> None:
    if self.writer:
      self._flush()
      self.writer.result().close()

  def images_per_s(self) -> float:
    return self.images / max(time.perf_counter() - self.start, 1e-9)


def _warn(line: str) -> None:
  print(line, file=sys.stderr, flush=True)


def _duration(seconds: float) -> str:
  if seconds < 3600:
    return f"{seconds / 60:.1f} min"
  return f"{seconds / 3600:.1f} h" if seconds < 48 * 3600 else f"{seconds / 86400:.1f} days"


def _warn_if_cpu(trainer: Trainer) -> None:
  if jax.default_backend() == "cpu" and jax.process_index() == 0:
    print(f"note: no accelerator: this run's {trainer.total_steps} steps of "
          f"{trainer.cfg.global_batch} images run on the CPU ({jax.device_count()} device(s)); "
          f"a progress line with its ETA comes at least every {LOG_SECONDS} s. Presets sized "
          "for GPUs and TPUs can take days here.", flush=True)
    state = jax.tree.unflatten(trainer.model_treedef, trainer.model_leaves)
    parts = host_memory_estimate(trainer.cfg, trainer.model_graphdef, state,
                                 jax.process_count())
    print(f"note: this run needs about {sum(parts.values()) / 2**30:.1f} GB of host memory "
          f"({', '.join(f'{k} {v / 2**30:.1f} GB' for k, v in parts.items())}){_of_total()}; "
          "lower global_batch, workers or image_size if that is more than it has", flush=True)


# Calibration of ``host_memory_estimate``: on a CPU, the finetune preset (ResNet-50 at 224,
# batch 64, 8 workers) was measured at 11-12 GB; the estimate below gives 11.3.
_BYTES_SAVED_PER_ACTIVATION = 12  # float32 convolution output, BatchNorm output, ReLU output
_WORKER_BYTES = 210 * 2**20  # a grain worker process's own memory (measured: 210 MB)
_RUNTIME_BYTES = 2**30  # Python, JAX, XLA:CPU and its compiled step in the main process
_STATE_COPIES = 5  # weights, gradients, momentum, and the two the update holds at once


def host_memory_estimate(cfg, graphdef: nnx.GraphDef, state: nnx.State,
                         processes: int = 1) -> dict[str, float]:
  """Bytes of host memory a CPU run of this process needs, by part: what the train step
  keeps for its backward pass (from the model's convolution and matmul outputs, read off
  its trace), the weights and optimiser state, the worker processes with their read-ahead,
  and the runtime. An estimate, calibrated on the finetune preset (above)."""
  local_batch = cfg.global_batch // processes
  weights = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state)) * 4
  batch_bytes = local_batch * cfg.image_size ** 2 * 3
  per_image = _activation_count(graphdef, state, cfg.global_batch, cfg.image_size)
  micro_batch = local_batch // cfg.accumulate_steps  # what the backward pass keeps at once
  parts = {"activations": per_image * micro_batch * _BYTES_SAVED_PER_ACTIVATION,
           "weights and optimiser": weights * (_STATE_COPIES + bool(cfg.ema_decay)),
           "workers": cfg.workers * (_WORKER_BYTES + (cfg.prefetch + 1) * batch_bytes),
           "runtime": _RUNTIME_BYTES + (cfg.prefetch + 1) * batch_bytes}
  return {k: float(v) for k, v in parts.items()}


def _activation_count(graphdef: nnx.GraphDef, state: nnx.State, batch: int,
                      image_size: int) -> float:
  """Elements that the convolutions and matrix products of the forward pass output, per
  image. Traced at the run's global batch, which per-device BatchNorm groups divide."""
  def forward(state, x):
    return nnx.merge(graphdef, state)(x)
  images = jax.ShapeDtypeStruct((batch, image_size, image_size, 3), jnp.float32)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
  return _outputs(jax.make_jaxpr(forward)(abstract, images).jaxpr) / batch


def _outputs(jaxpr) -> int:
  from jax.extend import core
  total = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name in ("conv_general_dilated", "dot_general"):
      total += int(np.prod(eqn.outvars[0].aval.shape))
    for sub in jax.tree.leaves(list(eqn.params.values()),
                               is_leaf=lambda x: isinstance(x, (core.Jaxpr, core.ClosedJaxpr))):
      if isinstance(sub, (core.Jaxpr, core.ClosedJaxpr)):
        total += _outputs(getattr(sub, "jaxpr", sub))
  return total


def _of_total() -> str:
  try:
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
  except (ValueError, OSError):  # not every system names them
    return ""
  return f" of this machine's {total / 2**30:.0f} GB"


def _summary_writer(logdir: Path):
  from tensorboardX import SummaryWriter
  return SummaryWriter(str(logdir))


def lock_workdir(workdir: Path) -> IO:
  """An exclusive lock on ``workdir`` for this process, held while the returned file is
  open; ``ValueError`` naming the holder when another run has it: two runs in one
  workdir overwrite each other's checkpoints (orbax's temporary folders vanish).

  Each process of a run locks a file of its own (``.lock.process_N``): the processes of
  one multi-host run share the workdir, and process N of a second run is refused.
  """
  path = workdir / f".lock.process_{jax.process_index()}"
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
    os.close(fd)
    raise ValueError(f"workdir {workdir} is in use by another train.py ({holder}, "
                     f"holding {path}): wait for it to end, or use another --workdir") from None
  except OSError as e:  # a file system without locks (some FUSE mounts): run, but say so
    _warn(f"warning: cannot lock {path} ({e.strerror or e}): make sure no other run uses "
          f"workdir {workdir}")
  return os.fdopen(fd, "w")


def record_holder(lock: IO) -> None:
  """Writes this process's pid and host into its lock file, for a second run's message.
  Only once the run has passed its checks: a refused run leaves the workdir as it was."""
  lock.truncate(0)
  lock.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
  lock.flush()


def run(cfg, workdir: Path) -> dict:
  """Trains until ``total_steps`` or SIGTERM; returns the summary.

  A run in a workdir that holds checkpoints resumes, if its config changes only
  ``RESUMABLE`` fields (``changed_on_resume``); ``Diverged`` ends it on a NaN.
  """
  changes = changed_on_resume(cfg, workdir)
  if changes:
    print("resuming with changed settings: " + ", ".join(changes), flush=True)
  preemption = Preemption()  # from here on, Ctrl-C waits for a step to end, then saves
  # Bad input is refused before anything is written: the data and the model are checked
  # before Trainer creates the workdir; the lock comes before any checkpoint is touched.
  trainer = Trainer(cfg, workdir)
  lock = lock_workdir(workdir)  # held until this function returns
  trainer.resume()
  record_holder(lock)
  if jax.process_index() == 0:  # the processes of a multi-host run share the workdir
    config_lib.save(cfg, workdir / "config.json")
  _warn_if_cpu(trainer)
  progress = Progress(trainer, workdir)
  started = time.perf_counter()
  try:
    last_eval = _loop(trainer, progress, preemption)
  finally:  # saves already under way complete, also when the run diverged
    try:
      checkpoints.finish(trainer.checkpoints)
    finally:
      progress.close()
  summary = {"step": trainer.step, "total_steps": trainer.total_steps,
             "last_eval": last_eval, "best_top1": trainer.best,
             "best_of": "ema_top1" if cfg.ema_decay else "top1",
             "skipped_images": trainer.skips.count,
             "wall_s": time.perf_counter() - started, "images_per_s": progress.images_per_s(),
             "preempted": bool(preemption.requested), "signal": preemption.requested,
             "config": cfg.to_json()}
  if jax.process_index() == 0:
    write_atomic(workdir / "summary.json", json.dumps(summary, indent=2) + "\n")
  return summary


def _loop(trainer: Trainer, progress: Progress, preemption: Preemption) -> dict:
  """Steps, evaluations and saves until the end or SIGTERM; the last eval's metrics."""
  cfg = trainer.cfg
  every = cfg.checkpoint_every or trainer.steps_per_epoch
  last_eval = {}
  while trainer.step < trainer.total_steps and not preemption.requested:
    progress.step(trainer.train_one())
    epoch_end = trainer.step % trainer.steps_per_epoch == 0
    metrics = None
    if (epoch_end and (trainer.step // trainer.steps_per_epoch) % cfg.eval_every_epochs == 0
        and cfg.data_dir and not cfg.synthetic):
      last_eval = metrics = trainer.evaluate()
      trainer.best = max(trainer.best or 0.0, checkpoints.score(metrics))
      print(f"epoch {trainer.step // trainer.steps_per_epoch} eval " + " ".join(
          f"{k} {v:.4f}" for k, v in metrics.items()), flush=True)
      for k, v in metrics.items():
        progress.scalar(f"eval/{k}", v)
    if trainer.step % every == 0 or trainer.step == trainer.total_steps:
      trainer.save(metrics)
  if preemption.requested:
    print(f"{preemption.requested}: saving at step {trainer.step} and exiting", flush=True)
    if trainer.checkpoints.latest_step() != trainer.step:  # saved already at this step
      trainer.save()
  trainer.check_finite()
  return last_eval


def config_lines(cfg, devices: int, processes: int) -> str:
  """The resolved config as printed at start: one ``key=value`` a line, as ``--set`` takes."""
  def text(value):
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
  return "\n".join([f"config (devices {devices}, processes {processes}):"] + [
      f"  {k}={text(v)}" for k, v in cfg.to_json().items()])


def run_command(args: argparse.Namespace) -> int:
  """Runs ``flax-resnet-train``'s parsed command line (``commands.train`` parses it): exit 0
  when done (or saved on SIGTERM), 2 on bad input (one line), 3 when the loss diverged,
  130 when saved and stopped on Ctrl-C (README)."""
  try:
    cfg = config_lib.override(config_lib.load_preset(args.config), args.set)
    use_every_core(cfg.global_batch)  # on a CPU host: a device per core where that pays
    setup_distributed(args)
    enable_compilation_cache()
    print(config_lines(cfg, jax.device_count(), jax.process_count()), flush=True)
    summary = run(cfg, args.workdir)
  except KeyboardInterrupt:  # a second Ctrl-C, or one before the run could save
    print("interrupted: stopped without saving", file=sys.stderr)
    return EXIT_INTERRUPTED
  except (ValueError, OSError) as e:
    return report(e)
  except Diverged as e:
    report(e)
    return EXIT_DIVERGED
  if summary["signal"] == "SIGINT":
    print(f"interrupted: saved step {summary['step']} in {args.workdir / 'checkpoints'}; the "
          "same command resumes from it", file=sys.stderr)
    return EXIT_INTERRUPTED
  return 0
