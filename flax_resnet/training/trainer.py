"""One training run: the ``Trainer`` (model, optimiser, data, checkpoints) and its loop.

``run(cfg, workdir)`` trains until the end, SIGTERM or Ctrl-C, and resumes from the
checkpoints in ``workdir``; ``flax-resnet-train`` (``flax_resnet.commands.train``) is its
command.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import flax_resnet
from flax_resnet.files import write_atomic
from flax_resnet.model import ResNet
from flax_resnet.training import (
  checkpoints,
  config as config_lib,
  data,
  memory,
  step_cache,
  steps as steps_lib,
)
from flax_resnet.training.config import Config
from flax_resnet.training.metrics import LOG_SECONDS, Progress
from flax_resnet.training.models import run_model
from flax_resnet.training.steps import (
  Mix,
  all_finite,
  ema_update,
  eval_step,
  flat_train_step,
  freeze_norms,
  make_optimizer,
)


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


def frozen(cfg: Config, model: ResNet) -> tuple[str, ...]:
  """The parts of ``model`` that the run keeps as they are: every part but ``fc`` for a
  linear probe, else those ``freeze`` names; ``ValueError`` for one the model lacks."""
  have = steps_lib.parts(model)
  if cfg.linear_probe:
    return have
  names = config_lib.frozen_parts(cfg.freeze)
  missing = [name for name in names if name not in have]
  if missing:
    raise ValueError(
      f"config freeze={cfg.freeze!r}: this model has no {missing[0]}; its "
      f"parts are {', '.join(have)}"
    )
  return names


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
    frozen=frozen(cfg, model),
    backbone_lr_mult=cfg.backbone_lr_mult,
  )


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


def check_config(cfg: Config, devices: int) -> None:
  """Config errors that only show once the device count is known, as ValueErrors."""
  if cfg.global_batch % devices:
    raise ValueError(f"global_batch {cfg.global_batch} is not divisible by the {devices} devices")
  if cfg.global_batch % (devices * cfg.accumulate_steps):
    raise ValueError(
      f"config accumulate_steps={cfg.accumulate_steps}: global_batch "
      f"{cfg.global_batch} does not split into {cfg.accumulate_steps} micro-batches "
      f"with an equal share of each of the {devices} devices"
    )
  flax_resnet.registry.architecture(cfg.arch)


def check_repeats(cfg: Config, count: int, devices: int) -> None:
  """``ValueError`` when repeated augmentation's epoch (``data.steps_per_epoch``) holds no
  full batch of each device: torchvision's RASampler would yield nothing."""
  if cfg.ra_reps > 1 and count // 256 * 256 // devices < cfg.global_batch // devices:
    raise ValueError(
      f"config ra_reps={cfg.ra_reps}: an epoch of repeated augmentation holds "
      f"{count} // 256 * 256 = {count // 256 * 256} of the {count} training images, fewer "
      f"than one global_batch of {cfg.global_batch}"
    )


def changed_on_resume(cfg: Config, workdir: Path) -> list[str]:
  """The changes from the run already in ``workdir`` (none for a new run), by
  ``config.resume_changes`` over the ``config.json`` that every run there wrote: its
  ``ValueError`` refuses a change that would make the resumed run compute something else.
  """
  if not checkpoints.has_checkpoints(workdir):
    return []
  saved_file = workdir / "config.json"
  try:
    saved = json.loads(saved_file.read_text())
  except FileNotFoundError:
    raise ValueError(
      f"workdir {workdir} holds checkpoints but no config.json: cannot check "
      "the resumed settings; put it back, or use another --workdir"
    ) from None
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{saved_file} is corrupt ({e}): cannot check the resumed settings") from e
  return config_lib.resume_changes(saved, cfg, workdir)


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


class Trainer:
  """Owns the model, optimiser, data iterator and checkpoints of one run."""

  def __init__(self, cfg: Config, workdir: Path):
    self.cfg, self.workdir = cfg, workdir
    self.mesh = Mesh(np.array(jax.devices()), ("data",))
    self.batch_sharding = NamedSharding(self.mesh, P("data"))
    check_config(cfg, jax.device_count())
    self.batches, self.source = data.train_batches(
      cfg.data, jax.process_index(), jax.process_count(), replicas=jax.device_count()
    )
    self.data_fingerprint = None  # synthetic data: nothing to compare on resume
    if self.source is not None:
      data.check_splits(cfg.data, self.source)
      self.data_fingerprint = self.source.fingerprint()
    count = len(self.source) if self.source else data.SYNTHETIC_EPOCH
    check_repeats(cfg, count, jax.device_count())
    self.steps_per_epoch = data.steps_per_epoch(cfg.data, count, jax.device_count())
    self.total_steps = cfg.max_steps or cfg.epochs * self.steps_per_epoch
    self.step_cache = self._start_step_cache()  # loads while the model is built
    self._step: Callable | None = None
    self._build_state()
    self.memory = self._check_host_memory()
    # The first write to the workdir: every check of the input has passed.
    workdir.mkdir(parents=True, exist_ok=True)
    # Held while the run lives; taken before orbax reads the checkpoints, which a run
    # already in this workdir may be deleting under it (its oldest beyond keep_checkpoints).
    self.lock = lock_workdir(workdir)
    self.checkpoints = checkpoints.manager(workdir, cfg.keep_checkpoints)
    self.step, self.skips = 0, data.SkipLog()
    self.best: float | None = None  # None until an eval
    self._unchecked: tuple[int, dict] | None = None  # the last step's metrics, not yet checked

  def _build_state(self) -> None:
    """The run's state, in the one form the jitted steps take and give: leaves.

    ``leaves`` are those of the split (model, optimizer), in train mode, replicated
    over the mesh; ``ema_leaves`` the model's part of them, averaged. Objects are
    rebuilt from them only to evaluate (``_evaluate``) and to save (``states``).
    """
    cfg = self.cfg
    model = run_model(cfg)
    if cfg.bn_stats == "per_device":  # each device's shard is one BatchNorm group
      model.set_attributes(batch_groups=jax.device_count(), raise_if_not_found=False)
    model.set_attributes(moments=cfg.bn_moments, backward=cfg.bn_backward, raise_if_not_found=False)
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
    self.model_leaf_count = len(jax.tree.leaves(state[0]))
    self.ema_leaves = None
    if cfg.ema_decay:  # own buffers: the step donates the model's
      self.ema_leaves = jax.jit(lambda xs: [jnp.copy(x) for x in xs])(self.model_leaves)

  def _check_host_memory(self) -> dict[str, float] | None:
    """On a CPU backend, where the run's memory is the host's: ``memory.host_memory_estimate``'s
    parts, refused (``memory.check_fits``) when more than the machine has; None elsewhere (an
    accelerator's memory is not the host's)."""
    if jax.default_backend() != "cpu":
      return None
    state = jax.tree.unflatten(self.model_treedef, self.model_leaves)
    parts = memory.host_memory_estimate(self.cfg, self.model_graphdef, state, jax.process_count())
    memory.check_fits(self.cfg, parts, memory.total_host_memory())
    return parts

  def learning_rate(self, count: int) -> float:
    """The rate of the step after ``count`` steps: fc's (the rest's is ``backbone_lr_mult``
    times it)."""
    return float(schedule(self.cfg, self.steps_per_epoch)(count))

  @property
  def model_leaves(self) -> list[jax.Array]:
    """The model's leaves: (model, optimizer) flattens the model first."""
    return self.leaves[: self.model_leaf_count]

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
    key = step_cache.run_key(
      config=self.cfg.to_json(), steps_per_epoch=self.steps_per_epoch, total_steps=self.total_steps
    )
    return step_cache.StepCache(key, self.mesh, donate_argnums=(0,))

  def _compile_step(self, args: tuple):
    """The train step over the state's leaves: from the step cache, else traced."""
    step = flat_train_step(
      self.graphdef,
      self.treedef,
      self.cfg.label_smoothing,
      (tuple(self.cfg.mean), tuple(self.cfg.std)),
      self.cfg.accumulate_steps,
      self.frozen,
      self._mixing(),
    )
    if self.step_cache is None:
      return step
    compiled = self.step_cache.get(step, args, str(self.treedef))
    if compiled is None:
      return step
    print(
      f"train step: {'loaded from' if self.step_cache.source == 'disk' else 'traced into'} "
      f"{self.step_cache.path}",
      flush=True,
    )
    return compiled

  def _mixing(self) -> Mix | None:
    """The step's MixUp/CutMix settings, ``None`` when both alphas are 0: one group per
    device, as torchvision mixes each GPU's batch."""
    cfg = self.cfg
    if not (cfg.mixup_alpha > 0 or cfg.cutmix_alpha > 0):
      return None
    return Mix(cfg.num_classes, cfg.mixup_alpha, cfg.cutmix_alpha, jax.device_count(), cfg.seed)

  def resume(self) -> None:
    """Continues from the newest intact checkpoint: newer damaged ones are moved aside
    with a warning each (``checkpoints.restore_newest_intact``)."""
    found = checkpoints.restore_newest_intact(
      self.checkpoints, self.states(), self._check_resumable, _warn
    )
    if found is None:
      return
    step, meta, restored = found
    self.leaves = jax.tree.leaves((restored["model"], restored["optimizer"]))
    if self.ema_leaves is not None:
      self.ema_leaves = jax.tree.leaves(restored["ema"])
    # The saved position, in the form of this run's worker count (it may have changed).
    self.batches.set_state(
      data.state_for_workers(meta["data_state"], meta["config"]["workers"], self.cfg.workers)
    )
    self.step, self.skips.count, self.best = step, meta["skipped"], meta["best_top1"]
    print(f"resumed from step {step}", flush=True)

  def _check_resumable(self, meta: dict) -> None:
    """Raises ``ValueError`` for a checkpoint of other training images or, with repeated
    augmentation, of another device count (the settings were compared before:
    ``changed_on_resume``)."""
    saved = meta.get("devices")
    if self.cfg.ra_reps > 1 and saved is not None and saved != jax.device_count():
      raise ValueError(
        f"workdir {self.workdir} holds a run of ra_reps={self.cfg.ra_reps} on {saved} "
        f"devices, and this run has {jax.device_count()}: repeated augmentation's order "
        "follows the device count; resume on as many devices, or use another --workdir"
      )
    if self.data_fingerprint is not None:
      data.check_same_images(
        meta.get("train_data"), self.data_fingerprint, f"data_dir {self.cfg.data_dir}"
      )

  def save(self, metrics: dict | None = None) -> None:
    self.check_finite()  # a checkpoint never holds what a NaN made
    if not all_finite(self.leaves):  # an update can overflow after a finite step
      raise Diverged(
        self.step, "NaN or Inf in the weights", self.checkpoints.latest_step(), self.workdir
      )
    meta = {
      "config": self.cfg.to_json(),
      "data_state": self.batches.get_state(),
      "skipped": self.skips.count,
      "best_top1": self.best,
      "step": self.step,
      "train_data": self.data_fingerprint,
      "devices": jax.device_count(),
    }
    checkpoints.save(self.checkpoints, self.step, self.states(), meta, metrics)

  def global_batch(self, local: dict, erase: bool = False) -> tuple[jax.Array, ...]:
    """(images, labels) and, with ``erase``, the erase boxes: global arrays, each sharded
    over the devices by its rows."""
    make = jax.make_array_from_process_local_data
    arrays = [local["image"], np.asarray(local["label"], np.int32)]
    if erase:
      arrays.append(np.asarray(local["erase"], np.int32))
    return tuple(make(self.batch_sharding, a) for a in arrays)

  def train_one(self) -> dict:
    local = next(self.batches)
    self.skips.add(self.source, local)
    batch = self.global_batch(local, erase=self.cfg.random_erase > 0)
    if self._step is None:
      self._step = self._compile_step((self.leaves, *batch))
    self.leaves, metrics = self._step(self.leaves, *batch)
    # The previous step's figures are checked while this one runs: the device never waits.
    self.check_finite()
    self._unchecked = (self.step + 1, metrics)
    move = ema_update_args(self.cfg, self.step, self.steps_per_epoch)
    if self.ema_leaves is not None and move is not None:
      self.ema_leaves = ema_update(self.ema_leaves, self.model_leaves, **move)
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
      raise Diverged(
        step,
        f"loss {loss:.6g}, gradient norm {norm:.6g}",
        self.checkpoints.latest_step(),
        self.workdir,
      )

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
    source, batches = data.eval_batches(self.cfg.data, jax.process_index(), jax.process_count())
    for local in batches:
      self.skips.add(source, local)
      out = eval_step(graphdef, state, *self.global_batch(local))
      for k in totals:
        totals[k] += float(out[k])
    n = max(totals["count"], 1)
    return {"loss": totals["loss_sum"] / n, "top1": totals["top1"] / n, "top5": totals["top5"] / n}


def _warn(line: str) -> None:
  print(line, file=sys.stderr, flush=True)


def _warn_if_cpu(trainer: Trainer) -> None:
  """On a CPU: that the run may be long, and the host memory it needs."""
  if trainer.memory is None or jax.process_index() != 0:
    return
  print(
    f"note: no accelerator: this run's {trainer.total_steps} steps of "
    f"{trainer.cfg.global_batch} images run on the CPU ({jax.device_count()} device(s)); "
    f"a progress line with its ETA comes at least every {LOG_SECONDS} s. Presets sized "
    "for GPUs and TPUs can take days here.",
    flush=True,
  )
  parts = trainer.memory
  print(
    f"note: this run needs about {sum(parts.values()) / 2**30:.1f} GB of host memory "
    f"({memory.parts_text(parts)}){memory.of_total(memory.total_host_memory())}",
    flush=True,
  )


def usable_cores() -> int:
  """The cores this process may run on (its affinity, where the system has one)."""
  if hasattr(os, "sched_getaffinity"):
    return len(os.sched_getaffinity(0))
  return os.cpu_count() or 1


def fit_to_host(cfg: Config) -> Config:
  """``cfg`` with the data workers this host can run, each change said in a note: none for
  synthetic images (nothing to decode), at most one a core (more only share the cores and
  each holds hundreds of MB). ``workers`` is resumable: the batches are the same."""
  cores = usable_cores()
  if cfg.synthetic and cfg.workers:
    print(f"note: synthetic=true: no data workers (workers={cfg.workers} unused)", flush=True)
    return dataclasses.replace(cfg, workers=0)
  if cfg.workers > cores:
    print(
      f"note: workers={cfg.workers} is more than the {cores} cores this process may use: "
      f"running {cores}",
      flush=True,
    )
    return dataclasses.replace(cfg, workers=cores)
  return cfg


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
    raise ValueError(
      f"workdir {workdir} is in use by another train.py ({holder}, "
      f"holding {path}): wait for it to end, or use another --workdir"
    ) from None
  except OSError as e:  # a file system without locks (some FUSE mounts): run, but say so
    _warn(
      f"warning: cannot lock {path} ({e.strerror or e}): make sure no other run uses "
      f"workdir {workdir}"
    )
  return os.fdopen(fd, "w")


def record_holder(lock: IO) -> None:
  """Writes this process's pid and host into its lock file, for a second run's message.
  Only once the run has passed its checks: a refused run leaves the workdir as it was."""
  lock.truncate(0)
  lock.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
  lock.flush()


def run(cfg: Config, workdir: Path) -> dict:
  """Trains until ``total_steps`` or SIGTERM; returns the summary.

  A run in a workdir that holds checkpoints resumes, if its config changes only
  resumable fields (``changed_on_resume``); ``Diverged`` ends it on a NaN.
  """
  cfg = fit_to_host(cfg)
  changes = changed_on_resume(cfg, workdir)
  if changes:
    print("resuming with changed settings: " + ", ".join(changes), flush=True)
  preemption = Preemption()  # from here on, Ctrl-C waits for a step to end, then saves
  # Bad input is refused before anything is written: the data and the model are checked
  # before Trainer creates the workdir and locks it, before any checkpoint is touched.
  trainer = Trainer(cfg, workdir)
  trainer.resume()
  record_holder(trainer.lock)
  if jax.process_index() == 0:  # the processes of a multi-host run share the workdir
    config_lib.save(cfg, workdir / "config.json")
  _warn_if_cpu(trainer)
  progress = Progress(
    workdir if jax.process_index() == 0 else None,
    cfg.global_batch,
    cfg.log_every,
    trainer.total_steps,
    trainer.learning_rate,
  )
  started = time.perf_counter()
  try:
    last_eval = _loop(trainer, progress, preemption)
  finally:  # saves already under way complete, also when the run diverged
    try:
      checkpoints.finish(trainer.checkpoints)
    finally:
      progress.close()
  summary = {
    "step": trainer.step,
    "total_steps": trainer.total_steps,
    "last_eval": last_eval,
    "best_top1": trainer.best,
    "best_of": "ema_top1" if cfg.ema_decay else "top1",
    "skipped_images": trainer.skips.count,
    "wall_s": time.perf_counter() - started,
    "images_per_s": progress.images_per_s(),
    "preempted": bool(preemption.requested),
    "signal": preemption.requested,
    "config": cfg.to_json(),
  }
  if jax.process_index() == 0:
    write_atomic(workdir / "summary.json", json.dumps(summary, indent=2) + "\n")
  return summary


def _evaluates_now(trainer: Trainer) -> bool:
  """At the end of every ``eval_every_epochs``-th epoch and of the schedule's last, so that
  the trained model is always evaluated; never on synthetic images."""
  cfg = trainer.cfg
  epoch, into = divmod(trainer.step, trainer.steps_per_epoch)
  due = epoch % cfg.eval_every_epochs == 0 or epoch == cfg.epochs
  return into == 0 and due and bool(cfg.data_dir) and not cfg.synthetic


def _loop(trainer: Trainer, progress: Progress, preemption: Preemption) -> dict:
  """Steps, evaluations and saves until the end or SIGTERM; the last eval's metrics."""
  cfg = trainer.cfg
  every = cfg.checkpoint_every or trainer.steps_per_epoch
  last_eval = {}
  while trainer.step < trainer.total_steps and not preemption.requested:
    losses = trainer.train_one()  # counted first: the step's number is the one it completed
    progress.step(trainer.step, losses, trainer.skips.count)
    metrics = None
    if _evaluates_now(trainer):
      last_eval = metrics = trainer.evaluate()
      trainer.best = max(trainer.best or 0.0, checkpoints.score(metrics))
      print(
        f"epoch {trainer.step // trainer.steps_per_epoch} eval "
        + " ".join(f"{k} {v:.4f}" for k, v in metrics.items()),
        flush=True,
      )
      for k, v in metrics.items():
        progress.scalar(trainer.step, f"eval/{k}", v)
    if trainer.step % every == 0 or trainer.step == trainer.total_steps:
      trainer.save(metrics)
  if preemption.requested:
    print(f"{preemption.requested}: saving at step {trainer.step} and exiting", flush=True)
    if trainer.checkpoints.latest_step() != trainer.step:  # saved already at this step
      trainer.save()
  trainer.check_finite()
  return last_eval
