"""The throughput benchmark runs end to end in a tiny configuration and writes valid JSON."""

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
      [sys.executable, "bench/throughput.py", "--arch", "resnet18", "--mode", mode, "--batch",
       "2", "--image-size", "32", "--frameworks", "jax,torch-eager", "--steps", "2", "--rounds",
       "2", "--warmup", "0", "--out", str(out)],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr
  rows = [json.loads(line) for line in out.read_text().splitlines()]
  assert [r["framework"] for r in rows] == ["jax", "torch-eager"]
  for row in rows:
    assert row["mode"] == mode and row["steps"] == 2 and row["images_per_s"] > 0
    assert row["step_s_min"] <= row["step_s_median"] <= row["step_s_max"]
    assert row["flops_per_image"] == 2 * 37_523_456 * (3 if mode == "train" else 1)
    assert row["versions"]["jax"] and row["versions"]["torch"] and row["command"]
  assert rows[0]["jax_over_fastest_torch"] == pytest.approx(
      rows[0]["images_per_s"] / rows[1]["images_per_s"])
