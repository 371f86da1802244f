"""convert/torch2flax.py and flax2torch.py end to end, and every bad input they refuse."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from torch_reference import calibrate, torch, torchvision

ROOT = Path(__file__).resolve().parents[1]


def load_cli(name):
  spec = importlib.util.spec_from_file_location(name, ROOT / "convert" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


torch2flax = load_cli("torch2flax")
flax2torch = load_cli("flax2torch")


def run(*args, env=None):
  return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True,
                        env={**os.environ, **(env or {})}, cwd=ROOT, timeout=600)


@pytest.fixture(scope="module")
def resnet18_state():
  torch.manual_seed(0)
  return calibrate(torchvision.models.resnet18()).state_dict()


@pytest.fixture
def pth(tmp_path, resnet18_state):
  path = tmp_path / "resnet18.pth"
  torch.save(resnet18_state, path)
  return path


def fails(capsys, argv, *needles):
  """Runs torch2flax in-process; asserts a non-zero exit and a one-line error."""
  assert torch2flax.main([str(a) for a in argv]) != 0
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and err.startswith("error: "), err
  for needle in needles:
    assert needle in err, err
  return err


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_convert_verify_load_without_torch_and_predict(tmp_path, resnet18_state, data_dir,
                                                       suffix):
  src = tmp_path / f"model{suffix}"
  if suffix == ".pth":
    torch.save(resnet18_state, src)
  else:
    from safetensors.torch import save_file
    save_file(resnet18_state, src)
  out = tmp_path / "ckpt"
  done = run("convert/torch2flax.py", "--state-dict", src, "--out", out)
  assert done.returncode == 0, done.stderr
  assert "top-5 agreement 100%" in done.stdout and "resnet18" in done.stdout
  meta = json.loads((out / "metadata.json").read_text())
  assert meta["parity"]["max_rel"] <= 1e-5 and meta["arch"] == "resnet18"
  assert meta["source"]["sha256"] and meta["preprocessing"]["resize_size"] == 256
  assert len(meta["categories"]) == 1000 and meta["versions"]["torch"] == torch.__version__
  image = data_dir / "imagenet-samples" / "000_n01440764.JPEG"
  probe = ("import sys, flax_resnet; m, meta = flax_resnet.load(sys.argv[1]); "
           "from flax_resnet.predict import main; main(['--checkpoint', sys.argv[1], sys.argv[2]]);"
           " assert 'torch' not in sys.modules, 'torch was imported'")
  loaded = run("-c", probe, out, image)
  assert loaded.returncode == 0, loaded.stderr
  assert image.name in loaded.stdout and "%" in loaded.stdout
  back = tmp_path / f"back{suffix}"
  assert flax2torch.main(["--checkpoint", str(out), "--out", str(back)]) == 0
  again = (torch.load(back, weights_only=True) if suffix == ".pth"
           else __import__("safetensors.torch").torch.load_file(back))
  for key, value in again.items():
    assert torch.equal(value, resnet18_state[key]), key


def test_weights_entry_loads_from_the_hub_cache(tmp_path, resnet18_state):
  cache = tmp_path / "torch-home" / "hub" / "checkpoints"
  cache.mkdir(parents=True)
  torch.save(resnet18_state, cache / "resnet18-f37072fd.pth")
  out = tmp_path / "ckpt"
  done = run("convert/torch2flax.py", "--weights", "ResNet18_Weights.IMAGENET1K_V1", "--out", out,
             "--no-verify", env={"TORCH_HOME": str(tmp_path / "torch-home")})
  assert done.returncode == 0, done.stderr
  meta = json.loads((out / "metadata.json").read_text())
  assert meta["source"]["name"] == "ResNet18_Weights.IMAGENET1K_V1"
  assert meta["categories"][0] == "tench" and meta["preprocessing"]["crop_size"] == 224


def test_weights_entry_offline_says_how_to_pass_a_file(tmp_path):
  out = tmp_path / "ckpt"
  offline = {"TORCH_HOME": str(tmp_path / "empty"), "https_proxy": "http://127.0.0.1:9",
             "HTTPS_PROXY": "http://127.0.0.1:9", "no_proxy": ""}
  done = run("convert/torch2flax.py", "--weights", "IMAGENET1K_V1", "--arch", "resnet18",
             "--out", out, env=offline)
  assert done.returncode != 0
  assert "--state-dict" in done.stderr and "resnet18-f37072fd.pth" in done.stderr
  assert not out.exists()


def test_head_can_be_reset_to_another_size(tmp_path, pth):
  out = tmp_path / "ckpt"
  assert torch2flax.main(["--state-dict", str(pth), "--num-classes", "10", "--reset-head",
                          "--out", str(out)]) == 0
  meta = json.loads((out / "metadata.json").read_text())
  assert meta["options"]["num_classes"] == 10 and meta["head"].startswith("reset")
  assert meta["categories"] is None


def test_truncated_file(tmp_path, pth, capsys):
  data = pth.read_bytes()
  pth.write_bytes(data[: len(data) // 2])
  fails(capsys, ["--state-dict", pth, "--out", tmp_path / "o"], "truncated or corrupt")
  assert not (tmp_path / "o").exists()


def test_file_that_is_not_a_checkpoint(tmp_path, capsys):
  bad = tmp_path / "notes.pth"
  bad.write_text("hello, I am text\n")
  fails(capsys, ["--state-dict", bad, "--out", tmp_path / "o"], "notes.pth")
  assert not (tmp_path / "o").exists()


def test_wrong_arch_names_the_one_the_file_looks_like(tmp_path, pth, capsys):
  fails(capsys, ["--state-dict", pth, "--arch", "resnet101", "--out", tmp_path / "o"],
        "looks like resnet18", "resnet101")
  assert not (tmp_path / "o").exists()


def _save(tmp_path, state):
  path = tmp_path / "edited.pth"
  torch.save(state, path)
  return path


def test_missing_and_unexpected_keys_are_listed_together(tmp_path, resnet18_state, capsys):
  state = dict(resnet18_state)
  del state["layer2.1.bn2.running_var"]
  state["layer2.1.extra.weight"] = torch.zeros(3)
  err = fails(capsys, ["--state-dict", _save(tmp_path, state), "--arch", "resnet18", "--out",
                       tmp_path / "o"], "layer2.1.bn2.running_var", "layer2.1.extra.weight")
  assert "missing" in err and "unexpected" in err


def test_shape_mismatch_names_key_and_both_shapes(tmp_path, resnet18_state, capsys):
  state = dict(resnet18_state)
  state["layer3.0.conv1.weight"] = torch.zeros(256, 128, 3, 2)
  fails(capsys, ["--state-dict", _save(tmp_path, state), "--out", tmp_path / "o"],
        "layer3.0.conv1.weight", "(256, 128, 3, 3)", "(256, 128, 3, 2)")


def test_nan_is_named_by_key(tmp_path, resnet18_state, capsys):
  state = dict(resnet18_state)
  state["layer4.1.bn1.weight"] = state["layer4.1.bn1.weight"].clone()
  state["layer4.1.bn1.weight"][3] = float("nan")
  fails(capsys, ["--state-dict", _save(tmp_path, state), "--out", tmp_path / "o"],
        "layer4.1.bn1.weight", "NaN")


def test_head_of_another_size_needs_reset_head(tmp_path, pth, capsys):
  fails(capsys, ["--state-dict", pth, "--num-classes", "10", "--out", tmp_path / "o"],
        "--reset-head", "1000")


def test_existing_out_is_left_untouched_without_force(tmp_path, pth, capsys):
  out = tmp_path / "o"
  out.mkdir()
  (out / "keep.txt").write_text("precious")
  fails(capsys, ["--state-dict", pth, "--out", out], "--force")
  assert [p.name for p in out.iterdir()] == ["keep.txt"]
  assert torch2flax.main(["--state-dict", str(pth), "--out", str(out), "--force",
                          "--no-verify"]) == 0
  assert (out / "metadata.json").exists() and not (out / "keep.txt").exists()


class _RunsCode:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


def test_pickle_that_runs_code_is_refused_and_never_runs(tmp_path, capsys):
  marker = tmp_path / "pwned"
  evil = tmp_path / "evil.pth"
  torch.save({"conv1.weight": _RunsCode(marker)}, evil)
  fails(capsys, ["--state-dict", evil, "--out", tmp_path / "o"], "refused")
  assert not marker.exists()
  assert not (tmp_path / "o").exists()


def test_wrapped_training_checkpoint_is_unwrapped(tmp_path, resnet18_state):
  wrapped = {"epoch": 3, "state_dict": {f"module._orig_mod.{k}": v
                                        for k, v in resnet18_state.items()}}
  path = _save(tmp_path, wrapped)
  out = tmp_path / "o"
  assert torch2flax.main(["--state-dict", str(path), "--out", str(out), "--no-verify"]) == 0
  notes = json.loads((out / "metadata.json").read_text())["notes"]
  assert notes == ["unwrapped container 'state_dict'", "stripped prefix 'module.'",
                   "stripped prefix '_orig_mod.'"]
  from flax_resnet import load
  model, _ = load(out)
  np.testing.assert_array_equal(np.asarray(model.conv1.kernel[...]).transpose(3, 2, 0, 1),
                                resnet18_state["conv1.weight"].numpy())
