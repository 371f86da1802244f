"""weights= / pretrained=True: fetched through torch.hub's cache, converted once, then cached."""

import json
import os
import re
import urllib.error
from pathlib import Path

import numpy as np
import pytest
from torch_reference import WITHOUT_TORCH, calibrate, run_python, torch, torchvision

import flax_resnet
from flax_resnet import pretrained, torchvision_weights
from flax_resnet.commands import convert as torch2flax
from flax_resnet.files import sha256

HUB_FILE = "resnet18-f37072fd.pth"  # ResNet18_Weights.IMAGENET1K_V1, also its DEFAULT
MODELS = "https://download.pytorch.org/models/"
# Points torchvision's entry and our table at another file: a random state dict cannot be
# given torchvision's hash, so the tests name theirs after their own hash, as torchvision does.
REDIRECT_TORCHVISION = (
  "import torchvision\ntorchvision.models.ResNet18_Weights.IMAGENET1K_V1.value.url = {url!r}\n"
)
REDIRECT_TABLE = (
  "import flax_resnet.torchvision_weights as t\n"
  "t.TABLE = tuple(w._replace(file={name!r}) if w.file == 'resnet18-f37072fd.pth'"
  " else w for w in t.TABLE)\n"
)


@pytest.fixture
def empty_homes(tmp_path, monkeypatch):
  """An empty torch.hub cache and an empty weights cache, and a random calibrated
  ResNet-18 state dict."""
  (tmp_path / "torch-home" / "hub" / "checkpoints").mkdir(parents=True)
  torch.manual_seed(0)
  state = calibrate(torchvision.models.resnet18()).state_dict()
  env = {
    "TORCH_HOME": str(tmp_path / "torch-home"),
    "FLAX_RESNET_WEIGHTS": str(tmp_path / "weights"),
  }
  for key, value in env.items():
    monkeypatch.setenv(key, value)
  return env, state


def hub_dir(env) -> Path:
  return Path(env["TORCH_HOME"]) / "hub" / "checkpoints"


@pytest.fixture
def homes(empty_homes, monkeypatch):
  """What a first call meets, without a network: torch.hub's cache holding the random
  state dict as ``resnet18-<its SHA-256 prefix>.pth``, with torchvision's ResNet-18
  IMAGENET1K_V1 entry (its DEFAULT) and our table pointing at that name in this process
  (``REDIRECT_*`` do it in another one); returns (env, state dict, file name)."""
  env, state = empty_homes
  tmp = hub_dir(env) / "resnet18.pth"
  torch.save(state, tmp)
  name = f"resnet18-{sha256(tmp)[:8]}.pth"
  tmp.rename(hub_dir(env) / name)
  monkeypatch.setattr(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.value, "url", MODELS + name)
  monkeypatch.setattr(
    torchvision_weights,
    "TABLE",
    tuple(w._replace(file=name) if w.file == HUB_FILE else w for w in torchvision_weights.TABLE),
  )
  return env, state, name


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
  env, state, name = homes
  redirect = REDIRECT_TABLE.format(name=name)
  first = run_python(
    REDIRECT_TORCHVISION.format(url=MODELS + name)
    + redirect
    + PROBE.format(build='flax_resnet.ResNet18(weights="DEFAULT")'),
    env=env,
  )
  assert first.returncode == 0, first.stderr[-3000:]
  assert first.stdout.split()[:2] == ["eval", "True"]
  # DEFAULT is IMAGENET1K_V1 for resnet18: one checkpoint for both names.
  assert [p.name for p in (tmp_path / "weights").iterdir()] == ["resnet18.IMAGENET1K_V1"]
  stages = [line for line in first.stderr.splitlines() if line.startswith("flax_resnet: ")]
  assert [s.split()[1] for s in stages] == ["resnet18", "converting", "verifying", "saving"]
  assert "fetching" in stages[0] and "SHA-256" in stages[0]
  code = redirect + PROBE.format(
    build='flax_resnet.create_model("resnet18", pretrained=True)'
  ).replace('"/dev/null"', f'"{tmp_path / "logits.npy"}"')
  second = run_python(code, env=env)
  assert second.returncode == 0, second.stderr[-3000:]
  assert second.stdout.split()[:2] == ["eval", "False"], "the cached load imported torch"
  assert "flax_resnet: " not in second.stderr
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


def test_offline_names_the_url_and_where_to_put_the_file(empty_homes, monkeypatch):
  env, _ = empty_homes

  def offline(*args, **kwargs):
    raise urllib.error.URLError("no network")

  monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
  with pytest.raises(ValueError) as error:
    flax_resnet.ResNet18(weights="IMAGENET1K_V1")
  message = str(error.value)
  # One exception, not the end of a chain of tracebacks: Python prints no cause or context.
  assert error.value.__cause__ is None and error.value.__suppress_context__
  assert "\n" not in message
  assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in message
  assert str(Path(env["TORCH_HOME"]) / "hub" / "checkpoints" / HUB_FILE) in message
  assert not any(Path(env["FLAX_RESNET_WEIGHTS"]).glob("resnet18*"))


@pytest.mark.parametrize(
  "call, message",
  [
    (lambda: flax_resnet.ResNet18(weights="IMAGENET1K_V9"), "IMAGENET1K_V9"),
    (lambda: flax_resnet.ResNet18(weights="imagenet"), "expected a torchvision weights name"),
    (lambda: flax_resnet.ResNet18(weights="DEFAULT", pretrained=True), "not both"),
    (lambda: flax_resnet.ResNet18(weights="DEFAULT", num_classes=-1), "num_classes"),
  ],
  ids=["unknown entry", "not a name", "both spellings", "negative classes"],
)
def test_bad_weights_are_one_clear_error(homes, call, message):
  with pytest.raises(ValueError, match=message):
    call()


def test_a_hand_placed_file_of_other_weights_is_refused_and_nothing_cached(empty_homes):
  env, state = empty_homes
  torch.save(state, hub_dir(env) / HUB_FILE)  # random weights under torchvision's name
  digest = sha256(hub_dir(env) / HUB_FILE)
  with pytest.raises(ValueError) as error:
    flax_resnet.ResNet18(weights="DEFAULT")
  message = str(error.value)
  assert "\n" not in message and str(hub_dir(env) / HUB_FILE) in message
  assert f"SHA-256 {digest} does not start with f37072fd" in message
  assert not Path(env["FLAX_RESNET_WEIGHTS"]).exists() or not any(
    Path(env["FLAX_RESNET_WEIGHTS"]).iterdir()
  )


def test_the_converter_refuses_a_hand_placed_file_of_other_weights(empty_homes, tmp_path, capsys):
  env, state = empty_homes
  torch.save(state, hub_dir(env) / HUB_FILE)
  out = tmp_path / "ckpt"
  code = torch2flax.main(["--weights", "ResNet18_Weights.IMAGENET1K_V1", "--out", str(out)])
  err = capsys.readouterr().err.strip()
  assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error: "), err
  assert HUB_FILE in err and sha256(hub_dir(env) / HUB_FILE) in err and "f37072fd" in err
  assert not out.exists()


def test_a_cached_checkpoint_converted_from_another_file_is_refused(empty_homes):
  # What an earlier version cached from a hand-placed file: torchvision's URL, another hash.
  env, state = empty_homes
  from flax_resnet.port.state_dict import from_torch_state_dict
  from flax_resnet.saved_model import save

  entry = Path(env["FLAX_RESNET_WEIGHTS"]) / "resnet18.IMAGENET1K_V1"
  forged = "853aa964" + "0" * 56
  save(
    from_torch_state_dict(state),
    entry,
    {
      "arch": "resnet18",
      "options": {},
      "source": {"kind": "torchvision_weights", "url": MODELS + HUB_FILE, "sha256": forged},
    },
  )
  with pytest.raises(ValueError) as error:
    flax_resnet.create_model("resnet18", pretrained=True)
  message = str(error.value)
  assert "\n" not in message and str(entry / "metadata.json") in message
  assert f"sha256 {forged} does not start with f37072fd" in message
  assert (entry / "metadata.json").is_file()  # the user decides what to remove


def test_an_empty_weights_entry_is_converted_anew(homes):
  env, _, _ = homes
  entry = Path(env["FLAX_RESNET_WEIGHTS"]) / "resnet18.IMAGENET1K_V1"
  entry.mkdir(parents=True)
  model = flax_resnet.ResNet18(weights="DEFAULT")
  assert model.bn1.use_running_average
  assert sorted(p.name for p in entry.iterdir()) == ["metadata.json", "state"]
  assert sorted(p.name for p in entry.parent.iterdir()) == [entry.name]


@pytest.mark.parametrize("leftover", ["state/some_file", "notes.txt"])
def test_a_weights_entry_without_metadata_is_refused_before_any_work(
  empty_homes, monkeypatch, leftover
):
  env, _ = empty_homes
  entry = Path(env["FLAX_RESNET_WEIGHTS"]) / "resnet18.IMAGENET1K_V1"
  (entry / leftover).parent.mkdir(parents=True, exist_ok=True)
  (entry / leftover).write_text("kept")

  def no_work(*args, **kwargs):
    raise AssertionError("fetched the weights for an entry that cannot be replaced")

  monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_work)
  with pytest.raises(ValueError) as error:
    flax_resnet.ResNet18(weights="DEFAULT")
  message = str(error.value)
  assert "\n" not in message and message.startswith(f"{entry}: an incomplete weights entry")
  assert "remove it" in message
  assert (entry / leftover).read_text() == "kept"


def test_weights_without_the_torch_extra_is_one_import_error_naming_it(empty_homes):
  code = (
    WITHOUT_TORCH + "import flax_resnet\n"
    "try:\n  flax_resnet.ResNet18(weights='DEFAULT')\n"
    "except ImportError as e:\n  print(type(e).__name__, e.__cause__, e, sep='|')\n"
  )
  result = run_python(code, env=empty_homes[0])
  assert result.returncode == 0, result.stderr[-3000:]
  kind, cause, message = result.stdout.strip().split("|")
  assert kind == "MissingExtra" and cause == "None", result.stdout
  assert message == (
    "converting torchvision weights needs torch and torchvision, and torch is not "
    "installed: pip install 'flax-resnet[torch]'"
  )


def test_the_weights_table_is_torchvisions():
  from torchvision.models import get_model_weights

  ours = {(w.arch, w.name): w for w in torchvision_weights.list_pretrained()}
  assert {w.arch for w in ours.values()} == set(flax_resnet.ARCHITECTURES)
  theirs = {
    (arch, w.name): w for arch in flax_resnet.ARCHITECTURES for w in get_model_weights(arch)
  }
  assert set(ours) == set(theirs)
  for key, w in theirs.items():
    t, acc = w.transforms(), w.meta["_metrics"]["ImageNet-1K"]
    assert ours[key] == (
      *key,
      os.path.basename(w.url),
      acc["acc@1"],
      acc["acc@5"],
      t.resize_size[0],
      t.crop_size[0],
      w.meta["num_params"],
      t.interpolation.value,
    ), key
    assert ours[key].url == w.url and ours[key].is_default == (
      get_model_weights(key[0]).DEFAULT is w
    ), key
    assert pretrained.resolve_entry(key[0], "DEFAULT") == get_model_weights(key[0]).DEFAULT.name


def test_the_weights_table_and_its_checks_need_no_torch():
  code = (
    "import flax_resnet, flax_resnet.torchvision_weights as t\n"
    "table = t.list_pretrained('resnet50')\n"
    "assert [w.name for w in table] == ['IMAGENET1K_V1', 'IMAGENET1K_V2'], table\n"
    "assert table[1].is_default and table[1].acc1 == 80.858 and table[1].crop == 224\n"
    "try:\n"
    "  flax_resnet.ResNet50(weights='IMAGENET1K_V3')\n"
    "except ValueError as e:\n"
    "  assert 'known: DEFAULT, IMAGENET1K_V1, IMAGENET1K_V2' in str(e), e\n"
    "else:\n"
    "  raise AssertionError('IMAGENET1K_V3 accepted')\n"
  )
  # torch made unimportable: the table must not need it
  done = run_python(WITHOUT_TORCH + code)
  assert done.returncode == 0, done.stderr[-2000:]


def test_pretrained_backbone_with_a_new_head_in_one_call(homes):
  from flax import nnx

  full, meta = flax_resnet.load_pretrained("resnet18", "DEFAULT")
  model, new_meta = flax_resnet.load_pretrained(
    "resnet18", "DEFAULT", num_classes=10, rngs=nnx.Rngs(3)
  )
  assert model.fc.kernel.shape == (512, 10) and model.fc.bias.shape == (10,)
  assert new_meta.options["num_classes"] == 10 and new_meta.categories is None
  assert new_meta.head.startswith("new: 10 classes") and meta.categories
  ours = dict(nnx.to_flat_state(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))))
  for path, var in nnx.to_flat_state(nnx.state(full, nnx.Any(nnx.Param, nnx.BatchStat))):
    if path[0] != "fc":
      assert np.array_equal(np.asarray(ours[path].get_value()), np.asarray(var.get_value())), path
  bound = 1 / np.sqrt(512)  # torch.nn.Linear: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
  kernel = np.asarray(model.fc.kernel[...])
  assert np.abs(kernel).max() <= bound and kernel.std() > bound / 2
  headless = flax_resnet.create_model("resnet18", weights="DEFAULT", num_classes=0)
  x = np.random.default_rng(0).standard_normal((2, 64, 64, 3)).astype(np.float32)
  assert headless(x).shape == (2, 512) and not hasattr(headless, "fc")


def _train_config(*assignments):
  from flax_resnet.training import config as config_lib

  return config_lib.override(
    config_lib.Config(),
    [
      "arch=resnet18",
      "num_classes=10",
      "dtype=float32",
      "synthetic=true",
      "image_size=32",
      "global_batch=8",
      "max_steps=1",
      "workers=0",
      *assignments,
    ],
  )


@pytest.mark.parametrize(
  "init_from", ["torchvision:IMAGENET1K_V1", "DEFAULT", "ResNet18_Weights.IMAGENET1K_V1"]
)
def test_the_trainer_starts_from_torchvision_weights_by_name(homes, init_from, capsys):
  from flax import nnx

  from flax_resnet.training.models import run_model

  model = run_model(_train_config(f"init_from={init_from}"))
  assert "initialised from torchvision's resnet18 IMAGENET1K_V1 (a fresh head)" in (
    capsys.readouterr().out
  )
  full, _ = flax_resnet.load_pretrained("resnet18", "IMAGENET1K_V1")  # the same cache
  ours = dict(nnx.to_flat_state(nnx.state(model)))
  theirs = dict(nnx.to_flat_state(nnx.state(full)))
  assert {p for p in ours if p[0] != "fc"} == {p for p in theirs if p[0] != "fc"}
  for path, var in theirs.items():
    if path[0] != "fc":
      assert np.array_equal(np.asarray(ours[path].get_value()), np.asarray(var.get_value()))
  assert model.fc.kernel.shape == (512, 10)


def test_a_training_run_from_a_weights_name_uses_the_converted_cache(homes, tmp_path):
  env, _, name = homes
  flax_resnet.load_pretrained("resnet18", "DEFAULT")  # converted here; the run reads it
  code = (
    REDIRECT_TORCHVISION.format(url=MODELS + name)
    + REDIRECT_TABLE.format(name=name)
    + "import sys\nfrom flax_resnet.commands.train import main as train\n"
    "sys.exit(train(sys.argv[1:]))\n"
  )
  args = ["--config", "finetune", "--workdir", str(tmp_path / "run")]
  for s in [
    "init_from=torchvision:IMAGENET1K_V1",
    "arch=resnet18",
    "num_classes=10",
    "dtype=float32",
    "synthetic=true",
    "image_size=32",
    "global_batch=8",
    "max_steps=1",
    "workers=0",
    "step_cache=false",
  ]:
    args += ["--set", s]
  done = run_python(code, *args, env={**env, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""})
  assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
  assert "initialised from torchvision's resnet18 IMAGENET1K_V1 (a fresh head)" in done.stdout
  assert "flax_resnet: " not in done.stderr  # no second conversion


@pytest.mark.parametrize(
  "init_from, message",
  [
    (
      "IMAGENET1K_V9",
      "config init_from='IMAGENET1K_V9': weights='IMAGENET1K_V9': resnet18 has "
      "no such torchvision weights; known: DEFAULT, IMAGENET1K_V1",
    ),
    (
      "torchvision:imagenet",
      "config init_from='torchvision:imagenet': weights='imagenet': "
      "expected a torchvision weights name",
    ),
  ],
  ids=["unknown entry", "not a name"],
)
def test_a_bad_weights_name_for_the_trainer_is_one_line_naming_the_field(homes, init_from, message):
  from flax_resnet.training.models import run_model

  with pytest.raises(ValueError) as error:
    run_model(_train_config(f"init_from={init_from}"))
  assert str(error.value).startswith(message) and "\n" not in str(error.value), error.value


def test_a_weights_name_with_custom_depths_is_refused():
  from flax_resnet.training.models import run_model

  with pytest.raises(
    ValueError,
    match="config init_from='DEFAULT': torchvision's weights are "
    "for resnet18's own depths and widths",
  ):
    run_model(_train_config("init_from=DEFAULT", "layers=1,1", "channels=8,16"))


def test_errors_raised_from_python_name_no_command_line_flag(empty_homes, tmp_path, monkeypatch):
  env, state = empty_homes
  from flax_resnet.port.pipeline import port

  def offline(*args, **kwargs):
    raise urllib.error.URLError("no network")

  monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
  existing = tmp_path / "mine"
  existing.mkdir()
  (existing / "keep.txt").write_text("precious")

  def hand_placed_other_weights():
    torch.save(state, hub_dir(env) / HUB_FILE)
    flax_resnet.ResNet18(weights="DEFAULT")

  calls = [  # in this order: the last one places a file in the hub cache
    (lambda: flax_resnet.ResNet18(weights="imagenet"), "weights='imagenet'"),
    (lambda: flax_resnet.ResNet18(weights="IMAGENET1K_V9"), "weights='IMAGENET1K_V9'"),
    (lambda: flax_resnet.ResNet18(weights="IMAGENET1K_V1"), "weights='IMAGENET1K_V1'"),
    (lambda: port(weights="IMAGENET1K_V1"), "needs an arch"),
    (lambda: flax_resnet.from_torch_state_dict(state, "resnet34"), "arch='resnet34'"),
    (lambda: flax_resnet.from_torch_state_dict(state, num_classes=10), "reset_head=True"),
    (
      lambda: flax_resnet.save(
        flax_resnet.ResNet18(), existing, {"arch": "resnet18", "options": {}}
      ),
      "overwrite=True",
    ),
    (hand_placed_other_weights, "does not start with f37072fd"),
  ]
  for call, needle in calls:
    with pytest.raises((ValueError, OSError)) as error:
      call()
    message = str(error.value)
    assert needle in message and not re.search(r"(^|\W)--\w", message), message


def test_the_converter_and_weights_write_the_same_metadata_for_the_same_file(homes, tmp_path):
  _, meta = flax_resnet.load_pretrained("resnet18", "IMAGENET1K_V1")
  out = tmp_path / "converted"
  assert torch2flax.main(["--weights", "ResNet18_Weights.IMAGENET1K_V1", "--out", str(out)]) == 0
  cached = json.loads(
    (
      Path(os.environ["FLAX_RESNET_WEIGHTS"]) / "resnet18.IMAGENET1K_V1" / "metadata.json"
    ).read_text()
  )
  converted = json.loads((out / "metadata.json").read_text())
  assert set(cached) == set(converted) and set(cached["source"]) == set(converted["source"])
  assert cached["parity"] == converted["parity"] and cached["parity"]["passed"]
  assert {k: v for k, v in cached.items() if k != "created"} == {
    k: v for k, v in converted.items() if k != "created"
  }
  assert meta.parity == converted["parity"]
