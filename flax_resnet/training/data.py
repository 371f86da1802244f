"""Grain input pipelines over an image source (``sources.py``: ImageFolder JPEG/PNG files or
ArrayRecord shards of them), or over synthetic images.

The order is a pure function of the seed (a per-epoch permutation), each process
reads its own slice, and the iterator's state goes into every checkpoint, so a
resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import grain
import numpy as np
from PIL import Image

from flax_resnet.choices import AUTO_AUGMENTS
from flax_resnet.errors import ArgumentError, FieldError, literal
from flax_resnet.preprocess import EvalTransform
from flax_resnet.training import augment, shm
from flax_resnet.training.augmix import AugMix
from flax_resnet.training.sources import ImageSource, open_split

if TYPE_CHECKING:
  from flax_resnet.training.config import DataConfig

log = logging.getLogger(__name__)
SYNTHETIC_EPOCH = 50_000  # images per epoch of synthetic data
# Between the reasons of one element's skipped images: no error message holds it.
REASONS_SEPARATOR = "\x1e"


def element(
  image, label: int, first: int, reasons: list[str], erase: tuple[int, ...] = augment.NO_ERASE
) -> dict:
  """One element of a batch, train or eval alike: the image and its label, after the images
  passed over to reach it: ``len(reasons)`` of them (``skipped``) from position ``first`` on,
  each with the reason its reader raised, where the failure happened (a worker process);
  ``erase``, the random erasing box (top, left, height, width) the train step erases, all
  zeros for none (eval's and synthetic data's too: every batch has one structure)."""
  return {
    "image": image,
    "label": label,
    "erase": np.asarray(erase, np.int32),
    "skipped": len(reasons),
    "first": first,
    "reasons": REASONS_SEPARATOR.join(reasons),
  }


def pad_and_crop(x: np.ndarray, rng: np.random.Generator, pad: int = 4) -> np.ndarray:
  """RandomCrop(size, padding=4) with zero padding, on an HWC uint8 array."""
  h, w = x.shape[:2]
  padded = np.pad(x, ((pad, pad), (pad, pad), (0, 0)))
  top, left = rng.integers(0, 2 * pad + 1, size=2)
  return padded[top : top + h, left : left + w]


class TrainSample(grain.transforms.RandomMap):
  """Index -> augmented uint8 HWC image, label and random erasing box; the train step
  normalises (and erases) on the device.

  torchvision's preset order: random resized crop with ``interpolation`` (at <= 32 px a
  resize, then pad-and-crop), flip, ``policy`` (``augment.policy``), then the erase box,
  drawn with probability ``random_erase``.

  uint8 moves a quarter of float32's bytes between worker processes and to the devices.

  An unreadable image is passed over and the next readable one takes its place, so
  batches keep their size; the element carries what was passed over and why (``element``),
  and ``SkipLog`` logs each once, in the main process, rather than every worker at every
  visit. The same images in the same order give the same samples, whatever the source.
  """

  def __init__(
    self,
    source: ImageSource,
    size: int,
    interpolation: str = "bilinear",
    policy: Callable[[Image.Image, np.random.Generator], Image.Image] | None = None,
    random_erase: float = 0.0,
  ):
    self.source, self.size, self.interpolation = source, size, interpolation
    self.policy, self.random_erase = policy, random_erase

  def random_map(self, index: int, rng: np.random.Generator) -> dict:
    n, reasons = len(self.source), []
    for skipped in range(n):
      try:
        image, label = self.source.read((index + skipped) % n)
      except ValueError as e:
        reasons.append(str(e))
        continue
      x = self._augment(image, rng)
      erase = augment.erase_box(self.size, self.size, self.random_erase, rng)
      return element(x, label, index % n, reasons, erase)
    raise ValueError(f"no readable image in {self.source.root}")

  def _augment(self, image: Image.Image, rng: np.random.Generator) -> np.ndarray:
    """torchvision's preset order: crop, flip, then the policy (the erase box comes after)."""
    x = self.crop_and_flip(image, rng)
    if self.policy is None:
      return x
    return np.asarray(self.policy(Image.fromarray(x), rng))

  def crop_and_flip(self, image: Image.Image, rng: np.random.Generator) -> np.ndarray:
    """The random resized crop (at <= 32 px: resize, pad and crop), then the flip."""
    if self.size <= 32:
      x = np.asarray(
        image.resize((self.size, self.size), augment.FILTERS[self.interpolation])
        if image.size != (self.size, self.size)
        else image
      )
      x = pad_and_crop(x, rng)
    else:
      x = np.asarray(augment.random_resized_crop(image, self.size, rng, self.interpolation))
    return np.ascontiguousarray(x[:, ::-1] if rng.random() < 0.5 else x)


class EvalSample(grain.transforms.Map):
  """Index -> the converter's eval preprocessing; unreadable images are skipped as in training."""

  def __init__(self, source: ImageSource, transform: EvalTransform):
    self.source, self.transform = source, transform

  def map(self, index: int) -> dict:
    try:
      image, label = self.source.read(index)
    except ValueError as e:
      return element(None, -1, index, [str(e)])  # image None: a blank pads its place
    return element(self.transform(image), label, index, [])


class SyntheticSample(grain.transforms.RandomMap):
  """Index -> a random uint8 image and label: a source with no decoding cost."""

  def __init__(self, size: int, num_classes: int):
    self.size, self.num_classes = size, num_classes

  def random_map(self, index: int, rng: np.random.Generator) -> dict:
    return element(
      rng.integers(0, 256, (self.size, self.size, 3), np.uint8),
      int(rng.integers(self.num_classes)),
      0,
      [],
    )


def policy(config: DataConfig) -> Callable[[Image.Image, np.random.Generator], Image.Image] | None:
  """The per-image policy ``config.auto_augment`` names (None for "none"), with its settings
  and ``config.interpolation``."""
  name, interpolation = config.auto_augment, config.interpolation
  if name == "none":
    return None
  if name == "ta_wide":
    return augment.TrivialAugmentWide(interpolation)
  if name == "ra":
    return augment.RandAugment(config.ra_num_ops, config.ra_magnitude, interpolation)
  if name == "imagenet":
    return augment.AutoAugment(interpolation)
  if name == "augmix":
    return AugMix(config.augmix_severity, interpolation)
  raise ValueError(f"auto_augment must be one of {', '.join(AUTO_AUGMENTS)}, not {name!r}")


def train_sample(config: DataConfig, source: ImageSource) -> TrainSample:
  """The per-image work of ``config``'s training input over ``source``."""
  return TrainSample(
    source, config.image_size, config.interpolation, policy(config), config.random_erase
  )


def train_batches(
  config: DataConfig,
  process_index: int,
  process_count: int,
  worker_init=None,
  replicas: int = 1,
):
  """(an iterator over this process's share of each global batch, endless over epochs,
  the ``ImageSource`` it reads, or None for synthetic data).

  Each epoch's order comes from grain's shuffle of the images, seeded by ``seed`` and the
  epoch. With ``ra_reps`` > 1 it is torchvision's RASampler's over ``replicas`` (the
  data-parallel devices; each device's contiguous share of the global batch is one
  replica's batch, and each process holds a contiguous range of devices): see
  ``ra_permutation_place``.

  At most ``config.prefetch`` batches are read ahead, by each worker process when
  there are ``workers``: grain's default of 500 holds gigabytes of ImageNet batches.
  ``worker_init(index, count)`` runs in each worker process after ``WorkerSetup``'s.
  The shared memory the workers hand batches over in is named after this run, and what
  killed runs left there is removed first (``shm``).
  """
  local_batch = config.global_batch // process_count
  source = None
  if config.synthetic:
    count, op = SYNTHETIC_EPOCH, SyntheticSample(config.image_size, config.num_classes)
  else:
    source = open_split(config.data_dir, config.train_split)
    count = len(source)
    op = train_sample(config, source)
  shm.remove_dead()  # after the data's errors, which come first, alone
  ds = _batches(config, count, op, (process_index, process_count), replicas)
  ahead = grain.ReadOptions(num_threads=config.prefetch, prefetch_buffer_size=config.prefetch)
  ds = ds.to_iter_dataset(ahead)
  if config.workers > 0:
    _warn_if_shared_memory_is_short(
      config.workers * (config.prefetch + 1) * local_batch * config.image_size**2 * 3
    )
    _absl_flags_parsed()
    ds = ds.mp_prefetch(
      grain.MultiprocessingOptions(num_workers=config.workers),
      worker_init_fn=WorkerSetup(os.getpid(), worker_init, shm.claim()),
    )
  return iter(ds), source


def _batches(
  config: DataConfig, count: int, op, process: tuple[int, int], replicas: int
) -> grain.MapDataset:
  """``train_batches``' dataset of this process's (``process`` = (index, count)) share of each
  global batch of ``count`` images, each made by ``op``, in the epochs' order."""
  process_index, process_count = process
  local_batch = config.global_batch // process_count
  if config.ra_reps == 1:
    ds = grain.MapDataset.range(count).shuffle(seed=config.seed).repeat(None)
    # Augment before slicing: each image's randomness follows its global position, so
    # any process count sees the same samples in each global batch.
    ds = ds.random_map(op, seed=config.seed)[process_index::process_count]
    return ds.batch(local_batch, drop_remainder=True)
  order = RepeatedAugmentationOrder(config, count, replicas)
  ds = grain.MapDataset.range(sys.maxsize).map(order).random_map(op, seed=config.seed)
  # The same, and repeats of an image, at other positions, are augmented differently; a
  # process's rows are a contiguous block of each global batch.
  return ds.batch(local_batch, drop_remainder=True)[process_index::process_count]


def steps_per_epoch(config: DataConfig, count: int, replicas: int) -> int:
  """Steps in an epoch of ``count`` training images, at least one: every full global batch;
  with ``ra_reps`` > 1 torchvision's RASampler's epoch, ``count // 256 * 256`` images split
  over the ``replicas`` devices, each device's last partial batch dropped."""
  if config.ra_reps == 1:
    return max(count // config.global_batch, 1)
  selected = count // 256 * 256 // replicas  # each replica's images in an epoch
  return max(selected // (config.global_batch // replicas), 1)


def ra_permutation_place(position, count: int, reps: int, replicas: int, replica_batch: int):
  """The place in its epoch's permutation of the image at ``position`` (an int or an integer
  array) of an epoch's global batches, in torchvision's RASampler's order: the
  permutation with each image repeated ``reps`` times in a row, padded from its start to
  a multiple of ``replicas``; replica r reads every ``replicas``-th entry from r on, its
  batches of ``replica_batch`` in turn, and a global batch is the replicas' batches in
  order. Repeats of an image go to different replicas (``reps`` <= ``replicas``)."""
  step, row = divmod(position, replicas * replica_batch)
  replica, offset = divmod(row, replica_batch)
  repeated = replica + replicas * (step * replica_batch + offset)
  # The padding restarts the repeated list (past it only when an epoch of one step
  # asks for more images than the sampler has: there is no sampler's order to follow).
  return repeated % (count * reps) // reps


class RepeatedAugmentationOrder(grain.transforms.Map):
  """Global position -> the index of the image there, with repeated augmentation
  (``ra_permutation_place``): each epoch of ``steps_per_epoch`` global batches orders
  ``count`` images by grain's shuffle from ``seed`` and the epoch, as without it."""

  def __init__(self, config: DataConfig, count: int, replicas: int):
    self.count, self.reps, self.replicas = count, config.ra_reps, replicas
    self.replica_batch = config.global_batch // replicas
    self.epoch_size = steps_per_epoch(config, count, replicas) * config.global_batch
    self.permutations = grain.MapDataset.range(count).shuffle(seed=config.seed).repeat(None)

  def map(self, position: int) -> int:
    epoch, position = divmod(position, self.epoch_size)
    place = ra_permutation_place(position, self.count, self.reps, self.replicas, self.replica_batch)
    return self.permutations[epoch * self.count + place]


class WorkerSetup:
  """Run first in each grain worker process: the worker ignores SIGINT (Ctrl-C reaches the
  whole process group; the trainer saves, then stops its workers) and exits when the
  trainer is gone, even killed with SIGKILL, which no handler sees: orphaned, each held
  hundreds of MB and kept multiprocessing's resource tracker, and so the shared memory
  of their batches, alive. The shared memory segments of its batches are named after the run
  of ``tag`` (``shm.claim``'s; None: the standard library's names). Then ``then(index, count)``,
  where given.

  A thread polls the parent's pid (``PR_SET_PDEATHSIG`` would fire when the *thread*
  that started the worker ends, and is Linux only).
  """

  POLL_S = 0.5

  def __init__(
    self,
    parent: int,
    then: Callable[[int, int], None] | None = None,
    tag: str | None = None,
  ):
    self.parent, self.then, self.tag = parent, then, tag

  def __call__(self, index: int, count: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if self.tag is not None:
      shm.name_segments(self.tag)
    threading.Thread(target=self._exit_with_parent, name="exit-with-trainer", daemon=True).start()
    if self.then is not None:
      self.then(index, count)

  def _exit_with_parent(self) -> None:
    while os.getppid() == self.parent:
      time.sleep(self.POLL_S)
    os._exit(1)  # the trainer is gone: nothing left to hand batches to


def state_for_workers(state: dict, saved_workers: int, workers: int) -> dict:
  """A saved iterator ``state`` (``train_batches``'s with ``saved_workers``) as the state of
  the same position in a pipeline of ``workers`` worker processes (``state`` itself when
  the count is the same).

  The position is the number of batches delivered: with no workers grain counts them
  (``next_index``); ``workers`` processes each read every ``workers``-th batch, taken in
  turn (grain 0.2's interleave state). ``ValueError`` for a state of another form.
  """
  if saved_workers == workers:
    return state
  position = _position(state)
  return _interleave_state(position, workers) if workers else {"next_index": position}


def _position(state: dict) -> int:
  if set(state) == {"next_index"}:
    return int(state["next_index"])
  try:
    position = sum(int(s["next_index"]) for s in state["iterators_in_use_states"])
    # Only the form the conversion writes is read back: another (a later grain's) could
    # mean another position.
    known = state == _interleave_state(position, len(state["iterators_in_use_states"]))
  except (KeyError, TypeError, ValueError):
    known = False
  if not known:
    raise ValueError(
      "the checkpoint's data iterator state is not one this trainer can "
      f"convert ({str(state)[:200]}): resume with the workers it was saved with"
    )
  return position


def _interleave_state(position: int, workers: int) -> dict:
  return {
    "next_index_in_cycle": position % workers,
    "next_index_in_datasets": workers,
    "iterators_in_use_indices": list(range(workers)),
    "iterators_in_use_states": [
      {"next_index": -(-(position - w) // workers)} for w in range(workers)
    ],
    "exhausted": [0] * workers,
    "future_states": {},
  }


def skips(batch: dict, count: int) -> list[tuple[int, str]]:
  """(position, reason) of each image a batch (train or eval) passed over, in order: each
  element's ``skipped`` from ``first`` on, in a source of ``count`` images."""
  found = []
  for j in np.flatnonzero(batch["skipped"]):
    reasons = str(batch["reasons"][j]).split(REASONS_SEPARATOR)
    found += [((int(batch["first"][j]) + s) % count, r) for s, r in enumerate(reasons)]
  return found


class SkipLog:
  """Counts every skipped image and logs each one once, with the reason it cannot be read."""

  def __init__(self, count: int = 0):
    self.count = count
    self.logged: set[tuple[str, int]] = set()  # (source root, index)

  def add(self, source: ImageSource | None, batch: dict) -> None:
    """Counts the images ``batch`` passed over in ``source`` and logs those not logged yet;
    synthetic data (``source`` None) passes over none."""
    if source is None:
      return
    for i, reason in skips(batch, len(source)):
      self.count += 1
      if (str(source.root), i) not in self.logged:
        self.logged.add((str(source.root), i))
        log.warning("skipping unreadable image (logged once, counted at every visit): %s", reason)


def _warn_if_shared_memory_is_short(need: int, shm: str = "/dev/shm") -> None:
  """Worker processes hand batches over in shared memory; containers often have 64 MB of it."""
  try:
    free = shutil.disk_usage(shm).free
  except OSError:
    return
  if free < need:
    log.warning(
      "%s has %.0f MB free, and the workers may hold %.0f MB of batches there: they "
      "can stall or crash. Give the container more (docker run --shm-size), or lower "
      "workers, prefetch or the batch",
      shm,
      free / 2**20,
      need / 2**20,
    )


def _absl_flags_parsed() -> None:
  # Grain's worker processes read absl flags, which a non-absl program never parses.
  from absl import flags

  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def eval_size(config: DataConfig) -> int:
  """The side of eval's centre crop: ``eval_crop``, or ``image_size`` when it is 0."""
  return config.eval_crop or config.image_size


def eval_transform(config: DataConfig) -> EvalTransform:
  """The run's eval preprocessing, as flax-resnet-predict applies it to exported models."""
  return EvalTransform(
    resize_size=config.eval_resize,
    crop_size=eval_size(config),
    interpolation=config.interpolation,
    mean=tuple(config.mean),
    std=tuple(config.std),
  )


def eval_batches(config: DataConfig, process_index: int, process_count: int):
  """(the eval source, an iterator over this process's eval images in fixed order, padded
  to full batches with label -1)."""
  source = open_split(config.data_dir, config.eval_split, "eval_split")
  transform = eval_transform(config)
  local_batch = config.global_batch // process_count
  ds = grain.MapDataset.range(len(source))[process_index::process_count]
  ds = ds.map(EvalSample(source, transform))

  def batches():
    for start in range(0, len(ds), local_batch):
      rows = [ds[i] for i in range(start, min(start + local_batch, len(ds)))]
      yield _pad_batch(rows, local_batch, eval_size(config))

  return source, batches()


def _pad_batch(rows: list[dict], size: int, image_size: int) -> dict:
  """``rows`` (``element``s) as one batch of ``size``: blank images with label -1 in place
  of the unreadable ones and after the last row."""
  blank = np.zeros((image_size, image_size, 3), np.float32)
  rows = rows + [element(blank, -1, 0, [])] * (size - len(rows))
  batch = {k: np.asarray([r[k] for r in rows]) for k in ("erase", "skipped", "first", "reasons")}
  return {
    "image": np.stack([blank if r["image"] is None else r["image"] for r in rows]),
    "label": np.asarray([r["label"] for r in rows], np.int32),
    **batch,
  }


def check_splits(config: DataConfig, train: ImageSource) -> None:
  """Refuses at start what would otherwise fail or train wrongly later, as ``ValueError``s:
  shards whose ``classes.json`` disagrees with their records, a class count other than
  ``num_classes`` (labels beyond it would train as all-zero targets), and an eval split
  that is missing (found after a whole epoch otherwise) or has other classes. The class
  count's is a ``FieldError``: a command says the fields as its ``--set`` flags."""
  classes = train.verified_classes()
  if len(classes) != config.num_classes:
    found = f"{train.root} has {len(classes)} classes ({_listed(classes)})"
    raise FieldError(
      "{num}, but the training data " + literal(found) + ": pass {fix}",
      num=("num_classes", config.num_classes),
      fix=("num_classes", len(classes)),
    )
  evaluated = open_split(config.data_dir, config.eval_split, "eval_split").verified_classes()
  if evaluated != classes:
    raise ValueError(
      f"the eval split {config.data_dir.rstrip('/')}/{config.eval_split} has "
      f"other classes ({_listed(evaluated)}) than the training split "
      f"({_listed(classes)}): their labels would not match"
    )


def _listed(classes: tuple[str, ...], at_most: int = 5) -> str:
  shown = ", ".join(classes[:at_most])
  return shown + (f", ... {len(classes) - at_most} more" if len(classes) > at_most else "")


def check_same_images(saved: dict | None, now: dict, where: str) -> None:
  """``ValueError`` if ``now`` (an ``ImageSource.fingerprint``) describes other images than
  ``saved``, the one a checkpoint holds (None in checkpoints older than fingerprints: not
  checked)."""
  if not saved:
    return
  differ = [
    k
    for k in ("classes", "images", "paths_sha256")
    if k in saved and k in now and saved[k] != now[k]
  ]
  if not differ:
    return
  what = {
    "classes": lambda: (
      f"classes {_listed(tuple(now['classes']))}, not {_listed(tuple(saved['classes']))}"
    ),
    "images": lambda: f"{now['images']} images, not {saved['images']}",
    "paths_sha256": lambda: "other file names",
  }[differ[0]]()
  raise ArgumentError(
    f"{literal(where)} holds other training images than the run being resumed "
    f"({literal(what)}): a resume must read the same images; point data_dir at them, or use "
    "another {workdir}"
  )


def check_repeats(cfg: DataConfig, count: int, devices: int) -> None:
  """``ValueError`` when repeated augmentation's epoch (``steps_per_epoch``) holds no
  full batch of each device: torchvision's RASampler would yield nothing."""
  if cfg.ra_reps > 1 and count // 256 * 256 // devices < cfg.global_batch // devices:
    raise ValueError(
      f"config ra_reps={cfg.ra_reps}: an epoch of repeated augmentation holds "
      f"{count} // 256 * 256 = {count // 256 * 256} of the {count} training images, fewer "
      f"than one global_batch of {cfg.global_batch}"
    )
