"""train/step_cache.py: a traced step kept on disk, used while nothing it was made of changed."""

import importlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from flax_resnet.training import step_cache


@pytest.fixture
def mesh():
  return Mesh(np.array(jax.devices()), ("data",))


@pytest.fixture
def helper(tmp_path, monkeypatch):
  """A module of our own, loaded, whose file a test can edit."""
  (tmp_path / "cache_helper.py").write_text("SCALE = 3.0\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  importlib.import_module("cache_helper")
  yield tmp_path / "cache_helper.py"
  sys.modules.pop("cache_helper", None)


def _args(mesh, n=16):
  return (jax.device_put(jnp.arange(n, dtype=jnp.float32), NamedSharding(mesh, P("data"))),)


def _get(folder, mesh, args, key=None):
  """(result of the cached function on args, where it came from)."""
  cache = step_cache.StepCache(key or {"run": "test"}, mesh, folder=folder)
  fn = jax.jit(lambda x: x * sys.modules["cache_helper"].SCALE)
  compiled = cache.get(fn, args, "tree")
  return np.asarray(compiled(*args)), cache.source


def test_a_second_start_loads_what_the_first_traced(tmp_path, mesh, helper):
  first, source = _get(tmp_path / "steps", mesh, _args(mesh))
  assert source == "traced" and np.array_equal(first, np.arange(16) * 3.0)
  again, source = _get(tmp_path / "steps", mesh, _args(mesh))
  assert source == "disk" and np.array_equal(again, first)


def test_an_edited_module_is_traced_again(tmp_path, mesh, helper):
  _get(tmp_path / "steps", mesh, _args(mesh))
  helper.write_text("SCALE = 5.0\n")  # a new size and modification time
  importlib.reload(sys.modules["cache_helper"])
  result, source = _get(tmp_path / "steps", mesh, _args(mesh))
  assert source == "traced" and np.array_equal(result, np.arange(16) * 5.0)


def test_another_key_or_other_shapes_are_traced_again(tmp_path, mesh, helper):
  _get(tmp_path / "steps", mesh, _args(mesh))
  assert _get(tmp_path / "steps", mesh, _args(mesh), key={"run": "other"})[1] == "traced"
  result, source = _get(tmp_path / "steps", mesh, _args(mesh, n=24))
  assert source == "traced" and result.shape == (24,)


def test_a_damaged_entry_is_named_traced_again_and_replaced(tmp_path, mesh, helper, caplog):
  folder = tmp_path / "steps"
  _get(folder, mesh, _args(mesh))
  (entry,) = folder.iterdir()
  entry.write_bytes(entry.read_bytes()[:200])
  assert _get(folder, mesh, _args(mesh))[1] == "traced"
  assert str(entry) in caplog.text
  assert _get(folder, mesh, _args(mesh))[1] == "disk"
  assert [p.name for p in folder.iterdir()] == [entry.name]  # no temporary file left


def test_the_key_holds_devices_flags_and_jax_config():
  key = step_cache.run_key(config={"arch": "resnet50"})
  assert key["parts"] == {"config": {"arch": "resnet50"}}
  assert len(key["devices"]) == jax.device_count()
  assert "--xla_force_host_platform_device_count" in key["env"]["XLA_FLAGS"]
  assert "jax_enable_x64" in key["jax"]
