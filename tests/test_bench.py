"""The throughput benchmark runs end to end in a tiny configuration and writes valid JSON."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("mode", ["infer", "train"])
def test_throughput_benchmark_writes_one_json_line_per_framework(tmp_path, mode):
  pytest.importorskip("torchvision", reason="the benchmark compares with torchvision")
  out = tmp_path / "bench.json"
  done = subprocess.run(
    [
      sys.executable,
      "bench/throughput.py",
      "--arch",
      "resnet18",
      "--mode",
      mode,
      "--batch",
      "2",
      "--image-size",
      "32",
      "--frameworks",
      "jax,torch-eager",
      "--steps",
      "2",
      "--rounds",
      "2",
      "--warmup",
      "0",
      "--out",
      str(out),
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert done.returncode == 0, done.stderr
  rows = [json.loads(line) for line in out.read_text().splitlines()]
  assert [r["framework"] for r in rows] == ["jax", "torch-eager"]
  for row in rows:
    assert row["mode"] == mode and row["steps"] == 2 and row["images_per_s"] > 0
    assert row["step_s_min"] <= row["step_s_median"] <= row["step_s_max"]
    assert 0 < row["host_s_median"] <= row["step_s_max"]
    assert row["flops_per_image"] == 2 * 37_523_456 * (3 if mode == "train" else 1)
    assert row["versions"]["jax"] and row["versions"]["torch"] and row["command"]
  assert rows[0]["jax_over_fastest_torch"] == pytest.approx(
    rows[0]["images_per_s"] / rows[1]["images_per_s"]
  )


def test_dispatch_benchmark_times_both_step_forms(tmp_path):
  out = tmp_path / "dispatch.json"
  done = subprocess.run(
    [
      sys.executable,
      "bench/dispatch.py",
      "--arch",
      "resnet18",
      "--image-size",
      "8",
      "--steps",
      "3",
      "--out",
      str(out),
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert done.returncode == 0, done.stderr
  rows = [json.loads(line) for line in out.read_text().splitlines()]
  assert [r["variant"] for r in rows] == ["nnx.jit(model, optimizer)", "jax.jit(graphdef, state)"]
  for row in rows:
    assert row["steps"] == 3 and 0 < row["host_ms_median"] <= row["step_ms_median"]


def test_pipeline_benchmark_decodes_real_jpegs_with_and_without_workers(data_dir, tmp_path):
  out = tmp_path / "pipe.json"
  done = subprocess.run(
    [
      sys.executable,
      "bench/pipeline.py",
      "--data",
      "imagenet-samples",
      "--data-root",
      str(data_dir),
      "--workers",
      "0,1",
      "--batch",
      "4",
      "--batches",
      "3",
      "--out",
      str(out),
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert done.returncode == 0, done.stderr
  rows = [json.loads(line) for line in out.read_text().splitlines()]
  assert [r["workers"] for r in rows] == [0, 1]
  for row in rows:
    assert row["image_size"] == 224 and row["dtype"] == "uint8" and row["images_per_s"] > 0
    assert row["timed_batches"] == 4  # 3 rounded up to whole waves: 2 readers' prefetch of 2
    assert row["images_per_s"] == pytest.approx(4 * 4 / row["timed_s"])
    assert row["format"] == "folder" and row["startup_s"] > 0
  assert rows[1]["workers_ready_s_max"] > 0 and "jax" in rows[1]["worker_imports"]
  # the stages are timed once, in the main process: the same figures on each line
  assert rows[0]["stage_ms"] == rows[1]["stage_ms"]
  assert list(rows[0]["stage_ms"]) == ["decode", "crop_flip", "policy", "erase_box"]
  assert rows[0]["stage_ms"]["decode"] > rows[0]["stage_ms"]["erase_box"] >= 0
  assert rows[0]["stage_ms"]["policy"] == 0  # no policy: nothing timed
  assert "flax" not in rows[1]["worker_imports"]  # the package's imports are lazy


def test_pipeline_benchmark_names_a_missing_data_folder(tmp_path):
  done = subprocess.run(
    [sys.executable, "bench/pipeline.py", "--data", "cifar10", "--data-root", str(tmp_path)],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert done.returncode == 2 and "cifar10-jpeg.tar.gz not found" in done.stderr


def test_the_data_folder_is_the_environment_s_else_beside_the_current_directory(
  tmp_path, monkeypatch
):
  from flax_resnet.bench.results import DATA_ENV, data_root

  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv(DATA_ENV, str(tmp_path / "mine"))
  assert data_root() == tmp_path / "mine"
  monkeypatch.delenv(DATA_ENV)
  assert data_root() == tmp_path.parent / "shared" / "data"


def _row(framework, batch, rate):
  return json.dumps(
    {
      "framework": framework,
      "arch": "resnet18",
      "mode": "infer",
      "dtype": "fp32",
      "device": "cpu",
      "batch": batch,
      "images_per_s": rate,
    }
  )


def test_plot_draws_throughput_against_batch_size(tmp_path):
  results = tmp_path / "r.json"
  results.write_text(
    "\n".join(
      _row(f, b, r)
      for f, b, r in [
        ("jax", 1, 10.0),
        ("jax", 8, 20.0),
        ("torch-eager", 1, 12.0),
        ("torch-eager", 8, 18.0),
      ]
    )
  )
  from flax_resnet.bench.plot import read_series

  assert read_series(results) == {
    ("resnet18", "infer", "fp32"): {
      "jax (cpu)": [(1, 10.0), (8, 20.0)],
      "torch-eager (cpu)": [(1, 12.0), (8, 18.0)],
    }
  }
  done = subprocess.run(
    [sys.executable, "bench/plot.py", "--results", str(results), "--out", str(tmp_path / "p.png")],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert done.returncode == 0, done.stderr
  assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_plot_names_the_bad_line(tmp_path):
  results = tmp_path / "r.json"
  results.write_text(_row("jax", 1, 10.0) + "\n{\"framework\": \"jax\"}\n")
  done = subprocess.run(
    [sys.executable, "bench/plot.py", "--results", str(results), "--out", str(tmp_path / "p.png")],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert done.returncode == 2 and "r.json:2: not a flax-resnet-bench throughput line" in done.stderr
  assert not (tmp_path / "p.png").exists()


def test_conv_benchmark_times_both_implementations_of_each_shape(tmp_path):
  out = tmp_path / "convs.json"
  done = subprocess.run(
    [
      sys.executable,
      "bench/convs.py",
      "--batch",
      "1",
      "--repeats",
      "1",
      "--shapes",
      "layer1 1x1 64->256,layer3 3x3 256->256",
      "--out",
      str(out),
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert done.returncode == 0, done.stderr
  rows = [json.loads(line) for line in out.read_text().splitlines()]
  assert [(r["shape"], r["implementation"]) for r in rows] == [
    ("layer1 1x1 64->256", "lax"),
    ("layer1 1x1 64->256", "flax_resnet"),
    ("layer3 3x3 256->256", "lax"),
    ("layer3 3x3 256->256", "flax_resnet"),
  ]
  for row in rows:
    assert min(row["forward_ms"], row["input_grad_ms"], row["kernel_grad_ms"]) > 0
    assert row["versions"]["jax"] and row["command"] and row["backend"] == "cpu"
  assert done.stdout.count("\n| layer") == 4


def test_conv_benchmark_rejects_an_unknown_shape_by_name():
  done = subprocess.run(
    [sys.executable, "bench/convs.py", "--shapes", "layer9 5x5"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert done.returncode == 2 and "layer9 5x5" in done.stderr


def test_the_throughput_benchmark_compares_a_timm_arch_with_timms_own_model():
  pytest.importorskip("timm", reason="timm's archs are compared with timm")
  from flax_resnet.bench.throughput import _torch_model

  assert type(_torch_model("resnet10t")).__module__ == "timm.models.resnet"
  assert type(_torch_model("resnet18")).__module__ == "torchvision.models.resnet"


def test_the_serve_benchmark_times_every_backend_each_round(tmp_path):
  from flax_resnet.bench import serve

  out = tmp_path / "serve.jsonl"
  argv = [
    "--archs",
    "resnet18",
    "--batches",
    "1",
    "--rounds",
    "2",
    "--calls",
    "1",
    "--out",
    str(out),
  ]
  assert serve.main(argv) == 0
  rows = [json.loads(line) for line in out.read_text().splitlines()]
  backends = ["jax", "torch", "ort", "ort-torchvision"]
  backends += ["openvino"] * (importlib.util.find_spec("openvino") is not None)
  assert [(r["round"], r["backend"]) for r in rows] == [(r, b) for r in range(2) for b in backends]
  assert all(r["median_ms"] > 0 and r["arch"] == "resnet18" and r["batch"] == 1 for r in rows)
