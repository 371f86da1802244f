"""flax-resnet-convert and flax-resnet-flax2torch (convert/torch2flax.py and flax2torch.py) end to
end, and every bad input they refuse."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from torch_reference import WITHOUT_TORCH, calibrate, torch, torchvision

from flax_resnet.commands import convert as torch2flax

ROOT = Path(__file__).resolve().parents[1]


def run(*args, env=None):
  return subprocess.run(
    [sys.executable, *map(str, args)],
    capture_output=True,
    text=True,
    env={**os.environ, **(env or {})},
    cwd=ROOT,
    timeout=600,
  )


def run_entry_point(name, *args, cwd, env=None):
  """An installed console script (beside this Python), run from ``cwd``."""
  return subprocess.run(
    [str(Path(sys.executable).parent / name), *map(str, args)],
    capture_output=True,
    text=True,
    env={**os.environ, **(env or {})},
    cwd=cwd,
    timeout=600,
  )


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
def test_convert_verify_load_without_torch_and_predict(tmp_path, resnet18_state, data_dir, suffix):
  src = tmp_path / f"model{suffix}"
  if suffix == ".pth":
    torch.save(resnet18_state, src)
  else:
    from safetensors.torch import save_file

    save_file(resnet18_state, src)
  out = tmp_path / "ckpt"
  done = run("convert/torch2flax.py", "--state-dict", src, "--out", out)
  assert done.returncode == 0, done.stderr
  assert "top-5 as float64: yes" in done.stdout and "resnet18" in done.stdout
  meta = json.loads((out / "metadata.json").read_text())
  parity = meta["parity"]
  assert parity["passed"] and parity["rule"] == "float64" and meta["arch"] == "resnet18"
  assert 0 < parity["torch_vs_float64"] and parity["ours_vs_float64"] <= parity["bound"]
  assert meta["source"]["sha256"] and meta["preprocessing"]["resize_size"] == 256
  # A state dict does not name its classes: no ImageNet names for what may be anything else.
  assert meta["categories"] is None and meta["versions"]["torch"] == torch.__version__
  image = data_dir / "imagenet-samples" / "000_n01440764.JPEG"
  probe = (
    "import sys, flax_resnet; m, meta = flax_resnet.load(sys.argv[1]); "
    "from flax_resnet.commands.predict import main; "
    "main(['--checkpoint', sys.argv[1], sys.argv[2]]); "
    "assert 'torch' not in sys.modules, 'torch was imported'"
  )
  loaded = run("-c", probe, out, image)
  assert loaded.returncode == 0, loaded.stderr
  assert image.name in loaded.stdout and "%" in loaded.stdout
  back = tmp_path / f"back{suffix}"
  done = run_entry_point("flax-resnet-flax2torch", "--checkpoint", out, "--out", back, cwd=tmp_path)
  assert done.returncode == 0, done.stderr
  again = (
    torch.load(back, weights_only=True)
    if suffix == ".pth"
    else __import__("safetensors.torch").torch.load_file(back)
  )
  # Exactly torchvision's keys: num_batches_tracked too, with the counts the source had.
  assert set(again) == set(resnet18_state)
  for key, value in again.items():
    assert value.dtype == resnet18_state[key].dtype and torch.equal(value, resnet18_state[key]), key


def test_weights_entry_loads_from_the_hub_cache(tmp_path, resnet18_state, monkeypatch):
  # A random state dict cannot carry torchvision's hash: it is named after its own SHA-256
  # prefix, as torchvision names its files, and torchvision's entry points at that name.
  from flax_resnet.files import sha256

  cache = tmp_path / "torch-home" / "hub" / "checkpoints"
  cache.mkdir(parents=True)
  torch.save(resnet18_state, cache / "resnet18.pth")
  name = f"resnet18-{sha256(cache / 'resnet18.pth')[:8]}.pth"
  (cache / "resnet18.pth").rename(cache / name)
  monkeypatch.setattr(
    torchvision.models.ResNet18_Weights.IMAGENET1K_V1.value,
    "url",
    f"https://download.pytorch.org/models/{name}",
  )
  monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
  out = tmp_path / "ckpt"
  assert (
    torch2flax.main(
      ["--weights", "ResNet18_Weights.IMAGENET1K_V1", "--out", str(out), "--no-verify"]
    )
    == 0
  )
  meta = json.loads((out / "metadata.json").read_text())
  assert meta["source"]["name"] == "ResNet18_Weights.IMAGENET1K_V1"
  assert meta["source"]["sha256"] == sha256(cache / name)
  assert meta["categories"][0] == "tench" and meta["preprocessing"]["crop_size"] == 224


def test_weights_entry_offline_says_how_to_pass_a_file(tmp_path):
  out = tmp_path / "ckpt"
  offline = {
    "TORCH_HOME": str(tmp_path / "empty"),
    "https_proxy": "http://127.0.0.1:9",
    "HTTPS_PROXY": "http://127.0.0.1:9",
    "no_proxy": "",
  }
  done = run(
    "convert/torch2flax.py",
    "--weights",
    "IMAGENET1K_V1",
    "--arch",
    "resnet18",
    "--out",
    out,
    env=offline,
  )
  assert done.returncode != 0
  assert "--state-dict" in done.stderr and "resnet18-f37072fd.pth" in done.stderr
  assert not out.exists()


def test_head_can_be_reset_to_another_size(tmp_path, pth):
  out = tmp_path / "ckpt"
  assert (
    torch2flax.main(
      ["--state-dict", str(pth), "--num-classes", "10", "--reset-head", "--out", str(out)]
    )
    == 0
  )
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
  fails(
    capsys,
    ["--state-dict", pth, "--arch", "resnet101", "--out", tmp_path / "o"],
    "looks like resnet18",
    "resnet101",
  )
  assert not (tmp_path / "o").exists()


def _save(tmp_path, state):
  path = tmp_path / "edited.pth"
  torch.save(state, path)
  return path


def test_missing_and_unexpected_keys_are_listed_together(tmp_path, resnet18_state, capsys):
  state = dict(resnet18_state)
  del state["layer2.1.bn2.running_var"]
  state["layer2.1.extra.weight"] = torch.zeros(3)
  err = fails(
    capsys,
    ["--state-dict", _save(tmp_path, state), "--arch", "resnet18", "--out", tmp_path / "o"],
    "layer2.1.bn2.running_var",
    "layer2.1.extra.weight",
  )
  assert "missing" in err and "unexpected" in err


def test_shape_mismatch_names_key_and_both_shapes(tmp_path, resnet18_state, capsys):
  state = dict(resnet18_state)
  state["layer3.0.conv1.weight"] = torch.zeros(256, 128, 3, 2)
  fails(
    capsys,
    ["--state-dict", _save(tmp_path, state), "--out", tmp_path / "o"],
    "layer3.0.conv1.weight",
    "(256, 128, 3, 3)",
    "(256, 128, 3, 2)",
  )


def test_nan_is_named_by_key(tmp_path, resnet18_state, capsys):
  state = dict(resnet18_state)
  state["layer4.1.bn1.weight"] = state["layer4.1.bn1.weight"].clone()
  state["layer4.1.bn1.weight"][3] = float("nan")
  fails(
    capsys,
    ["--state-dict", _save(tmp_path, state), "--out", tmp_path / "o"],
    "layer4.1.bn1.weight",
    "NaN",
  )


def test_head_of_another_size_needs_reset_head(tmp_path, pth, capsys):
  fails(
    capsys,
    ["--state-dict", pth, "--num-classes", "10", "--out", tmp_path / "o"],
    "--reset-head",
    "1000",
  )


def test_existing_out_is_left_untouched_without_force(tmp_path, pth, capsys):
  out = tmp_path / "o"
  out.mkdir()
  (out / "keep.txt").write_text("precious")
  fails(capsys, ["--state-dict", pth, "--out", out], "--force")
  assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_force_never_replaces_a_folder_of_the_users(tmp_path, pth, capsys):
  out = tmp_path / "o"
  out.mkdir()
  (out / "keep.txt").write_text("precious")
  fails(
    capsys,
    ["--state-dict", pth, "--out", out, "--force"],
    f"--out {out} is not a flax-resnet checkpoint",
    "--force replaces only",
  )
  assert [p.name for p in out.iterdir()] == ["keep.txt"]
  assert (out / "keep.txt").read_text() == "precious"
  assert "[1/4]" not in capsys.readouterr().out  # refused before anything was loaded


def test_force_never_replaces_a_checkpoint_holding_a_users_file(checkpoint, pth, capsys):
  (checkpoint / "notes.txt").write_text("mine")
  before = (checkpoint / "metadata.json").read_text()
  fails(capsys, ["--state-dict", pth, "--out", checkpoint, "--force"], "holds notes.txt")
  assert (checkpoint / "notes.txt").read_text() == "mine"
  assert (checkpoint / "metadata.json").read_text() == before


def test_force_replaces_a_checkpoint(checkpoint, pth, tmp_path):
  before = json.loads((checkpoint / "metadata.json").read_text())
  assert (
    torch2flax.main(
      [
        "--state-dict",
        str(pth),
        "--num-classes",
        "10",
        "--reset-head",
        "--out",
        str(checkpoint),
        "--force",
        "--no-verify",
      ]
    )
    == 0
  )
  after = json.loads((checkpoint / "metadata.json").read_text())
  assert before["options"]["num_classes"] == 1000 and after["options"]["num_classes"] == 10
  assert sorted(p.name for p in checkpoint.iterdir()) == ["metadata.json", "state"]
  assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "leftovers"


def test_train_export_force_never_replaces_a_folder_of_the_users(tmp_path):
  out = tmp_path / "o"
  out.mkdir()
  (out / "keep.txt").write_text("precious")
  done = run("train/export.py", "--workdir", tmp_path / "run", "--out", out, "--force")
  assert done.returncode == 2, done.stderr
  assert done.stderr.startswith(f"error: --out {out} is not a flax-resnet checkpoint")
  assert len(done.stderr.strip().splitlines()) == 1, done.stderr
  assert [p.name for p in out.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize("umask", [0o022, 0o002])
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_exports_follow_the_umask_and_hold_every_key_of_torchvision(
  checkpoint, tmp_path, umask, suffix
):
  from flax_resnet.commands import flax2torch

  out = tmp_path / f"back{suffix}"
  previous = os.umask(umask)
  try:
    assert flax2torch.main(["--checkpoint", str(checkpoint), "--out", str(out)]) == 0
  finally:
    os.umask(previous)
  assert out.stat().st_mode & 0o777 == 0o666 & ~umask
  state = (
    torch.load(out, weights_only=True)
    if suffix == ".pth"
    else __import__("safetensors.torch").torch.load_file(out)
  )
  reference = torchvision.models.resnet18()
  assert set(state) == set(reference.state_dict())
  reference.load_state_dict(state, strict=True)
  assert reference.layer1[0].bn1.num_batches_tracked.dtype == torch.int64
  assert int(reference.layer1[0].bn1.num_batches_tracked) == 2  # calibrate's 2 batches


def test_a_bad_num_batches_tracked_in_metadata_is_one_line(checkpoint, tmp_path):
  _edit_metadata(checkpoint, lambda m: m["source"].update(num_batches_tracked="many"))
  done = run("convert/flax2torch.py", "--checkpoint", checkpoint, "--out", tmp_path / "b.pth")
  assert done.returncode == 2 and "source.num_batches_tracked" in done.stderr, done.stderr
  assert len(done.stderr.strip().splitlines()) == 1 and "metadata.json" in done.stderr
  assert not (tmp_path / "b.pth").exists()


def test_train_export_force_replaces_a_checkpoint(checkpoint, tmp_path):
  workdir = tmp_path / "run"
  tiny = [
    "synthetic=True",
    "layers=1,1",
    "channels=8,16",
    "num_classes=2",
    "dtype=float32",
    "global_batch=8",
    "max_steps=1",
    "workers=0",
    "step_cache=False",
  ]
  done = run(
    "train/train.py",
    "--config",
    "cifar10_resnet18",
    "--workdir",
    workdir,
    *[a for s in tiny for a in ("--set", s)],
    env={"JAX_PLATFORMS": "cpu"},
  )
  assert done.returncode == 0, done.stderr[-3000:]
  done = run(
    "train/export.py", "--workdir", workdir, "--out", checkpoint, "--step", "latest", "--force"
  )
  assert done.returncode == 0, done.stderr[-3000:]
  meta = json.loads((checkpoint / "metadata.json").read_text())
  assert meta["options"]["num_classes"] == 2 and meta["source"]["workdir"] == str(workdir)


def test_flax2torch_force_replaces_a_file_but_never_a_folder(checkpoint, tmp_path):
  folder = tmp_path / "model.pth"
  folder.mkdir()
  (folder / "keep.txt").write_text("precious")
  done = run("convert/flax2torch.py", "--checkpoint", checkpoint, "--out", folder, "--force")
  assert done.returncode == 2 and "is a directory" in done.stderr, done.stderr
  assert len(done.stderr.strip().splitlines()) == 1, done.stderr
  assert [p.name for p in folder.iterdir()] == ["keep.txt"]
  file = tmp_path / "old.pth"
  file.write_bytes(b"an older export")
  done = run("convert/flax2torch.py", "--checkpoint", checkpoint, "--out", file, "--force")
  assert done.returncode == 0, done.stderr
  assert "conv1.weight" in torch.load(file, weights_only=True)


def test_saving_over_a_folder_of_the_users_is_refused_even_with_overwrite(tmp_path, checkpoint):
  from flax_resnet import load, save

  model, meta = load(checkpoint)
  user = tmp_path / "mine"
  user.mkdir()
  (user / "data.csv").write_text("1,2,3")
  with pytest.raises(FileExistsError, match="mine is not a flax-resnet checkpoint"):
    save(model, user, meta, overwrite=True)
  assert [p.name for p in user.iterdir()] == ["data.csv"]
  again = save(model, checkpoint, meta, overwrite=True)  # a checkpoint is replaced
  assert sorted(p.name for p in again.iterdir()) == ["metadata.json", "state"]


KILLED_MID_SAVE = """
import os, signal, sys
from pathlib import Path
from flax_resnet.files import temp_dir_beside
folder = temp_dir_beside(Path(sys.argv[1]))
(folder / "state").write_bytes(b"x" * 1000)
print(folder, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_temporary_folders_of_killed_saves_are_removed_by_the_next_save(tmp_path, checkpoint):
  from flax_resnet import load, save
  from flax_resnet.files import temp_dir_beside

  model, meta = load(checkpoint)
  parent = tmp_path / "models"
  parent.mkdir()
  killed = run("-c", KILLED_MID_SAVE, parent / "a")
  assert killed.returncode == -9, killed.stderr
  left = Path(killed.stdout.strip())
  assert left.parent == parent and left.is_dir()
  mine = temp_dir_beside(parent / "a")  # this process is alive: perhaps saving now
  _, _, host, dead, _ = left.name.rsplit(".", 4)
  stale = [left, parent / f".b.flax-resnet-tmp.{host}.{dead}.old"]  # b replaced it, then a kill
  kept = [
    mine,
    parent / f".c.flax-resnet-tmp.{host}.{os.getppid()}.abcdefgh",
    parent / f".a.flax-resnet-tmp.otherhost.{dead}.abcdefgh",  # a shared file system's
    parent / f".d.flax-resnet-tmp.{host}.{dead}.old",  # d is gone: the previous d
    parent / ".a.xyz12345.tmp",
    parent / "user-folder.flax-resnet-tmp",
  ]
  (parent / "b").mkdir()
  for folder in stale[1:] + kept[1:]:
    folder.mkdir()
    (folder / "state").write_bytes(b"x" * 1000)
  save(model, parent / "new", meta)
  assert all(p.is_dir() for p in kept) and not any(p.exists() for p in stale)


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
  wrapped = {
    "epoch": 3,
    "state_dict": {f"module._orig_mod.{k}": v for k, v in resnet18_state.items()},
  }
  path = _save(tmp_path, wrapped)
  out = tmp_path / "o"
  assert torch2flax.main(["--state-dict", str(path), "--out", str(out), "--no-verify"]) == 0
  notes = json.loads((out / "metadata.json").read_text())["notes"]
  assert notes == [
    "unwrapped container 'state_dict'",
    "stripped prefix 'module.'",
    "stripped prefix '_orig_mod.'",
    "read as resnet18; its keys also fit resnetblur18 (anti-aliasing holds no tensors): name "
    "the architecture (arch=, --arch) if the file is one of those",
  ]
  from flax_resnet import load

  model, _ = load(out)
  np.testing.assert_array_equal(
    np.asarray(model.conv1.kernel[...]).transpose(3, 2, 0, 1),
    resnet18_state["conv1.weight"].numpy(),
  )


def test_faithful_conversion_of_a_deep_net_with_realistic_batchnorm_is_accepted(tmp_path, capsys):
  # Every BatchNorm weight in 0.6-1.4: torch's own float32 logits are 2.4e-5 from float64
  # here, ours 2.8e-5 from float64 and 2.9e-5 from torch's, beyond a fixed 1e-5.
  torch.manual_seed(0)
  src = tmp_path / "r101.pth"
  torch.save(calibrate(torchvision.models.resnet101(), bn_scale=(0.6, 1.4)).state_dict(), src)
  assert torch2flax.main(["--state-dict", str(src), "--out", str(tmp_path / "o")]) == 0
  parity = json.loads((tmp_path / "o" / "metadata.json").read_text())["parity"]
  assert parity["max_rel"] > 1e-5 and parity["ours_vs_float64"] <= parity["bound"]
  out = capsys.readouterr().out
  assert f"{parity['ours_vs_float64']:.3g}" in out and f"{parity['torch_vs_float64']:.3g}" in out


def test_fixed_tolerance_still_refuses_what_exceeds_it(tmp_path, pth, capsys):
  fails(
    capsys,
    ["--state-dict", pth, "--tolerance", "1e-12", "--out", tmp_path / "o"],
    "verification failed",
    "--tolerance 1e-12",
    "nothing written",
  )
  assert not (tmp_path / "o").exists()


def test_verdict_fails_a_conversion_less_exact_than_torchvision():
  from flax_resnet.port.parity import judge

  rng = np.random.default_rng(0)
  exact = rng.standard_normal((2, 1000)) * 5
  theirs = (exact * (1 + 1e-6 * rng.standard_normal(exact.shape))).astype(np.float32)
  assert judge(theirs.copy(), theirs, exact)["passed"]
  assert not judge(exact + 1e-4 * np.abs(exact).max(), theirs, exact)["passed"]
  swapped = exact.copy()
  top = np.argsort(-exact[0])[:2]
  swapped[0, top] = exact[0, top[::-1]]  # two classes apart by far more than the bound
  verdict = judge(swapped.astype(np.float32), theirs, exact)
  assert not verdict["top5_as_float64"] and not verdict["passed"]


def test_empty_file(tmp_path, capsys):
  empty = tmp_path / "empty.pth"
  empty.write_bytes(b"")
  fails(capsys, ["--state-dict", empty, "--out", tmp_path / "o"], "empty.pth", "empty file")


def test_unknown_arch_is_named_before_loading(tmp_path, pth, capsys):
  fails(
    capsys,
    ["--state-dict", pth, "--arch", "resnet19", "--out", tmp_path / "o"],
    "--arch resnet19",
    "resnet18, resnet34",
  )
  assert "[1/4]" not in capsys.readouterr().out


def test_keys_of_a_fifth_stage_are_unexpected_keys(tmp_path, resnet18_state, capsys):
  state = {**resnet18_state, "layer5.0.conv1.weight": torch.zeros(3, 3, 3, 3)}
  fails(
    capsys,
    ["--state-dict", _save(tmp_path, state), "--out", tmp_path / "o"],
    "unexpected key: layer5.0.conv1.weight",
  )


def test_unwritable_out_is_refused_before_loading(tmp_path, pth, capsys):
  locked = tmp_path / "locked"
  locked.mkdir()
  locked.chmod(0o555)
  # root ignores permission bits: /proc takes no new folder from anyone
  out = locked / "o" if os.geteuid() else Path("/proc/flax-resnet-test/o")
  fails(capsys, ["--state-dict", pth, "--out", out], "cannot write in")
  assert "[1/4]" not in capsys.readouterr().out


def test_out_that_is_a_file_is_kept_even_with_force(tmp_path, pth, capsys):
  out = tmp_path / "precious.txt"
  out.write_text("keep me")
  fails(capsys, ["--state-dict", pth, "--out", out, "--force"], "is a file")
  assert out.read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == [
    "precious.txt",
    "resnet18.pth",
  ]


@pytest.mark.parametrize("key", ["bn1.running_mean", "fc.weight", "layer3.1.conv2.weight"])
def test_a_missing_key_is_named(tmp_path, resnet18_state, capsys, key):
  state = {k: v for k, v in resnet18_state.items() if k != key}
  err = fails(
    capsys, ["--state-dict", _save(tmp_path, state), "--out", tmp_path / "o"], f"missing key: {key}"
  )
  assert "unexpected" not in err


@pytest.mark.parametrize("dtype", [torch.complex64, torch.int64])
def test_weights_that_are_not_real_floats_are_refused(tmp_path, resnet18_state, capsys, dtype):
  state = dict(resnet18_state)
  state["layer1.0.conv1.weight"] = state["layer1.0.conv1.weight"].to(dtype)
  fails(
    capsys,
    ["--state-dict", _save(tmp_path, state), "--out", tmp_path / "o"],
    "layer1.0.conv1.weight",
    str(dtype).removeprefix("torch."),
    "not a real floating-point",
  )


def test_every_cast_and_unwrap_is_printed_and_recorded(tmp_path, resnet18_state, capsys):
  state = {
    f"module.{k}": (v.double() if k.startswith("layer2.") else v) for k, v in resnet18_state.items()
  }
  state["module.fc.weight"] = state["module.fc.weight"].bfloat16()
  out = tmp_path / "o"
  assert (
    torch2flax.main(
      [
        "--state-dict",
        str(_save(tmp_path, {"state_dict": state})),
        "--out",
        str(out),
        "--no-verify",
      ]
    )
    == 0
  )
  printed = capsys.readouterr().out
  notes = json.loads((out / "metadata.json").read_text())["notes"]
  assert notes[:2] == ["unwrapped container 'state_dict'", "stripped prefix 'module.'"]
  # layer2's 25 parameters and statistics (num_batches_tracked is not a weight)
  assert any(n.startswith("cast 25 float64 tensors to float32: layer2.0.") for n in notes), notes
  assert any(n.startswith("cast 1 bfloat16 tensor to float32: fc.weight") for n in notes)
  for note in notes:
    assert f"note: {note}" in printed


@pytest.fixture
def checkpoint(tmp_path, pth):
  out = tmp_path / "ckpt"
  assert torch2flax.main(["--state-dict", str(pth), "--out", str(out), "--no-verify"]) == 0
  return out


def _edit_metadata(checkpoint, edit):
  meta = json.loads((checkpoint / "metadata.json").read_text())
  edit(meta)
  (checkpoint / "metadata.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(
  "edit, needle",
  [
    (lambda m: m.pop("arch"), "missing key 'arch'"),
    (lambda m: m.pop("options"), "missing key 'options'"),
    (lambda m: m["options"].update(wings=2), "unknown option 'wings'"),
    (lambda m: m["preprocessing"].update(gamma=2.2), "unknown key 'gamma' in 'preprocessing'"),
  ],
  ids=["no arch", "no options", "unknown option", "unknown preprocessing key"],
)
def test_bad_metadata_is_one_line_naming_the_key(checkpoint, edit, needle, data_dir):
  _edit_metadata(checkpoint, edit)
  image = data_dir / "imagenet-samples" / "000_n01440764.JPEG"
  for cli in (
    ["-m", "flax_resnet.commands.predict", "--checkpoint", checkpoint, image],
    ["convert/flax2torch.py", "--checkpoint", checkpoint, "--out", checkpoint.parent / "back.pth"],
  ):
    done = run(*cli)
    assert done.returncode == 2 and needle in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "metadata.json" in done.stderr


def test_truncated_state_is_one_line(checkpoint, data_dir):
  biggest = max(
    (p for p in (checkpoint / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size
  )
  biggest.write_bytes(biggest.read_bytes()[: biggest.stat().st_size // 3])
  image = data_dir / "imagenet-samples" / "000_n01440764.JPEG"
  done = run("-m", "flax_resnet.commands.predict", "--checkpoint", checkpoint, image)
  assert done.returncode == 2 and "truncated or corrupt" in done.stderr, done.stderr[-3000:]
  assert len(done.stderr.strip().splitlines()) == 1, done.stderr[-3000:]


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_converting_without_the_torch_extra_is_one_line_naming_it(tmp_path, pth, suffix):
  source = pth
  if suffix == ".safetensors":
    from safetensors.torch import save_file

    source = tmp_path / "resnet18.safetensors"
    save_file(torch.load(pth, weights_only=True), source)
  out = tmp_path / "ckpt"
  code = (
    WITHOUT_TORCH + "from flax_resnet.commands.convert import main\n"
    f"sys.exit(main(['--state-dict', {str(source)!r}, '--out', {str(out)!r}, '--no-verify']))"
  )
  result = run("-c", code)
  err = result.stderr.strip()
  assert result.returncode == 2 and len(err.splitlines()) == 1, err
  assert err.startswith("error: ") and "pip install 'flax-resnet[torch]'" in err, err
  assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == sorted(
    {pth.name, source.name}
  )


def test_flax2torch_without_the_torch_extra_is_one_line_naming_it(checkpoint, tmp_path):
  out = tmp_path / "back.pth"
  code = (
    WITHOUT_TORCH + "from flax_resnet.commands.flax2torch import main\n"
    f"sys.exit(main(['--checkpoint', {str(checkpoint)!r}, '--out', {str(out)!r}]))"
  )
  result = run("-c", code)
  err = result.stderr.strip()
  assert result.returncode == 2 and len(err.splitlines()) == 1, err
  assert "torch is not installed: pip install 'flax-resnet[torch]'" in err, err
  assert not out.exists()


def test_a_converted_model_keeps_its_own_copy_of_the_source_tensors():
  from flax_resnet.port.state_dict import convert_state_dict

  state = torchvision.models.resnet18().state_dict()
  model = convert_state_dict(state).model
  before = np.asarray(model.bn1.mean.get_value()).copy()
  state["bn1.running_mean"] += 1.0  # what a torch train-mode pass does in place
  np.testing.assert_array_equal(np.asarray(model.bn1.mean.get_value()), before)


def test_cast_notes_name_the_dtype_each_tensor_is_cast_to():
  import jax
  import jax.numpy as jnp

  from flax_resnet.port.state_dict import convert_state_dict

  state = {k: v.double() for k, v in torchvision.models.resnet18().state_dict().items()}
  with jax.enable_x64(True):  # float64 parameters need x64; without it they are float32
    assert not convert_state_dict(state, "resnet18", param_dtype=jnp.float64).notes
    state["fc.weight"] = state["fc.weight"].float()
    notes = convert_state_dict(state, "resnet18", param_dtype=jnp.float64).notes
  assert notes == ["cast 1 float32 tensor to float64: fc.weight"]
