"""Repeated augmentation (``ra_reps``): the train pipeline's order is torchvision's
RASampler's, split over devices and processes, with its epoch length, resumable; with
``ra_reps`` 1 the order is the one before it."""

import dataclasses
from collections import Counter
from pathlib import Path

import grain
import numpy as np
import pytest
from PIL import Image
from torch_reference import torch

from flax_resnet.bench import train_torch
from flax_resnet.training import config as config_lib, data


class Noise:
  """``count`` 8x8 noise images (a crop or flip of one changes it), label index % 3."""

  root, classes = Path("noise"), ("a", "b", "c")

  def __init__(self, count: int):
    self.count = count

  def __len__(self) -> int:
    return self.count

  def read(self, i: int):
    pixels = np.random.default_rng(i).integers(0, 256, (8, 8, 3), np.uint8)
    return Image.fromarray(pixels), i % 3


@pytest.fixture
def noise(monkeypatch):
  """``make(count, **config)``: (the config, the train batches' iterator factory) over
  ``Noise(count)``."""

  def make(count: int, **fields):
    monkeypatch.setattr(data, "open_split", lambda *_: Noise(count))
    cfg = config_lib.Config(data_dir="noise", image_size=8, **fields)
    return cfg, lambda *args, **kw: data.train_batches(cfg.data, *args, **kw)[0]

  return make


def take(batches, steps: int) -> list[dict]:
  return [next(batches) for _ in range(steps)]


def indices(batches: list[dict]) -> np.ndarray:
  """(steps, rows): the image index of each row (``element``'s ``first``: none skipped)."""
  return np.stack([b["first"] for b in batches])


def grain_permutation(count: int, seed: int, epoch: int) -> list[int]:
  """The epoch's permutation the pipeline orders by, with or without repeats."""
  shuffled = grain.MapDataset.range(count).shuffle(seed=seed).repeat(None)
  return [shuffled[epoch * count + i] for i in range(count)]


@pytest.mark.parametrize(
  "count, reps, replicas, batch",
  [
    (300, 3, 4, 16),
    (517, 4, 8, 32),
    (700, 2, 3, 12),  # 170 images per replica: the last 2 make no batch of 4
    (1000, 3, 1, 64),
    (257, 5, 2, 10),  # more repeats than replicas; 128 per replica, batches of 5
  ],
)
def test_each_replicas_order_equals_torchvisions_rasampler_given_the_same_permutation(
  noise, monkeypatch, count, reps, replicas, batch
):
  cfg, batches = noise(count, ra_reps=reps, global_batch=batch, seed=7)
  steps = data.steps_per_epoch(cfg.data, count, replicas)
  iterator = batches(0, 1, replicas=replicas)
  for epoch in (0, 1):
    # (step, replica, row): a device's contiguous share of the global batch is its replica's
    ours = indices(take(iterator, steps)).reshape(steps, replicas, batch // replicas)
    permutation = grain_permutation(count, cfg.seed, epoch)
    monkeypatch.setattr(train_torch.RASampler, "permutation", lambda self, p=permutation: p)
    for rank in range(replicas):
      sampler = train_torch.RASampler(count, replicas, rank, cfg.seed, reps)
      sampler.set_epoch(epoch)
      theirs = list(sampler)
      # torch's loader would also yield the partial last batch; ours drops it
      assert len(theirs) - steps * (batch // replicas) < batch // replicas
      assert ours[:, rank].ravel().tolist() == theirs[: steps * (batch // replicas)]


def test_each_image_comes_ra_reps_times_on_different_replicas_each_augmented_anew(noise):
  cfg, batches = noise(512, ra_reps=4, global_batch=16)
  steps = data.steps_per_epoch(cfg.data, 512, 4)
  epoch = take(batches(0, 1, replicas=4), steps)
  images = np.concatenate([b["image"] for b in epoch])
  rows = indices(epoch).ravel()
  replica = np.arange(len(rows)) % 16 // 4
  assert set(Counter(rows.tolist()).values()) == {4}  # 128 images, 4 times each
  assert len(set(rows.tolist())) == 512 // 4
  for i in set(rows.tolist()):
    assert sorted(replica[rows == i]) == [0, 1, 2, 3]
    repeats = images[rows == i]
    assert len({r.tobytes() for r in repeats}) > 1, f"image {i}'s repeats are all alike"


def test_the_repeated_list_holds_each_permutation_place_ra_reps_times():
  count, reps, replicas, replica_batch = 301, 3, 4, 5
  per_replica = -(-count * reps // replicas)  # RASampler's num_samples
  places = [
    data.ra_permutation_place(
      (j // replica_batch) * replicas * replica_batch + r * replica_batch + j % replica_batch,
      count,
      reps,
      replicas,
      replica_batch,
    )
    for r in range(replicas)
    for j in range(per_replica)
  ]
  counts = Counter(places)
  padding = per_replica * replicas - count * reps  # 1: the first place once more
  assert set(counts) == set(range(count)) and padding == 1
  assert counts[0] == reps + 1 and all(counts[i] == reps for i in range(1, count))


@pytest.mark.parametrize("count", [200, 256, 300, 1281, 5000])
@pytest.mark.parametrize("reps, replicas, batch", [(1, 1, 32), (3, 1, 32), (4, 8, 64), (2, 3, 12)])
def test_the_epoch_length_is_rasamplers_in_full_batches(count, reps, replicas, batch):
  cfg = config_lib.Config(ra_reps=reps, global_batch=batch).data
  if reps == 1:
    expected = count // batch  # every full global batch, as without repeats
  else:
    sampler = train_torch.RASampler(count, replicas, 0, 0, reps)
    loader = torch.utils.data.DataLoader(
      range(count), batch_size=batch // replicas, sampler=sampler, drop_last=True
    )
    expected = len(loader)
  assert data.steps_per_epoch(cfg, count, replicas) == max(expected, 1)


def test_a_process_reads_its_devices_rows_with_the_same_augmentation(noise):
  _, batches = noise(300, ra_reps=3, global_batch=16)
  whole = take(batches(0, 1, replicas=4), 3)
  for process in range(2):  # two devices each
    share = take(batches(process, 2, replicas=4), 3)
    for mine, all_ in zip(share, whole):
      rows = slice(8 * process, 8 * (process + 1))
      assert np.array_equal(mine["first"], all_["first"][rows])
      assert np.array_equal(mine["image"], all_["image"][rows])


@pytest.mark.parametrize("workers", [0, 1])
def test_a_resume_mid_epoch_gives_the_next_batches(noise, workers):
  _, batches = noise(300, ra_reps=3, global_batch=16)
  straight = batches(0, 1, replicas=4)
  take(straight, 5)
  state = straight.get_state()
  assert state == {"next_index": 5}  # the format checkpoints hold without repeats
  expected = take(straight, 3)
  _, batches = noise(300, ra_reps=3, global_batch=16, workers=workers)
  resumed = batches(0, 1, replicas=4)
  resumed.set_state(data.state_for_workers(state, 0, workers))
  for got, want in zip(take(resumed, 3), expected):
    assert np.array_equal(got["first"], want["first"])
    assert np.array_equal(got["image"], want["image"])


def test_one_repetition_leaves_the_order_as_it_was(noise):
  cfg, batches = noise(40, global_batch=8, seed=3)
  source = Noise(40)
  for process in range(2):
    # the pipeline before repeated augmentation, written out
    before = grain.MapDataset.range(40).shuffle(seed=3).repeat(None)
    before = before.random_map(data.TrainSample(source, 8), seed=3)[process::2].batch(4)
    ours = batches(process, 2, replicas=4)
    for step in range(12):  # past the end of the first epoch
      got = next(ours)
      assert np.array_equal(got["first"], before[step]["first"])
      assert np.array_equal(got["image"], before[step]["image"])
    assert ours.get_state() == {"next_index": 12}


def test_the_reference_refuses_an_epoch_with_no_full_batch(tmp_path):
  for split in ("train", "val"):
    (tmp_path / split / "a").mkdir(parents=True)
    for i in range(3):
      Image.new("RGB", (8, 8)).save(tmp_path / split / "a" / f"{i}.png")
  cfg = config_lib.Config(data_dir=str(tmp_path), image_size=8, ra_reps=2, global_batch=4)
  with pytest.raises(ValueError, match=r"ra_reps=2: the 3 training images make an epoch of 0"):
    train_torch.loaders(cfg)


def test_the_reference_draws_each_epochs_permutation_from_seed_plus_epoch(tmp_path, monkeypatch):
  from flax_resnet.bench import torch_recipe

  for split, count in (("train", 256), ("val", 2)):
    (tmp_path / split / "a").mkdir(parents=True)
    for i in range(count):
      Image.new("RGB", (8, 8)).save(tmp_path / split / "a" / f"{i}.png")
  drawn = []
  permutation = train_torch.RASampler.permutation
  monkeypatch.setattr(
    train_torch.RASampler,
    "permutation",
    lambda self: drawn.append(self.seed + self.epoch) or permutation(self),
  )
  monkeypatch.setattr(torch_recipe.Recipe, "step", lambda *_: torch.tensor(0.0))
  monkeypatch.setattr(train_torch.Reference, "evaluate_epoch", lambda self: None)
  cfg = config_lib.Config(
    arch="resnet18",
    layers=(1, 1),
    channels=(8, 16),
    stem="cifar",
    num_classes=1,
    data_dir=str(tmp_path),
    image_size=8,
    ra_reps=4,
    global_batch=64,
    max_steps=12,
    workers=0,
  )
  reference = train_torch.Reference(cfg, tmp_path / "run")
  assert reference.steps_per_epoch == 4  # the sampler's 256 // 256 * 256 images, in 64s
  assert reference.run()["step"] == 12 and drawn == [cfg.seed, cfg.seed + 1, cfg.seed + 2]


def test_the_trainer_refuses_repeats_whose_epoch_holds_no_full_batch():
  cfg = config_lib.Config(ra_reps=4, global_batch=256)
  data.check_repeats(cfg.data, 512, 8)  # 512 images: two batches
  with pytest.raises(ValueError, match=r"ra_reps=4: .* 511 // 256 \* 256 = 256 .* fewer"):
    data.check_repeats(dataclasses.replace(cfg, global_batch=512).data, 511, 8)
  data.check_repeats(dataclasses.replace(cfg, ra_reps=1).data, 10, 8)  # no sampler: no rule


def test_a_resume_of_repeats_on_another_device_count_is_refused(tmp_path):

  import jax

  from flax_resnet.training.workdir import check_resumable

  cfg = config_lib.Config(ra_reps=4)
  check_resumable(cfg, tmp_path, None, {"devices": jax.device_count()})
  check_resumable(cfg, tmp_path, None, {})  # saved before the count was recorded
  with pytest.raises(ValueError, match=r"ra_reps=4 on 3 devices, and this run has"):
    check_resumable(cfg, tmp_path, None, {"devices": 3})
  # the order does not depend on it
  check_resumable(config_lib.Config(ra_reps=1), tmp_path, None, {"devices": 3})
