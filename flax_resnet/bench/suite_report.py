"""REPORT.md of a suite run (``flax_resnet.bench.suite``), from its ``results.jsonl``."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

from flax_resnet.files import write_atomic

# Issue 18's H100 baseline (jax 0.11.2, torch 2.11.0+cu130; ResNet-50 bf16 batch 256), img/s.
BASELINE = {
  "train": {"jax": 4754, "torch-eager": 3919, "torch-compile": 5439},
  "infer": {"jax": 18613, "torch-eager": 12500, "torch-compile": 19234},
}


def table(header: list[str], rows: list[list]) -> str:
  """A Markdown table."""
  lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
  lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
  return "\n".join(lines) + "\n"


def _cell(value) -> str:
  if value is None:
    return "–"
  if isinstance(value, float):
    return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
  return str(value).replace("|", "\\|")


def read_rows(path: Path) -> list[dict]:
  """The JSON lines of ``path``; lines cut short by a killed step are passed over."""
  rows = []
  if path.is_file():
    for line in path.read_text().splitlines():
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:
        continue
  return rows


def throughput_section(rows: list[dict], mode: str) -> str:
  rows = [r for r in rows if r.get("mode") == mode and "framework" in r]
  if not rows:
    return f"No {mode} figures (see the steps above and suite.log).\n"
  body = [
    [
      r["framework"],
      r["variant"],
      r["images_per_s"],
      r.get("jax_over_fastest_torch"),
      BASELINE[mode].get(r["framework"]) if r["variant"] == "baseline" else None,
      r["first_step_s"],
      1000 * r["host_s_median"],
      r.get("mfu"),
    ]
    for r in rows
  ]
  head = rows[0]
  return (
    f"{head['arch']}, {head['dtype']}, batch {head['batch']} at {head['image_size']}px, "
    f"{head['steps']} timed steps; device {head['device']}; JAX memory fraction "
    f"{head.get('jax_mem_fraction')}.\n\n"
    + table(
      [
        "framework",
        "variant",
        "img/s",
        "JAX / fastest torch",
        "issue 18 baseline img/s (H100)",
        "first step s",
        "host ms/step",
        "MFU",
      ],
      body,
    )
  )


def kernels_section(rows: list[dict]) -> str:
  rows = [r for r in rows if r.get("bench") == "kernels"]
  if not rows:
    return "No profile (see suite.log).\n"
  head = rows[0]
  body = [
    [
      r["rank"],
      f"`{r['kernel'][:100]}`",
      r["calls_per_step"],
      r["ms_per_step"],
      f"{r['share']:.1%}",
    ]
    for r in rows
  ]
  return (
    f"{head['arch']} {head['dtype']} batch {head['batch']}, variant {head['variant']}: "
    f"{head['busy_ms_per_step']:.2f} ms of device time per step. Optimized HLO: "
    f"`{head.get('hlo_file')}` ({head.get('hlo_xz_bytes', 0) / 1e6:.1f} MB xz).\n\n"
    + table(["#", "kernel", "calls/step", "ms/step", "share"], body)
  )


def _augmentation(row: dict) -> str:
  """What the pipeline did past crop and flip: the policy, and erasing's probability."""
  done = [row.get("auto_augment", "none"), f"erase {row.get('random_erase', 0.0)}"]
  return ", ".join(d for d in done if d not in ("none", "erase 0.0")) or "crop, flip"


def _stages(row: dict) -> str:
  """The per-image milliseconds of each stage, in one process (``pipeline.stage_costs``)."""
  stages = row.get("stage_ms") or {}
  return ", ".join(f"{stage} {ms:.2f}" for stage, ms in stages.items()) or "-"


def pipeline_section(rows: list[dict]) -> str:
  rows = [r for r in rows if r.get("bench") == "pipeline"]
  if not rows:
    return "No pipeline figures (see suite.log).\n"
  body = [
    [
      r["data"],
      _augmentation(r),
      r["workers"],
      r["batch"],
      r["startup_s"],
      r.get("workers_ready_s_max"),
      ", ".join(r.get("worker_imports", [])),
      r["images_per_s"],
      _stages(r),
    ]
    for r in rows
  ]
  return table(
    [
      "data",
      "augmentation",
      "workers",
      "batch",
      "first batch s",
      "slowest worker ready s",
      "workers imported",
      "img/s",
      "ms an image a core, by stage",
    ],
    body,
  )


def steps_section(rows: list[dict]) -> str:
  body = [
    [r["step"], r["status"], r.get("seconds"), r["limit_s"], r.get("why", "")]
    for r in rows
    if r.get("bench") == "suite"
  ]
  cifar = [r for r in rows if r.get("bench") == "suite" and r.get("summary")]
  text = table(["step", "status", "seconds", "limit s", "note"], body)
  for r in cifar:
    s = r["summary"]
    text += (
      f"\n{r['step']}: best top-1 {s.get('best_top1')}, last eval {s.get('last_eval')}, "
      f"{s.get('wall_s', s.get('seconds'))} s.\n"
    )
  return text


def facts_section(rows: list[dict]) -> str:
  facts = next((r for r in rows if r.get("bench") == "facts"), None)
  if facts is None:
    return "The facts step gave nothing (see suite.log).\n"
  shm = facts.get("dev_shm_bytes")
  return (
    f"- GPU (nvidia-smi: name, driver, memory, max SM clock): {facts.get('nvidia_smi')}\n"
    f"- JAX devices: {', '.join(facts['jax_devices'])}\n"
    f"- versions: {json.dumps(facts['versions'])}\n"
    f"- CPU cores: {facts['cpu_count']}; /dev/shm: "
    f"{'–' if shm is None else f'{shm / 2**30:.1f} GiB'}\n"
  )


def write_report(out: Path, budget: float, tiny: bool) -> Path:
  """Writes ``out/REPORT.md`` from ``out/results.jsonl``."""
  rows = read_rows(out / "results.jsonl")
  sections = [
    f"# flax-resnet GPU suite, {datetime.date.today().isoformat()}"
    + (" (tiny sizes: a plumbing run)" if tiny else ""),
    f"Budget {budget:.0f} s. Every row is in `results.jsonl`; every step's output in `suite.log`.",
    "## Machine\n\n" + facts_section(rows),
    "## Steps\n\n" + steps_section(rows),
    "## Training throughput\n\n" + throughput_section(rows, "train"),
    "## Inference throughput\n\n" + throughput_section(rows, "infer"),
    "## Top kernels of the JAX train step\n\n" + kernels_section(rows),
    "## Input pipeline\n\n" + pipeline_section(rows),
  ]
  path = out / "REPORT.md"
  write_atomic(path, "\n\n".join(sections) + "\n")
  return path
