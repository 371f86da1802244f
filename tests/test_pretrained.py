"""weights= / pretrained=True: fetched through torch.hub's cache, converted once, then cached."""

import os
import subprocess
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest

import flax_resnet
from torch_reference import calibrate, torch, torchvision

ROOT = Path(__file__).resolve().parents[1]
HUB_FILE = "resnet18-f37072fd.pth"  # ResNet18_Weights.IMAGENET1K_V1, also its DEFAULT


@pytest.fixture
def homes(tmp_path, monkeypatch):
  """torch.hub's cache holding a (random, calibrated) file of the expected name, and an
  empty weights cache: what a first call meets, without a network."""
  hub = tmp_path / "torch-home" / "hub" / "checkpoints"
  hub.mkdir(parents=True)
  torch.manual_seed(0)
  state = calibrate(torchvision.models.resnet18()).state_dict()
  torch.save(state, hub / HUB_FILE)
  env = {"TORCH_HOME": str(tmp_path / "torch-home"),
         "FLAX_RESNET_WEIGHTS": str(tmp_path / "weights")}
  for key, value in env.items():
    monkeypatch.setenv(key, value)
  return env, state


def python(code, env):
  return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, **env},
                        capture_output=True, text=True, timeout=600)


PROBE = """
import sys, time, numpy as np, jax.numpy as jnp, flax_resnet
t = time.perf_counter()
model = {build}
seconds = time.perf_counter() - t
x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 64, 64, 3)), jnp.float32)
np.save(sys.argv[1] if len(sys.argv) > 1 else "/dev/null", np.asarray(model(x)))
print("eval" if model.bn1.use_running_average else "train", "torch" in sys.modules, seconds)
"""


def test_weights_are_converted_once_then_loaded_without_torch(homes, tmp_path):
  env, state = homes
  first = python(PROBE.format(build='flax_resnet.ResNet18(weights="DEFAULT")'), env)
  assert first.returncode == 0, first.stderr[-3000:]
  assert first.stdout.split()[:2] == ["eval", "True"]
  assert (tmp_path / "weights" / "resnet18.DEFAULT" / "metadata.json").is_file()
  code = PROBE.format(build='flax_resnet.create_model("resnet18", pretrained=True)').replace(
      '"/dev/null"', f'"{tmp_path / "logits.npy"}"')
  second = python(code, env)
  assert second.returncode == 0, second.stderr[-3000:]
  assert second.stdout.split()[:2] == ["eval", "False"], "the cached load imported torch"
  reference = calibrate(torchvision.models.resnet18())
  reference.load_state_dict(state)
  x = np.random.default_rng(0).standard_normal((2, 64, 64, 3)).astype(np.float32)
  with torch.no_grad():
    theirs = reference.eval()(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
  ours = np.load(tmp_path / "logits.npy")
  assert np.max(np.abs(ours - theirs)) <= 1e-4 * np.max(np.abs(theirs))


def test_metadata_carries_the_weights_preprocessing_and_class_names(homes):
  model, meta = flax_resnet.load_pretrained("resnet18", "ResNet18_Weights.IMAGENET1K_V1")
  assert model.bn1.use_running_average
  assert meta.source["name"] == "ResNet18_Weights.IMAGENET1K_V1"
  assert meta.categories[0] == "tench" and len(meta.categories) == 1000
  assert meta.transform.crop_size == 224 and meta.transform.resize_size == 256
  assert meta.parity["passed"]


def test_offline_names_the_url_and_where_to_put_the_file(homes, monkeypatch):
  env, _ = homes
  (Path(env["TORCH_HOME"]) / "hub" / "checkpoints" / HUB_FILE).unlink()

  def offline(*args, **kwargs):
    raise urllib.error.URLError("no network")
  monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
  with pytest.raises(ValueError) as error:
    flax_resnet.ResNet18(weights="IMAGENET1K_V1")
  message = str(error.value)
  assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in message
  assert str(Path(env["TORCH_HOME"]) / "hub" / "checkpoints" / HUB_FILE) in message
  assert not any(Path(env["FLAX_RESNET_WEIGHTS"]).glob("resnet18*"))


@pytest.mark.parametrize("call, message", [
    (lambda: flax_resnet.ResNet18(weights="IMAGENET1K_V9"), "IMAGENET1K_V9"),
    (lambda: flax_resnet.ResNet18(weights="imagenet"), "expected a torchvision weights name"),
    (lambda: flax_resnet.ResNet18(weights="DEFAULT", pretrained=True), "not both"),
    (lambda: flax_resnet.ResNet18(weights="DEFAULT", num_classes=10), "replace model.fc"),
], ids=["unknown entry", "not a name", "both spellings", "other head"])
def test_bad_weights_are_one_clear_error(homes, call, message):
  with pytest.raises(ValueError, match=message):
    call()
