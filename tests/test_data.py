"""training/data.py: the pipeline reads ahead a bounded number of batches, and carries why
an image was skipped from where it was read."""

import dataclasses
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grain
import pytest
from PIL import Image

from flax_resnet.cli import in_config_flags
from flax_resnet.preprocess import EvalTransform
from flax_resnet.training import config as config_lib, data, shm, sources


@pytest.mark.parametrize("prefetch", [1, 3])
def test_read_ahead_is_bounded_by_prefetch(monkeypatch, prefetch):
  made, lock = [0], threading.Lock()
  original = data.SyntheticSample.random_map

  def counting(self, index, rng):
    with lock:
      made[0] += 1
    return original(self, index, rng)

  monkeypatch.setattr(data.SyntheticSample, "random_map", counting)
  cfg = config_lib.Config(
    synthetic=True, image_size=8, global_batch=4, workers=0, prefetch=prefetch
  )
  batches, folder = data.train_batches(cfg.data, 0, 1)
  assert folder is None and next(batches)["image"].shape == (4, 8, 8, 3)
  time.sleep(1.0)  # grain's default read-ahead made 500 batches by now
  # the batch taken, `prefetch` batches buffered and one being made when the buffer freed
  assert made[0] <= (prefetch + 2) * cfg.global_batch, made[0]
  next(batches)
  time.sleep(0.2)
  assert made[0] <= (prefetch + 3) * cfg.global_batch, made[0]


def test_short_shared_memory_is_named_before_workers_stall(tmp_path, caplog):
  from flax_resnet.training.data import _warn_if_shared_memory_is_short

  _warn_if_shared_memory_is_short(2**60, str(tmp_path))
  assert "--shm-size" in caplog.text and str(tmp_path) in caplog.text
  caplog.clear()
  _warn_if_shared_memory_is_short(1, str(tmp_path))
  assert caplog.text == ""


# A run in another process: it claims FOLDER, makes a segment there named as its workers
# would, prints its tag and the segment's name, then lives until its stdin closes.
RUN = """
import sys
from pathlib import Path
from flax_resnet.training import shm
tag = shm.claim(Path(sys.argv[1]))
name = shm.segment_name(tag)[1:]
(Path(sys.argv[1]) / name).write_bytes(bytes(1000))
print(tag, name, flush=True)
sys.stdin.read()
"""


def run_in_another_process(folder: Path) -> tuple[subprocess.Popen, set[str]]:
  """The run, and the names of its lock file and segment."""
  run = subprocess.Popen(
    [sys.executable, "-c", RUN, str(folder)],
    stdin=subprocess.PIPE,
    stdout=subprocess.PIPE,
    text=True,
    env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
  )
  assert run.stdout is not None
  tag, segment = run.stdout.readline().split()
  return run, {f"flax_resnet-{tag}.lock", segment}


def test_a_killed_runs_shared_memory_is_removed_and_a_live_runs_and_foreign_files_stay(
  tmp_path, caplog
):
  killed, dead = run_in_another_process(tmp_path)
  live, alive = run_in_another_process(tmp_path)
  killed.send_signal(signal.SIGKILL)
  killed.wait()
  tag = min(dead)[len("flax_resnet-") :][:8]
  # Others' files, some named almost as ours: none is touched.
  foreign = {"psm_0123abcd", "sem.mp-abcd_123", "flax_resnet-notes.txt", f"flax_resnet-{tag}"}
  foreign |= {f"flax_resnet-{tag}.lock.bak", f"sem.flax_resnet-{tag}-mp-x"}
  for name in foreign:
    (tmp_path / name).write_bytes(b"not ours")
  (tmp_path / f"flax_resnet-{tag}-0123456789abcdef").mkdir()  # not a file
  before = set(os.listdir(tmp_path))
  try:
    assert dead | alive | foreign < before
    with caplog.at_level(logging.WARNING):
      assert shm.remove_dead(tmp_path) == 2
    assert set(os.listdir(tmp_path)) == before - dead
    assert f"removed 2 files (0.0 MB) that killed runs' workers left in {tmp_path}" in caplog.text
  finally:
    live.communicate("")
  # It removed its lock file as it exited: the segment it left is a dead run's.
  assert live.returncode == 0 and shm.remove_dead(tmp_path) == 1
  assert set(os.listdir(tmp_path)) == before - dead - alive


class Broken:
  """An image source whose images 3 and 4 cannot be read; it counts every read."""

  root, classes = Path("broken"), ("even", "odd")

  def __init__(self):
    self.reads = 0

  def __len__(self) -> int:
    return 8

  def read(self, i: int):
    self.reads += 1
    if i in (3, 4):
      raise ValueError(f"cannot read image {i}: broken where it was read")
    return Image.new("RGB", (8, 8), (i, i, i)), i % 2


def test_train_and_eval_batches_carry_the_readers_reasons_and_the_log_reads_nothing(caplog):
  source = Broken()
  train = grain.MapDataset.range(8).random_map(data.TrainSample(source, 8), seed=0).batch(8)[0]
  evaluate = data.EvalSample(source, EvalTransform(8, 8, mean=(0,) * 3, std=(1,) * 3))
  padded = data._pad_batch([evaluate.map(i) for i in range(8)], 10, 8)
  assert set(train) == set(padded)  # one encoding
  assert list(train["label"]) == [0, 1, 0, 1, 1, 1, 0, 1]  # 3 and 4 replaced by 5
  assert list(padded["label"]) == [0, 1, 0, -1, -1, 1, 0, 1, -1, -1]
  why = {i: f"cannot read image {i}: broken where it was read" for i in (3, 4)}
  assert data.skips(train, 8) == [(3, why[3]), (4, why[4]), (4, why[4])]
  assert data.skips(padded, 8) == [(3, why[3]), (4, why[4])]
  reads, skips = source.reads, data.SkipLog()
  with caplog.at_level(logging.WARNING):
    skips.add(source, train)
    skips.add(source, padded)
  assert source.reads == reads and skips.count == 3 + 2  # every visit counted
  assert caplog.messages == [
    f"skipping unreadable image (logged once, counted at every visit): {why[i]}" for i in (3, 4)
  ]


def test_a_class_count_other_than_num_classes_names_the_field_and_the_command_its_flag(tmp_path):
  for name in ("cat", "dog", "emu"):
    (tmp_path / "train" / name).mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(tmp_path / "train" / name / "0.png")
  train = sources.ImageFolder.scan(tmp_path / "train")
  cfg = config_lib.Config(data_dir=str(tmp_path), num_classes=2)
  with pytest.raises(ValueError) as refused:
    data.check_splits(cfg.data, train)
  found = f"the training data {tmp_path}/train has 3 classes (cat, dog, emu)"
  assert str(refused.value) == f"config num_classes=2, but {found}: pass num_classes=3"
  said = f"--set num_classes=2, but {found}: pass --set num_classes=3"
  assert str(in_config_flags(refused.value)) == said


def test_the_pipeline_is_handed_its_section_of_the_config():
  cfg = config_lib.Config(data_dir="/d", image_size=32, workers=2, seed=5)
  section = cfg.data
  assert dataclasses.is_dataclass(section) and not isinstance(section, config_lib.Config)
  for field in dataclasses.fields(section):
    assert getattr(section, field.name) == getattr(cfg, field.name), field.name
  assert not hasattr(section, "lr") and not hasattr(section, "arch")


@pytest.mark.parametrize("eval_crop, side", [(0, 16), (24, 24)])
def test_eval_crops_eval_crop_pixels_and_image_size_without_it(tmp_path, eval_crop, side):
  # torchvision's V2 recipe trains at 176 and evaluates a 224 crop of a 232 resize.
  for i, name in enumerate(("a", "b")):
    (tmp_path / "val" / name).mkdir(parents=True)
    Image.new("RGB", (40, 30), (60 * i, 20, 200)).save(tmp_path / "val" / name / "0.png")
  cfg = config_lib.Config(
    data_dir=str(tmp_path), image_size=16, eval_resize=28, eval_crop=eval_crop, global_batch=4
  )
  _, batches = data.eval_batches(cfg.data, 0, 1)
  batch = next(batches)
  assert batch["image"].shape == (4, side, side, 3)
  assert list(batch["label"]) == [0, 1, -1, -1]
  expected = data.eval_transform(cfg.data)(Image.open(tmp_path / "val" / "b" / "0.png"))
  assert (batch["image"][1] == expected).all()


def test_without_a_shared_memory_folder_nothing_is_removed_or_named(tmp_path):
  from flax_resnet.training import shm

  missing = tmp_path / "no-shm"  # as on macOS: no /dev/shm
  assert shm.remove_dead(missing) == 0 and shm.claim(missing) is None
  assert not missing.exists()
