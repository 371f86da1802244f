"""train/data.py: the pipeline reads ahead a bounded number of batches."""

import threading
import time

import pytest

from flax_resnet.training import config as config_lib, data


@pytest.mark.parametrize("prefetch", [1, 3])
def test_read_ahead_is_bounded_by_prefetch(monkeypatch, prefetch):
  made, lock = [0], threading.Lock()
  original = data.SyntheticSample.random_map

  def counting(self, index, rng):
    with lock:
      made[0] += 1
    return original(self, index, rng)

  monkeypatch.setattr(data.SyntheticSample, "random_map", counting)
  cfg = config_lib.Config(synthetic=True, image_size=8, global_batch=4, workers=0,
                          prefetch=prefetch)
  batches, folder = data.train_batches(cfg, 0, 1)
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
