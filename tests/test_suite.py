"""bench/gpu_suite.sh: every step, the report and its files, in tiny sizes on the CPU."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flax_resnet.bench.suite import Step, run_step

ROOT = Path(__file__).resolve().parents[1]


def suite(out, *args, data=None):
  env = {
    **os.environ,
    "PYTHON": sys.executable,
    "JAX_PLATFORMS": "cpu",
    **({"FLAX_RESNET_DATA": str(data)} if data else {}),
  }
  return subprocess.run(
    ["bash", "bench/gpu_suite.sh", str(out), *args],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=900,
  )


def test_the_suite_measures_every_step_into_at_most_eight_small_files(data_dir, tmp_path):
  pytest.importorskip("torchvision", reason="the suite compares with torchvision")
  out = tmp_path / "report"
  done = suite(out, "--tiny", "--budget", "300", data=data_dir)
  assert done.returncode == 0, done.stdout + done.stderr[-3000:]
  files = sorted(p.name for p in out.iterdir())
  assert files == ["REPORT.md", "results.jsonl", "suite.log", "train_step_hlo.txt.xz"]
  assert all((out / f).stat().st_size <= 16 * 2**20 for f in files)
  rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
  steps = {r["step"]: r for r in rows if r.get("bench") == "suite"}
  names = ("facts", "train", "infer", "kernels", "pipeline", "pipeline-v2")
  assert [steps[s]["status"] for s in names] == ["ok"] * 6
  assert steps["cifar10-jax"]["status"] == "skipped" and "left" in steps["cifar10-jax"]["why"]
  variants = {(r["mode"], r["framework"], r["variant"]) for r in rows if "mode" in r}
  assert {
    ("train", "jax", "bn_fused_backward"),
    ("infer", "jax", "folded"),
    ("train", "torch-eager", "baseline"),
  } <= variants
  kernels = [r for r in rows if r.get("bench") == "kernels"]
  assert kernels and kernels[0]["ms_per_step"] >= kernels[-1]["ms_per_step"] > 0
  pipeline = [r for r in rows if r.get("bench") == "pipeline"]
  assert [r["workers"] for r in pipeline] == [0, 1] * 2 and pipeline[1]["workers_ready_s_max"] > 0
  assert [r["auto_augment"] for r in pipeline] == ["none"] * 2 + ["ta_wide"] * 2
  # each image's cost a core, by stage: the policy costs only where there is one
  assert all(r["stage_ms"]["decode"] > 0 and r["stage_ms"]["crop_flip"] > 0 for r in pipeline)
  assert [r["stage_ms"]["policy"] > 0 for r in pipeline] == [False] * 2 + [True] * 2
  report = (out / "REPORT.md").read_text()
  for heading in (
    "## Machine",
    "## Training throughput",
    "## Inference throughput",
    "## Top kernels",
    "## Input pipeline",
    "| ta_wide, erase 0.1 |",
    "| ms an image a core, by stage |",
    ", policy 0.00, erase_box ",
    "| jax | folded |",
  ):
    assert heading in report


def test_a_step_past_its_limit_is_killed_and_the_next_still_runs(tmp_path):
  with open(tmp_path / "log", "w") as log:
    start = time.monotonic()
    hung = run_step(
      Step("hang", ["bash", "-c", "sleep 60 & sleep 60"], limit_s=2), log, deadline=start + 100
    )
    after = run_step(Step("next", ["true"], limit_s=5), log, deadline=start + 100)
    late = run_step(Step("big", ["true"], limit_s=5, needs_s=300), log, deadline=start + 100)
  assert hung["status"] == "timed out" and hung["seconds"] < 10
  assert after["status"] == "ok"
  assert late["status"] == "skipped" and late["why"].startswith("needs 300s")


def test_a_used_outdir_is_refused_in_one_line(tmp_path):
  (tmp_path / "old.txt").write_text("keep me")
  done = suite(tmp_path, "--tiny")
  assert done.returncode == 2 and "OUTDIR" in done.stderr and "Traceback" not in done.stderr
  assert (tmp_path / "old.txt").read_text() == "keep me"
