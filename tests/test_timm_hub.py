"""timm's weights from the Hugging Face hub cache: a cache laid out by hand (blobs named by
their hash, a snapshot of links, refs/main), offline; converted once against timm, then read
without torch or timm; the converter and flax2torch on timm's files; fine-tuning from them.

Nothing is downloaded: huggingface_hub is offline (HF_HUB_OFFLINE, which it reads at import,
set on its constants here and in the environment of the subprocesses).
"""

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import huggingface_hub
import jax
import numpy as np
import pytest
import timm
from flax import nnx
from test_timm import with_random_group_norms
from torch_reference import (
  WITHOUT_TIMM,
  assert_parity,
  calibrate,
  run_python,
  smooth_images,
  torch,
  without,
)

import flax_resnet
from flax_resnet.files import sha256
from flax_resnet.timm_hub import load_pretrained_timm

ARCH, TAG = "resnet10t", "c3_in1k"
REPO = f"timm/{ARCH}.{TAG}"
COMMIT = "5d1c6e2f" * 5  # a snapshot's folder is named by the commit its files came from


def git_blob_sha1(data: bytes) -> str:
  """The name the hub gives a small (non-LFS) file's blob: git's hash of it."""
  return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lay_out_hub(cache: Path, repo: str, files: dict[str, bytes], commit: str = COMMIT) -> Path:
  """The hub cache as huggingface_hub lays it out: blobs named by their hash (SHA-256 for
  LFS files such as weights, git's SHA-1 for the config), the commit's snapshot of relative
  links to them, and refs/main naming the commit; returns the repository's folder."""
  folder = cache / ("models--" + repo.replace("/", "--"))
  (folder / "blobs").mkdir(parents=True, exist_ok=True)
  (folder / "snapshots" / commit).mkdir(parents=True, exist_ok=True)
  (folder / "refs").mkdir(exist_ok=True)
  for name, data in files.items():
    digest = hashlib.sha256(data).hexdigest() if name.endswith(".safetensors") else None
    digest = digest or git_blob_sha1(data)
    (folder / "blobs" / digest).write_bytes(data)
    (folder / "snapshots" / commit / name).symlink_to(Path("..", "..", "blobs", digest))
  (folder / "refs" / "main").write_text(commit)
  return folder


def pushed(model, out: Path) -> dict[str, bytes]:
  """``model``'s files as timm pushes them to the hub (``save_for_hf``: model.safetensors,
  config.json with its pretrained_cfg)."""
  timm.models.save_for_hf(model, out, safe_serialization=True)
  return {name: (out / name).read_bytes() for name in ("model.safetensors", "config.json")}


@pytest.fixture(scope="module")
def timm_files(tmp_path_factory):
  """A random resnet10t with trained-looking BatchNorm, as timm pushes it to the hub."""
  torch.manual_seed(0)
  return pushed(calibrate(timm.create_model(ARCH)), tmp_path_factory.mktemp("pushed"))


def offline_hub(tmp_path: Path, monkeypatch, repo: str, files: dict[str, bytes]):
  """An offline hub cache holding ``repo``'s ``files``, an empty weights cache; the
  environment for subprocesses, and the repository's folder."""
  cache = tmp_path / "hf-hub"
  folder = lay_out_hub(cache, repo, files)
  env = {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
  env["FLAX_RESNET_WEIGHTS"] = str(tmp_path / "weights")
  for key, value in env.items():
    monkeypatch.setenv(key, value)
  monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
  monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
  return env, folder


@pytest.fixture
def hub(tmp_path, monkeypatch, timm_files):
  """``offline_hub`` holding REPO."""
  return offline_hub(tmp_path, monkeypatch, REPO, timm_files)


def timm_from(file: Path, **options):
  """timm's model with the weights in ``file``, as ``timm.create_model`` loads them."""
  from safetensors.torch import load_file

  model = timm.create_model(ARCH, **options)
  model.load_state_dict(load_file(file), strict=True)
  return model.eval()


def test_hub_weights_convert_once_and_compute_timms_logits(hub, capsys):
  env, folder = hub
  model, meta = load_pretrained_timm(REPO)
  stages = [line for line in capsys.readouterr().err.splitlines() if line.startswith("flax_")]
  assert "SHA-256" in stages[0] and "converting" in stages[1] and "timm" in stages[2]
  reference = timm_from(folder / "snapshots" / COMMIT / "model.safetensors")
  assert_parity(reference, model, smooth_images(5, (2, 64, 64, 3)))
  blob = os.path.realpath(folder / "snapshots" / COMMIT / "model.safetensors")
  assert meta.arch == ARCH and meta.source["repo"] == REPO and meta.source["commit"] == COMMIT
  assert meta.source["sha256"] == os.path.basename(blob) == sha256(Path(blob))
  assert meta.parity["passed"] and meta.parity["reference"] == "timm"
  assert meta.parity["rule"] == "float64"
  # timm's eval transform at the tag's test size: 224 / 0.95 -> 235, centre crop 224, bicubic
  assert meta.transform.resize_size == 235 and meta.transform.crop_size == 224
  assert meta.transform.interpolation == "bicubic"
  assert meta.source["pretrained_cfg"]["test_input_size"] == [3, 224, 224]
  entry = Path(env["FLAX_RESNET_WEIGHTS"]) / "hf-hub--timm--resnet10t.c3_in1k"
  assert sorted(p.name for p in entry.iterdir()) == ["metadata.json", "state"]


PROBE = (
  WITHOUT_TIMM
  + """
import numpy as np, flax_resnet.timm_hub as hub
model, meta = hub.load_pretrained_timm({repo!r})
x = np.random.default_rng(0).standard_normal((2, 64, 64, 3)).astype(np.float32)
np.save(sys.argv[1], np.asarray(model(x)))
print(meta.arch, model.bn1.use_running_average)
"""
)


def test_a_second_call_needs_neither_torch_nor_timm(hub, tmp_path):
  env, folder = hub
  load_pretrained_timm(REPO)  # converted here
  code = PROBE.format(repo=f"hf-hub:{REPO}")
  done = run_python(code, str(tmp_path / "logits.npy"), env=env)
  assert done.returncode == 0, done.stderr[-3000:]
  assert done.stdout.split() == [ARCH, "True"] and "flax_resnet: " not in done.stderr
  reference = timm_from(folder / "snapshots" / COMMIT / "model.safetensors")
  x = np.random.default_rng(0).standard_normal((2, 64, 64, 3)).astype(np.float32)
  with torch.no_grad():
    theirs = reference(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
  ours = np.load(tmp_path / "logits.npy")
  assert np.max(np.abs(ours - theirs)) <= 1e-4 * np.max(np.abs(theirs))


def test_a_blob_whose_bytes_do_not_match_its_name_is_refused_in_one_line(hub):
  env, folder = hub
  blob = Path(os.path.realpath(folder / "snapshots" / COMMIT / "model.safetensors"))
  data = bytearray(blob.read_bytes())
  data[-1] ^= 1  # one bit of one weight
  blob.write_bytes(bytes(data))
  with pytest.raises(ValueError) as error:
    load_pretrained_timm(REPO)
  message = str(error.value)
  assert "\n" not in message and message.startswith(f"{blob}: its bytes hash to ")
  assert f"not to its name, the hub's content hash of {REPO}'s model.safetensors" in message
  assert not Path(env["FLAX_RESNET_WEIGHTS"]).exists()


def test_offline_and_absent_is_one_line_naming_the_repo_the_file_and_where_to_place_it(hub):
  env, _ = hub
  repo = "timm/resnet18d.ra2_in1k"
  with pytest.raises(ValueError) as error:
    load_pretrained_timm(repo)
  message = str(error.value)
  place = Path(env["HF_HUB_CACHE"]) / "models--timm--resnet18d.ra2_in1k"
  assert "\n" not in message and error.value.__cause__ is None
  assert message.startswith(f"{repo}: model.safetensors is not in the Hugging Face hub cache")
  assert "HF_HUB_OFFLINE is set" in message and message.endswith(f"folder at {place}")


def test_other_num_classes_give_a_fresh_head_and_keep_the_backbone(hub):
  full, meta = load_pretrained_timm(REPO)
  model, new = load_pretrained_timm(REPO, num_classes=10, rngs=nnx.Rngs(1))
  assert model.fc.kernel.shape == (512, 10) and new.options["num_classes"] == 10
  assert new.head.startswith("new: 10 classes") and meta.options["num_classes"] == 1000
  ours = dict(nnx.to_flat_state(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))))
  for path, var in nnx.to_flat_state(nnx.state(full, nnx.Any(nnx.Param, nnx.BatchStat))):
    if path[0] != "fc":
      assert np.array_equal(np.asarray(ours[path].get_value()), np.asarray(var.get_value())), path
  bound = 1 / np.sqrt(512)  # timm's fresh nn.Linear: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
  kernel = np.asarray(model.fc.kernel[...])
  assert np.abs(kernel).max() <= bound and kernel.std() > bound / 2


def test_a_conversion_of_other_weights_than_the_hub_caches_now_is_refused(hub, timm_files):
  env, folder = hub
  load_pretrained_timm(REPO)
  torch.manual_seed(1)  # the hub's main moves to other weights
  other = calibrate(timm.create_model(ARCH)).state_dict()
  from safetensors.torch import save

  lay_out_hub(folder.parent, REPO, {**timm_files, "model.safetensors": save(other)}, "ab" * 20)
  entry = Path(env["FLAX_RESNET_WEIGHTS"]) / "hf-hub--timm--resnet10t.c3_in1k"
  with pytest.raises(ValueError) as error:
    load_pretrained_timm(REPO)
  message = str(error.value)
  assert "\n" not in message and message.startswith(f"{entry / 'metadata.json'}: source sha256")
  assert message.endswith(f"remove {entry} to convert the hub's file again")


def write_state(state: dict, path: Path) -> None:
  """A state dict as timm's files hold it: safetensors, or torch.save for .pth and .bin."""
  if path.suffix == ".safetensors":
    from safetensors.torch import save_file

    save_file(state, path)
  else:
    torch.save(state, path)


@pytest.mark.parametrize(
  "suffix, arch", [(".safetensors", ARCH), (".pth", None), (".bin", ARCH)], ids=str
)
def test_the_converter_verifies_a_timm_file_against_timm_in_float64(tmp_path, capsys, suffix, arch):
  from flax_resnet.commands import convert as torch2flax

  torch.manual_seed(0)
  state = calibrate(timm.create_model(ARCH)).state_dict()
  write_state(state, tmp_path / f"model{suffix}")
  argv = ["--state-dict", str(tmp_path / f"model{suffix}"), "--out", str(tmp_path / "ckpt")]
  assert torch2flax.main(argv + (["--arch", arch] if arch else [])) == 0
  out = capsys.readouterr().out
  assert "verifying against timm in float32 and float64" in out and "top-5 as float64: yes" in out
  meta = json.loads((tmp_path / "ckpt" / "metadata.json").read_text())
  assert meta["arch"] == ARCH and meta["parity"]["reference"] == "timm"
  assert meta["parity"]["passed"] and meta["parity"]["rule"] == "float64"


@pytest.mark.parametrize("suffix", [".safetensors", ".bin"])
def test_flax2torch_writes_a_state_dict_timm_loads_strictly_and_bit_exact(tmp_path, suffix):
  from flax_resnet.commands import convert as torch2flax, flax2torch

  torch.manual_seed(0)
  original = calibrate(timm.create_model(ARCH)).state_dict()
  write_state(original, tmp_path / "model.safetensors")
  argv = ["--state-dict", str(tmp_path / "model.safetensors"), "--no-verify"]
  assert torch2flax.main(argv + ["--out", str(tmp_path / "ckpt")]) == 0
  back = tmp_path / f"back{suffix}"
  assert flax2torch.main(["--checkpoint", str(tmp_path / "ckpt"), "--out", str(back)]) == 0
  if suffix == ".safetensors":
    from safetensors.torch import load_file

    state = load_file(back)
  else:
    state = torch.load(back, weights_only=True)
  fresh = timm.create_model(ARCH)
  fresh.load_state_dict(state, strict=True)
  assert set(fresh.state_dict()) == set(original)
  for key, value in fresh.state_dict().items():
    assert torch.equal(value, original[key]), key


def train_config(*assignments):
  from flax_resnet.training import config as config_lib

  return config_lib.override(
    config_lib.Config(),
    [
      f"arch={ARCH}",
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


@pytest.mark.parametrize("init_from", [f"timm:{ARCH}.{TAG}", f"timm:{ARCH}", f"hf-hub:{REPO}"])
def test_the_trainer_starts_from_timms_hub_weights_with_a_fresh_head(hub, init_from, capsys):
  from flax_resnet.training.models import run_model

  model = run_model(train_config(f"init_from={init_from}"))
  assert f"initialised from timm's {REPO} from the Hugging Face hub (a fresh head)" in (
    capsys.readouterr().out
  )
  full, _ = load_pretrained_timm(REPO)  # the same cache
  ours = dict(nnx.to_flat_state(nnx.state(model)))
  for path, var in nnx.to_flat_state(nnx.state(full)):
    if path[0] != "fc":
      assert np.array_equal(np.asarray(ours[path].get_value()), np.asarray(var.get_value())), path
  assert model.fc.kernel.shape == (512, 10)


# Fine-tuning from timm's weights where a family's run differs: GroupNorm (the run keeps the
# architecture's norm), ResNeSt (its own block), SE on the D stem and shortcuts (the common case).
# What the other families would add is shown apart, at a fraction of these full nets' minutes:
# loading weights (test_hub_weights_convert_once_and_compute_timms_logits), every arch's numbers
# (test_timm_every.py) and freezing parts of each
# (test_timm.py::test_freezing_parts_freezes_every_batchnorm_inside_them_on_every_family).
FINE_TUNED = ["resnet50_gn.a1h_in1k", "resnest14d.gluon_in1k", "seresnext26d_32x4d.bt_in1k"]


@pytest.mark.parametrize("name", FINE_TUNED)
def test_fine_tuning_from_timms_weights_keeps_the_frozen_stages_and_trains_the_rest(
  tmp_path, monkeypatch, name
):
  from flax_resnet.port.torch_files import to_torch_state_dict
  from flax_resnet.training.models import freeze_norms, part_of, run_model
  from flax_resnet.training.optimiser import make_optimizer
  from flax_resnet.training.steps import PLAIN, train_step

  torch.manual_seed(0)
  reference = with_random_group_norms(calibrate(timm.create_model(name)))
  offline_hub(tmp_path, monkeypatch, f"timm/{name}", pushed(reference, tmp_path / "pushed"))
  arch, frozen = name.split(".")[0], ("stem", "layer1")
  model = run_model(train_config(f"arch={arch}", f"init_from=timm:{name}", "seed=3"))
  # timm's tensors exactly, but fc: a fresh head of 10 classes, drawn from the run's seed
  theirs = {k: v.numpy() for k, v in reference.state_dict().items() if "num_batches" not in k}
  ours = {k: v for k, v in to_torch_state_dict(model).items() if "num_batches" not in k}
  assert set(ours) == set(theirs)
  for key in (k for k in theirs if not k.startswith("fc.")):
    assert np.array_equal(ours[key], theirs[key]), key
  fresh = flax_resnet.create_model(arch, num_classes=10, rngs=nnx.Rngs(3))
  assert np.array_equal(np.asarray(model.fc.kernel[...]), np.asarray(fresh.fc.kernel[...]))
  # two steps with stem and layer1 frozen: not a bit of them moves, every other part trains
  before = {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model))}
  optimizer = make_optimizer(model, 0.1, weight_decay=0.1, frozen=frozen)
  model.train()
  freeze_norms(model, frozen)
  graphdef, state = nnx.split((model, optimizer))
  # all on the device: the loaded arrays are, the fresh ones not yet, and a step over both kinds
  # would be compiled again for the second, whose state is all on it
  state = jax.device_put(state, jax.devices()[0])
  x, labels = smooth_images(8, (4, 32, 32, 3)), np.array([0, 3, 6, 9])
  for _ in range(2):
    state, _ = train_step(
      graphdef, state, x, labels, spec=dataclasses.replace(PLAIN, frozen=frozen)
    )
  nnx.update((model, optimizer), state)
  after = {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model))}
  moved = {part_of(p) for p in before if not np.array_equal(before[p], after[p])}
  assert moved == {"layer2", "layer3", "layer4", "fc"}


@pytest.mark.parametrize(
  "sets, message",
  [
    (
      [f"init_from=timm:{ARCH}.in22k"],
      f"config init_from='timm:{ARCH}.in22k': '{ARCH}.in22k': {ARCH} has no pretrained tag "
      f"'in22k'; its tags: {TAG}",
    ),
    (
      [f"init_from=timm:{ARCH}.{TAG}", "arch=resnet18"],
      f"config init_from='timm:{ARCH}.{TAG}' holds {ARCH}, this run builds resnet18: set "
      f"arch='{ARCH}'",
    ),
    (
      ["init_from=timm:resnet18d.ra2_in1k", "arch=resnet18d"],
      "config init_from='timm:resnet18d.ra2_in1k': timm/resnet18d.ra2_in1k: model.safetensors "
      "is not in the Hugging Face hub cache",
    ),
  ],
  ids=["unknown tag", "another arch", "absent offline"],
)
def test_bad_timm_weights_for_the_trainer_are_one_line_naming_the_field(hub, sets, message):
  from flax_resnet.training.models import run_model

  with pytest.raises(ValueError) as error:
    run_model(train_config(*sets))
  assert str(error.value).startswith(message) and "\n" not in str(error.value), error.value


def test_a_training_run_from_timms_weights_needs_neither_torch_nor_timm(hub, tmp_path):
  env, _ = hub
  load_pretrained_timm(REPO)  # converted here; the run reads it
  code = WITHOUT_TIMM + (
    "from flax_resnet.commands.train import main as train\nsys.exit(train(sys.argv[1:]))\n"
  )
  args = ["--config", "finetune", "--workdir", str(tmp_path / "run")]
  for s in [
    f"init_from=timm:{ARCH}.{TAG}",
    f"arch={ARCH}",
    "num_classes=10",
    "dtype=float32",
    "synthetic=true",
    "image_size=32",
    "global_batch=8",
    "max_steps=2",
    "workers=0",
    "step_cache=false",
  ]:
    args += ["--set", s]
  done = run_python(code, *args, env={**env, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""})
  assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
  assert f"initialised from timm's {REPO} from the Hugging Face hub (a fresh head)" in done.stdout
  assert "flax_resnet: " not in done.stderr  # no second conversion


def test_a_config_blob_whose_bytes_do_not_match_its_git_hash_is_refused(hub):
  env, folder = hub
  blob = Path(os.path.realpath(folder / "snapshots" / COMMIT / "config.json"))
  config = json.loads(blob.read_text())
  config["architecture"] = "resnet18d"
  blob.write_text(json.dumps(config))
  with pytest.raises(ValueError) as error:
    load_pretrained_timm(REPO)
  assert "\n" not in str(error.value)
  assert str(error.value).startswith(f"{blob}: its bytes hash to "), error.value
  assert not Path(env["FLAX_RESNET_WEIGHTS"]).exists()


def test_weights_copied_into_the_snapshot_without_their_blob_are_refused(hub):
  env, folder = hub
  link = folder / "snapshots" / COMMIT / "model.safetensors"
  data = link.read_bytes()
  link.unlink()
  link.write_bytes(data)  # what a copy by hand leaves: no blob named by the hub's hash
  with pytest.raises(ValueError) as error:
    load_pretrained_timm(REPO)
  message = str(error.value)
  assert "\n" not in message and message.startswith(f"{link}: not a link to a blob")
  assert not Path(env["FLAX_RESNET_WEIGHTS"]).exists()


@pytest.mark.parametrize(
  "blocked, message",
  [
    (
      "torch",
      "converting timm/resnet10t.c3_in1k's weights needs torch, torchvision and timm, and torch "
      "is not installed: pip install 'flax-resnet[timm]'",
    ),
    (
      "huggingface_hub",
      "timm's weights from the Hugging Face hub need huggingface_hub, and huggingface_hub is "
      "not installed: pip install 'flax-resnet[timm]'",
    ),
  ],
)
def test_a_first_call_without_the_timm_extra_is_one_import_error_naming_it(hub, blocked, message):
  env, _ = hub
  code = (
    without(blocked) + "import flax_resnet\n"
    f"try:\n  flax_resnet.load_pretrained_timm({REPO!r})\n"
    "except ImportError as e:\n  print(type(e).__name__, e.__cause__, e, sep='|')\n"
  )
  done = run_python(code, env=env)
  assert done.returncode == 0, done.stderr[-3000:]
  assert done.stdout.strip().split("|") == ["MissingExtra", "None", message]
  assert not Path(env["FLAX_RESNET_WEIGHTS"]).exists()


def test_repository_names_are_read_as_timm_spells_them_and_others_refused():
  from flax_resnet.timm_hub import split_repo

  assert split_repo(f"hf-hub:{REPO}") == (REPO, None)
  assert split_repo(f"{REPO}@{COMMIT}") == (REPO, COMMIT)
  for bad in ("resnet10t", "timm/../x", "a/b/c", ""):
    with pytest.raises(ValueError, match="expected a Hugging Face hub repository"):
      split_repo(bad)


@pytest.mark.parametrize("name", [f"{ARCH}.{TAG}", ARCH, f"hf-hub:{REPO}"])
def test_create_model_with_a_timm_name_and_pretrained_loads_the_hub_weights(hub, name):
  model = flax_resnet.create_model(name, pretrained=True)
  reference, _ = load_pretrained_timm(REPO)
  x = smooth_images(3, (2, 64, 64, 3))
  np.testing.assert_array_equal(np.asarray(model(x)), np.asarray(reference(x)))
  assert model.bn1.use_running_average  # in eval mode, as timm's pretrained models come


def test_a_first_calls_progress_is_one_line_for_each_stage_of_its_table(capsys):
  from flax_resnet.pretrained import Say, _torchvision_messages
  from flax_resnet.timm_hub import _timm_messages

  details = {"weights": "W", "source": {"file": "f.pth"}, "reference": "timm", "path": "/p"}
  stages = ("load", "convert", "note", "verify", "unverified", "verified", "save")
  for messages in (_torchvision_messages("resnet18", "IMAGENET1K_V1"), _timm_messages(REPO)):
    for stage in stages:
      Say(messages)(stage, **details)
  assert capsys.readouterr().err.splitlines() == [
    "flax_resnet: resnet18 IMAGENET1K_V1: fetching torchvision's weights through torch.hub's "
    "cache and checking their SHA-256 (first use only)",
    "flax_resnet: converting W (f.pth)",
    "flax_resnet: verifying against torchvision in float32 and float64 on a fixed batch",
    "flax_resnet: saving to /p",
    f"flax_resnet: {REPO}: converting model.safetensors (first use only)",
    "flax_resnet: verifying against timm in float32 and float64 on a fixed batch",
    "flax_resnet: saving to /p",
  ]
