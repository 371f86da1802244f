"""One training run: the ``Trainer`` wires the parts of a run, each built from the config in
a module of its own (``models``, ``optimiser``, ``batch``, ``steps``, ``workdir``, ``data``,
``checkpoints``), and ``run(cfg, workdir)`` runs the loop until the end, SIGTERM or Ctrl-C,
resuming from the checkpoints in ``workdir``; ``flax-resnet-train`` is its command.
"""

from __future__ import annotations

import dataclasses
import functools
import signal
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import flax_resnet
from flax_resnet.training import (
  batch as batch_lib,
  checkpoints,
  config as config_lib,
  data,
  memory,
  metrics as metrics_lib,
  models,
  optimiser,
  step_cache,
  steps,
  workdir as workdir_lib,
)
from flax_resnet.training.config import Config
from flax_resnet.training.metrics import Progress
from flax_resnet.training.steps import Diverged


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


@dataclasses.dataclass
class RunState:
  """Where a run is: all the loop reads and moves besides the arrays, and what a checkpoint's
  metadata keeps of it (``step``, ``best``, ``skips``' count). ``steps_per_epoch`` and
  ``total_steps`` are the run's plan; ``best`` is None until an eval, ``last_eval`` empty."""

  steps_per_epoch: int
  total_steps: int
  skips: data.SkipLog = dataclasses.field(default_factory=data.SkipLog)
  step: int = 0
  best: float | None = None
  last_eval: dict[str, float] = dataclasses.field(default_factory=dict)

  @property
  def done(self) -> bool:
    """Whether the run took its ``total_steps``."""
    return self.step >= self.total_steps

  def evaluates_now(self, cfg: Config) -> bool:
    """At the end of every ``eval_every_epochs``-th epoch and of the schedule's last, so that
    the trained model is always evaluated; never on synthetic images."""
    epoch, into = divmod(self.step, self.steps_per_epoch)
    due = epoch % cfg.eval_every_epochs == 0 or epoch == cfg.epochs
    return into == 0 and due and bool(cfg.data_dir) and not cfg.synthetic

  def saves_now(self, cfg: Config) -> bool:
    """Every ``checkpoint_every`` steps (each epoch's end by default) and at the last."""
    every = cfg.checkpoint_every or self.steps_per_epoch
    return self.step % every == 0 or self.step == self.total_steps

  def meta(self) -> dict:
    """What a checkpoint's metadata keeps of the run's state."""
    return {"skipped": self.skips.count, "best_top1": self.best, "step": self.step}

  def resume(self, step: int, meta: dict) -> None:
    """The state of a run resumed from checkpoint ``step``, whose metadata is ``meta``."""
    self.step, self.skips.count, self.best = step, meta["skipped"], meta["best_top1"]

  def evaluated(self, metrics: dict[str, float]) -> None:
    """Records an eval's ``metrics``: the last, and the best score (``metrics.score``)."""
    self.last_eval = metrics
    self.best = metrics_lib.best_top1(self.best, metrics)

  def summary(self, cfg: Config, wall_s: float, images_per_s: float, stop: str | None) -> dict:
    """The run's ``summary.json`` (``metrics.summary``); ``stop``: the signal it stopped on."""
    return metrics_lib.summary(
      cfg,
      (self.step, self.total_steps),
      self.last_eval,
      self.best,
      skipped_images=self.skips.count,
      wall_s=wall_s,
      images_per_s=images_per_s,
      preempted=bool(stop),
      signal=stop,
    )


class Trainer:
  """Wires one run's parts, built from its config, and holds what the run changes: the state's
  leaves (model, optimiser, EMA), the data iterator, the checkpoints and ``run_state``."""

  def __init__(self, cfg: Config, workdir: Path):
    self.cfg, self.workdir = cfg, workdir
    self.mesh = Mesh(np.array(jax.devices()), ("data",))
    self.batch_sharding = NamedSharding(self.mesh, P("data"))
    batch_lib.check_devices(cfg, jax.device_count())
    flax_resnet.registry.architecture(cfg.arch)  # its error before any data is read
    self.batches, self.source = data.train_batches(
      cfg.data, jax.process_index(), jax.process_count(), replicas=jax.device_count()
    )
    self.data_fingerprint = None  # synthetic data: nothing to compare on resume
    if self.source is not None:
      data.check_splits(cfg.data, self.source)
      self.data_fingerprint = self.source.fingerprint()
    count = len(self.source) if self.source else data.SYNTHETIC_EPOCH
    data.check_repeats(cfg.data, count, jax.device_count())
    per_epoch = data.steps_per_epoch(cfg.data, count, jax.device_count())
    self.run_state = RunState(per_epoch, cfg.max_steps or cfg.epochs * per_epoch)
    self.step_cache = step_cache.for_run(  # loads while the model is built
      cfg.to_json(), self.mesh, per_epoch, self.run_state.total_steps
    )
    self._step: Callable | None = None
    self._build_state()
    model_state = jax.tree.unflatten(self.model_treedef, self.model_leaves)
    self.memory = memory.check_host(cfg, self.model_graphdef, model_state)
    # The first write to the workdir: every check of the input has passed.
    workdir.mkdir(parents=True, exist_ok=True)
    # Held while the run lives; taken before orbax reads the checkpoints, which a run
    # already in this workdir may be deleting under it (its oldest beyond keep_checkpoints).
    self.lock = workdir_lib.lock_workdir(workdir)
    self.checkpoints = checkpoints.manager(workdir, cfg.keep_checkpoints)
    self._unchecked: tuple[int, dict] | None = None  # the last step's metrics, not yet checked

  def _build_state(self) -> None:
    """The run's state, in the one form the jitted steps take and give: leaves.

    ``leaves`` are those of the split (model, optimizer), in train mode, replicated
    over the mesh; ``ema_leaves`` the model's part of them, averaged. Objects are
    rebuilt from them only to evaluate (``evaluate``) and to save (``states``).
    """
    cfg = self.cfg
    model = models.training_model(cfg, jax.device_count())
    optimizer = optimiser.run_optimizer(cfg, model, self.run_state.steps_per_epoch)
    self.spec = steps.step_spec(cfg, models.frozen(cfg, model), jax.device_count())
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

  def learning_rate(self, count: int) -> float:
    """The rate of the step after ``count`` steps: fc's (the rest's is ``backbone_lr_mult``
    times it)."""
    return float(optimiser.schedule(self.cfg, self.run_state.steps_per_epoch)(count))

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

  def resume(self) -> None:
    """Continues from the newest intact checkpoint: newer damaged ones are moved aside
    with a warning each (``workdir.restore_newest_intact``)."""
    check = functools.partial(
      workdir_lib.check_resumable, self.cfg, self.workdir, self.data_fingerprint
    )
    found = workdir_lib.restore_newest_intact(
      self.checkpoints, self.states(), check, workdir_lib.warn
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
    self.run_state.resume(step, meta)
    print(f"resumed from step {step}", flush=True)

  def save(self, metrics: dict | None = None) -> None:
    """A checkpoint of this step, with the eval ``metrics`` that rank it when given; never
    one of a step whose loss or weights are not finite (``Diverged``)."""
    self.check_finite()  # a checkpoint never holds what a NaN made
    step = self.run_state.step
    if not steps.all_finite(self.leaves):  # an update can overflow after a finite step
      latest = self.checkpoints.latest_step()
      raise Diverged(step, "NaN or Inf in the weights", latest, self.workdir)
    meta = {
      "config": self.cfg.to_json(),
      "data_state": self.batches.get_state(),
      **self.run_state.meta(),
      "train_data": self.data_fingerprint,
      "devices": jax.device_count(),
    }
    checkpoints.save(self.checkpoints, step, self.states(), meta, metrics)

  def save_on_stop(self) -> None:
    """Saves the step the run stopped at, unless it was saved already."""
    if self.checkpoints.latest_step() != self.run_state.step:
      self.save()

  def train_one(self) -> dict:
    """One step of the next batch; its metrics, checked at the next step (``check_finite``)."""
    local = next(self.batches)
    self.run_state.skips.add(self.source, local)
    batch = batch_lib.device_batch(local, self.batch_sharding, erase=self.cfg.random_erase > 0)
    if self._step is None:  # the train step over the state's leaves: cached, else traced
      step = steps.flat_train_step(self.graphdef, self.treedef, self.spec)
      self._step = step_cache.compiled(
        self.step_cache, step, (self.leaves, *batch), str(self.treedef)
      )
    self.leaves, metrics = self._step(self.leaves, *batch)
    # The previous step's figures are checked while this one runs: the device never waits.
    self.check_finite()
    at = self.run_state
    self._unchecked = (at.step + 1, metrics)
    move = optimiser.ema_update_args(self.cfg, at.step, at.steps_per_epoch)
    if self.ema_leaves is not None and move is not None:
      self.ema_leaves = steps.ema_update(self.ema_leaves, self.model_leaves, **move)
    at.step += 1
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
    evaluate = functools.partial(
      steps.evaluate, self.model_graphdef, self.cfg.data, self.batch_sharding, self.run_state.skips
    )
    metrics = evaluate(states["model"])
    if "ema" in states:
      metrics.update({f"ema_{k}": v for k, v in evaluate(states["ema"]).items()})
    return metrics


def run(cfg: Config, workdir: Path) -> dict:
  """Trains until ``total_steps`` or SIGTERM; returns the summary.

  A run in a workdir that holds checkpoints resumes, if its config changes only
  resumable fields (``workdir.changed_on_resume``); ``Diverged`` ends it on a NaN.
  """
  cfg = memory.fit_to_host(cfg)
  trainer, preemption = _start(cfg, workdir)
  lead = jax.process_index() == 0  # the processes of a multi-host run share the workdir
  total = trainer.run_state.total_steps
  progress = Progress(
    workdir if lead else None, cfg.global_batch, cfg.log_every, total, trainer.learning_rate
  )
  started = time.perf_counter()
  try:
    _loop(trainer, progress, preemption)
  finally:  # saves already under way complete, also when the run diverged
    try:
      checkpoints.finish(trainer.checkpoints)
    finally:
      progress.close()
  wall_s = time.perf_counter() - started
  summary = trainer.run_state.summary(cfg, wall_s, progress.images_per_s(), preemption.requested)
  if lead:
    metrics_lib.write_summary(workdir, summary)
  return summary


def _start(cfg: Config, workdir: Path) -> tuple[Trainer, Preemption]:
  """The run's trainer, resumed where ``workdir`` holds checkpoints, and its signals caught."""
  changes = workdir_lib.changed_on_resume(cfg, workdir)
  if changes:
    print("resuming with changed settings: " + ", ".join(changes), flush=True)
  preemption = Preemption()  # from here on, Ctrl-C waits for a step to end, then saves
  # Bad input is refused before anything is written: the data and the model are checked
  # before Trainer creates the workdir and locks it, before any checkpoint is touched.
  trainer = Trainer(cfg, workdir)
  trainer.resume()
  workdir_lib.record_holder(trainer.lock)
  if jax.process_index() == 0:
    config_lib.save(cfg, workdir / "config.json")
  memory.say_cpu_run(cfg, trainer.run_state.total_steps, trainer.memory)
  return trainer, preemption


def _loop(trainer: Trainer, progress: Progress, preemption: Preemption) -> None:
  """Steps, evaluations and saves until the end or SIGTERM, as the run's state says."""
  cfg, state = trainer.cfg, trainer.run_state
  while not state.done and not preemption.requested:
    losses = trainer.train_one()  # counted first: the step's number is the one it completed
    progress.step(state.step, losses, state.skips.count)
    metrics = None
    if state.evaluates_now(cfg):
      metrics = trainer.evaluate()
      state.evaluated(metrics)
      progress.evaluated(state.step, state.step // state.steps_per_epoch, metrics)
    if state.saves_now(cfg):
      trainer.save(metrics)
  if preemption.requested:
    print(f"{preemption.requested}: saving at step {state.step} and exiting", flush=True)
    trainer.save_on_stop()
  trainer.check_finite()
