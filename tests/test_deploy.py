"""flax-resnet-export (flax_resnet.deploy): ONNX and StableHLO, verified before written, their
preprocessing recorded; predict on ONNX Runtime; the artifacts without flax-resnet."""

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from test_predict import predict
from torch_reference import calibrate, torch, torchvision

onnx = pytest.importorskip(
  "onnx", reason="export tests need the deploy extra (pip install -e '.[dev]')"
)
ort = pytest.importorskip("onnxruntime", reason="export tests need onnxruntime (the deploy extra)")

from flax_resnet import deploy  # noqa: E402
from flax_resnet.commands import export as export_cli  # noqa: E402

# Small crops: the graphs are the full nets, the verification compiles them in float32 and
# float64 and runs two batches.
SMALL = {"resize_size": 36, "crop_size": 32}


def checkpoint(path, arch, torch_model, *, num_classes=1000, categories=None, source=None):
  """``torch_model`` (BatchNorm calibrated) converted and saved as a flax-resnet checkpoint."""
  from flax_resnet.port.state_dict import from_torch_state_dict
  from flax_resnet.saved_model import save

  model = from_torch_state_dict(calibrate(torch_model).state_dict(), arch)
  meta = {
    "arch": arch,
    "options": {"num_classes": num_classes} if num_classes != 1000 else {},
    "preprocessing": SMALL,
    "categories": categories or [f"class-{i}" for i in range(num_classes)],
    "source": source,
  }
  return save(model, path, meta)


@pytest.fixture(scope="module")
def resnet18(tmp_path_factory):
  torch.manual_seed(0)
  return checkpoint(
    tmp_path_factory.mktemp("r18") / "ckpt", "resnet18", torchvision.models.resnet18()
  )


@pytest.fixture(scope="module")
def resnet18_onnx(resnet18, tmp_path_factory):
  out = tmp_path_factory.mktemp("r18onnx") / "resnet18.onnx"
  deploy.export(resnet18, out)
  return out


TINY = {"block": "basic", "layers": (1, 1), "channels": (8, 16), "num_classes": 5, "stem": "cifar"}
TINY_SIZE = {"resize_size": 18, "crop_size": 16}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  """A two-stage net at 16x16 with five classes: every export path, in seconds."""
  from flax import nnx

  from flax_resnet.model import ResNet
  from flax_resnet.saved_model import save

  model = ResNet(**TINY, rngs=nnx.Rngs(0))
  names = ["cat", "dog", "fox", "owl", "yak"]
  meta = {"arch": None, "options": TINY, "preprocessing": TINY_SIZE, "categories": names}
  return save(model, tmp_path_factory.mktemp("tiny") / "ckpt", meta)


@pytest.fixture(scope="module")
def tiny_onnx(tiny, tmp_path_factory):
  out = tmp_path_factory.mktemp("tinyonnx") / "tiny.onnx"
  deploy.export(tiny, out)
  return out


def onnx_logits(path, x_nhwc):
  session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
  return session.run(None, {"images": np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2))})[0]


def model_logits(checkpoint_dir, x_nhwc):
  from flax_resnet.saved_model import load

  model, _ = load(checkpoint_dir)
  return np.asarray(model(x_nhwc))


def test_an_onnx_export_records_its_preprocessing_and_class_names_and_computes_the_model(
  resnet18, resnet18_onnx
):
  props = {p.key: p.value for p in onnx.load(str(resnet18_onnx)).metadata_props}
  record = json.loads(props["flax_resnet"])
  assert json.loads(props["preprocessing"]) == record["preprocessing"]
  assert record["preprocessing"]["crop_size"] == 32 and record["preprocessing"]["resize_size"] == 36
  assert record["preprocessing"]["mean"] == [0.485, 0.456, 0.406]
  assert record["preprocessing"]["interpolation"] == "bilinear"
  assert json.loads(props["class_names"])[7] == "class-7"
  assert record["layout"] == "NCHW" and record["batch"] == "dynamic"
  assert set(record["verification"]["batches"]) == {"1", "3"}
  x = np.random.default_rng(1).standard_normal((5, 32, 32, 3)).astype(np.float32)
  np.testing.assert_allclose(onnx_logits(resnet18_onnx, x), model_logits(resnet18, x), atol=2e-4)


def test_a_stablehlo_export_has_a_symbolic_batch_and_computes_the_model(resnet18, tmp_path):
  import jax

  out = tmp_path / "resnet18.stablehlo"
  deploy.export(resnet18, out)
  exported = jax.export.deserialize(bytearray(out.read_bytes()))
  assert str(exported.in_avals[0].shape[0]) == "batch"
  record = json.loads(deploy.sidecar(out).read_text())
  assert record["layout"] == "NHWC" and record["categories"][3] == "class-3"
  x = np.random.default_rng(2).standard_normal((4, 32, 32, 3)).astype(np.float32)
  np.testing.assert_allclose(np.asarray(exported.call(x)), model_logits(resnet18, x), atol=2e-4)


@pytest.mark.parametrize("fold_bn", [True, False])
def test_resnet50_exports_with_batchnorm_folded_or_kept(tmp_path, fold_bn):
  torch.manual_seed(0)
  ckpt = checkpoint(tmp_path / "ckpt", "resnet50", torchvision.models.resnet50())
  out = tmp_path / "resnet50.onnx"
  record = deploy.export(ckpt, out, fold_bn=fold_bn)
  ops = {node.op_type for node in onnx.load(str(out)).graph.node}
  assert ("BatchNormalization" in ops) is not fold_bn
  assert all(v["top5_as_float64"] for v in record["verification"]["batches"].values())
  # StableHLO folded or not: the same jax.export of a model with or without FoldedNorm.
  hlo = deploy.export(ckpt, tmp_path / "resnet50.stablehlo", fold_bn=fold_bn)
  assert hlo["folded_bn"] is fold_bn


@pytest.mark.parametrize("fmt", ["onnx", "stablehlo"])
def test_a_resnext_and_a_timm_family_member_export_verified(tmp_path, fmt):
  from flax_resnet.port.twin import torch_resnet

  torch.manual_seed(0)
  for arch, net in [
    ("resnext50_32x4d", torchvision.models.resnext50_32x4d()),
    ("resnet10t", torch_resnet("resnet10t", {})),
  ]:
    ckpt = checkpoint(tmp_path / arch, arch, net)
    record = deploy.export(ckpt, tmp_path / f"{arch}.{fmt}")
    assert record["arch"] == arch and len(record["verification"]["batches"]) == 2


def test_a_fine_tuned_ten_class_checkpoint_exports_with_its_class_names(tmp_path):
  names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
  torch.manual_seed(0)
  ckpt = checkpoint(
    tmp_path / "c10",
    "resnet18",
    torchvision.models.resnet18(num_classes=10),
    num_classes=10,
    categories=names,
    source={"workdir": "runs/c10", "step": 100},
  )
  out = tmp_path / "c10.onnx"
  export_cli.main(["--checkpoint", str(ckpt), "--out", str(out), "--static-batch", "2"])
  session, record = deploy.load_onnx(out)
  assert record["categories"] == names and record["num_classes"] == 10
  assert record["source"] == {"workdir": "runs/c10", "step": 100}
  assert session.get_inputs()[0].shape == [2, 3, 32, 32]
  assert session.get_outputs()[0].shape == [2, 10]
  hlo = deploy.export(ckpt, tmp_path / "c10.stablehlo")
  assert hlo["categories"] == names


def test_float16_onnx_is_held_to_the_models_own_float16_error(resnet18, tmp_path):
  record = deploy.export(resnet18, tmp_path / "half.onnx", dtype="float16")
  session = ort.InferenceSession(str(tmp_path / "half.onnx"), providers=["CPUExecutionProvider"])
  assert session.get_inputs()[0].type == "tensor(float16)"
  batch = record["verification"]["batches"]["3"]
  assert batch["model_error"] > 1e-4  # the bound is float16's, not float32's
  assert batch["error"] <= batch["bound"]


def off_by_a_percent(model):
  """A copy of ``model`` whose weights are 1% larger: another model, of the same shapes."""
  import jax
  from flax import nnx

  copy = nnx.clone(model)
  nnx.update(copy, jax.tree.map(lambda v: v * 1.01, nnx.state(copy, nnx.Param)))
  return copy


@pytest.mark.parametrize(
  ("fmt", "writer"), [("onnx", "_torch_onnx_export"), ("stablehlo", "_stablehlo_bytes")]
)
def test_an_export_that_does_not_compute_the_model_is_not_written(
  tiny, tmp_path, monkeypatch, fmt, writer
):
  """The graph written from another net's weights: refused in one line, nothing left."""
  real = getattr(deploy, writer)
  monkeypatch.setattr(deploy, writer, lambda model, *rest: real(off_by_a_percent(model), *rest))
  with pytest.raises(ValueError, match="verification failed at batch 1.*not written"):
    deploy.export(tiny, tmp_path / f"wrong.{fmt}")
  assert list(tmp_path.iterdir()) == []


def test_force_replaces_an_earlier_export_but_nothing_else(tiny, tiny_onnx, tmp_path, capsys):
  mine = tmp_path / "notes.onnx"
  mine.write_text("my notes")
  code = export_cli.main(["--checkpoint", str(tiny), "--out", str(mine), "--force"])
  err = capsys.readouterr().err
  assert code == 2 and err.count("\n") == 1
  assert "is not an earlier onnx export of flax-resnet" in err and "--force" in err
  assert mine.read_text() == "my notes"
  earlier = tmp_path / "earlier.onnx"
  earlier.write_bytes(tiny_onnx.read_bytes())
  assert export_cli.main(["--checkpoint", str(tiny), "--out", str(earlier)]) == 2
  assert "exists; pass --force" in capsys.readouterr().err
  before = earlier.stat().st_mtime_ns
  assert export_cli.main(["--checkpoint", str(tiny), "--out", str(earlier), "--force"]) == 0
  assert earlier.stat().st_mtime_ns != before and deploy.read_record(earlier)["num_classes"] == 5


def test_a_file_where_the_stablehlo_record_goes_is_never_replaced(tmp_path, capsys):
  notes = tmp_path / "m.stablehlo.json"
  notes.write_text("mine")
  out = tmp_path / "m.stablehlo"
  assert export_cli.main(["--checkpoint", str(tmp_path), "--out", str(out), "--force"]) == 2
  err = capsys.readouterr().err
  assert f"{notes} exists" in err and err.count("\n") == 1
  assert notes.read_text() == "mine" and not out.exists()


@pytest.mark.parametrize(
  ("flags", "said"),
  [
    (["--out", "m.txt"], "--out m.txt: name a suffix (.onnx, .stablehlo"),
    (["--out", "m.onnx", "--format", "stablehlo"], "a --format stablehlo file ends in .stablehlo"),
    (["--out", "m.onnx", "--dtype", "bfloat16"], "--dtype bfloat16: ONNX Runtime's CPU provider"),
    (["--out", "m.pth", "--static-batch", "4"], "a torch state dict holds the weights as they are"),
    (["--out", "m.onnx", "--opset", "9"], "--opset 9: torch's exporter writes opsets 13 to 20"),
    (["--out", "m.onnx", "--arch", "resnet18"], "--arch goes with --weights"),
  ],
)
def test_bad_flags_are_one_line_naming_the_flag_before_anything_loads(
  tmp_path, capsys, monkeypatch, flags, said
):
  monkeypatch.chdir(tmp_path)
  assert export_cli.main(["--checkpoint", str(tmp_path), *flags]) == 2
  err = capsys.readouterr().err
  assert said in err and err.count("\n") == 1
  assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
  ("flags", "said"),
  [
    (["--weights", "IMAGENET1K_V1", "--out", "m.onnx"], "--weights IMAGENET1K_V1 needs --arch"),
    (["--weights", "DEFAULT", "--arch", "resnet18", "--out", "m.pth"], "torchvision has"),
  ],
)
def test_a_weights_entry_that_cannot_be_exported_is_one_line(
  tmp_path, capsys, monkeypatch, flags, said
):
  monkeypatch.chdir(tmp_path)
  assert export_cli.main(flags) == 2
  err = capsys.readouterr().err
  assert said in err and err.count("\n") == 1
  assert list(tmp_path.iterdir()) == []


def test_the_old_flax2torch_command_line_still_writes_the_state_dict(tiny, tmp_path):
  from flax_resnet.commands import flax2torch

  old, new = tmp_path / "old.pth", tmp_path / "new.pth"
  assert flax2torch.main(["--checkpoint", str(tiny), "--out", str(old)]) == 0
  assert export_cli.main(["--checkpoint", str(tiny), "--out", str(new)]) == 0
  a, b = torch.load(old, weights_only=True), torch.load(new, weights_only=True)
  assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_predict_on_onnxruntime_prints_the_classes_jax_prints(tiny, tiny_onnx, data_dir):
  images = sorted((data_dir / "imagenet-samples").iterdir())[:3]
  on_jax = predict("--checkpoint", tiny, "--top", "3", *images)
  on_ort = predict("--backend", "onnxruntime", "--checkpoint", tiny_onnx, "--top", "3", *images)
  assert on_jax.returncode == on_ort.returncode == 0, on_jax.stderr + on_ort.stderr

  def classes(out):
    return [line.split()[1:] for line in out.splitlines() if line.startswith("  ")]

  assert classes(on_ort.stdout) == classes(on_jax.stdout)
  assert len(classes(on_ort.stdout)) == 9 and {c[-1] for c in classes(on_ort.stdout)} <= {
    "cat",
    "dog",
    "fox",
    "owl",
    "yak",
  }


def test_predict_refuses_a_damaged_or_foreign_onnx_file_in_one_line(tmp_path, data_dir):
  image = sorted((data_dir / "imagenet-samples").iterdir())[0]
  cut = tmp_path / "cut.onnx"
  cut.write_bytes(b"\x08\x07\x12\x04torch" + bytes(100))
  foreign = tmp_path / "foreign.onnx"
  torch.onnx.export(
    torch.nn.Conv2d(3, 4, 3), (torch.zeros(1, 3, 8, 8),), str(foreign), dynamo=False
  )
  for path, said in [(cut, "ONNX Runtime cannot load it"), (foreign, "not a flax-resnet export")]:
    done = predict("--backend", "onnxruntime", "--checkpoint", path, image)
    assert done.returncode == 2 and said in done.stderr and done.stderr.count("\n") == 1


def test_an_onnx_file_passed_to_the_jax_backend_is_one_line_naming_the_flag(tmp_path):
  done = predict("--checkpoint", tmp_path / "model.onnx", "x.jpg")
  assert done.returncode == 2 and "pass --backend onnxruntime" in done.stderr


# Runs in a fresh virtual environment that holds onnxruntime and numpy only.
SERVE = """
import json, sys
import numpy as np, onnxruntime as ort
try:
  import flax_resnet
  sys.exit("flax_resnet importable")
except ImportError:
  pass
s = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
record = json.loads(s.get_modelmeta().custom_metadata_map["flax_resnet"])
x = np.load(sys.argv[2])
print(json.dumps(s.run(None, {record["input"]: x.transpose(0, 3, 1, 2).copy()})[0].tolist()))
"""


def isolated_logits(python, script, artifact, x, tmp_path, env=None) -> np.ndarray:
  """The logits ``script`` prints for ``x``, run by ``python`` in isolated mode (-I) on
  ``artifact``; its stderr in the failure when it does not exit 0."""
  np.save(tmp_path / "x.npy", x)
  done = subprocess.run(
    [str(python), "-I", "-c", script, str(artifact), str(tmp_path / "x.npy")],
    capture_output=True,
    text=True,
    cwd=tmp_path,
    timeout=300,
    env=env,
  )
  assert done.returncode == 0, done.stderr
  return np.array(json.loads(done.stdout))


def venv_with(folder, *modules):
  """A new virtual environment (no pip) whose site-packages links ``modules``' packages (and
  the libraries bundled beside them) from this one, and nothing else; its Python."""
  import importlib
  import sysconfig
  import venv

  venv.create(folder, with_pip=False)
  purelib = sysconfig.get_path("purelib", vars={"base": str(folder), "platbase": str(folder)})
  for name in modules:
    package = Path(importlib.import_module(name).__file__).parent
    for entry in package.parent.iterdir():  # numpy.libs: numpy's bundled OpenBLAS
      if entry.name == name or entry.name.startswith(f"{name}.libs"):
        (Path(purelib) / entry.name).symlink_to(entry)
  return folder / "bin" / "python"


def test_an_onnx_export_runs_in_a_fresh_venv_with_only_onnxruntime_and_numpy(
  tiny, tiny_onnx, tmp_path
):
  python = venv_with(tmp_path / "venv", "numpy", "onnxruntime")
  x = np.random.default_rng(3).standard_normal((2, 16, 16, 3)).astype(np.float32)
  logits = isolated_logits(python, SERVE, tiny_onnx, x, tmp_path)
  np.testing.assert_allclose(logits, model_logits(tiny, x), atol=2e-4)


LOAD = """
import sys
import numpy as np, jax
try:
  import flax_resnet
  sys.exit("flax_resnet importable")
except ImportError:
  pass
exported = jax.export.deserialize(bytearray(open(sys.argv[1], "rb").read()))
print(np.asarray(exported.call(np.load(sys.argv[2]))).tolist())
"""


def test_a_stablehlo_export_loads_in_a_fresh_venv_with_only_jax_and_flatbuffers(tiny, tmp_path):
  out = tmp_path / "tiny.stablehlo"
  deploy.export(tiny, out)
  jax_needs = ("jax", "jaxlib", "numpy", "ml_dtypes", "opt_einsum", "scipy", "flatbuffers")
  python = venv_with(tmp_path / "venv", *jax_needs)
  x = np.random.default_rng(4).standard_normal((3, 16, 16, 3)).astype(np.float32)
  logits = isolated_logits(python, LOAD, out, x, tmp_path, env={"JAX_PLATFORMS": "cpu"})
  np.testing.assert_allclose(logits, model_logits(tiny, x), atol=2e-4)
