"""Damage a user meets mid-run: damaged checkpoints, a full disk, Ctrl-C, kill -9, a second
trainer on the same workdir, a cut metrics.jsonl. Each ends in one line, never a traceback,
and what is on disk afterwards is checked."""

import filecmp
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SYNTHETIC = ["synthetic=true", "global_batch=16", "log_every=1", "checkpoint_every=2"]


def train_cmd(workdir, *sets):
  args = [sys.executable, "train/train.py", "--config", "train/configs/cifar10_tiny.py",
          "--workdir", str(workdir)]
  for s in [*SYNTHETIC, *sets]:
    args += ["--set", s]
  return args


def env():
  return {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
          "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}


def train(workdir, *sets, timeout=600):
  return subprocess.run(train_cmd(workdir, *sets), cwd=ROOT, env=env(), capture_output=True,
                        text=True, timeout=timeout)


def steps(workdir) -> list[int]:
  return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory) -> Path:
  """A workdir with checkpoints at steps 2 and 4 of a synthetic run."""
  workdir = tmp_path_factory.mktemp("two") / "w"
  done = train(workdir, "max_steps=4")
  assert done.returncode == 0, done.stderr[-3000:]
  assert steps(workdir) == [2, 4]
  return workdir


def cut(file: Path, keep: int) -> None:
  file.write_bytes(file.read_bytes()[:keep])


def damage(step_dir: Path, how: str) -> str:
  """Damages checkpoint ``step_dir`` as ``how`` says; returns what the warning must name."""
  state = step_dir / "state"
  if how == "truncated _METADATA":
    cut(state / "_METADATA", 100)
    return f"{state / '_METADATA'} is not valid JSON"
  if how == "cut array files":
    for f in (state / "ocdbt.process_0" / "d").iterdir():
      cut(f, 50)
    return f"{state}: array "
  if how == "deleted array files":
    shutil.rmtree(state / "ocdbt.process_0" / "d")
    return f"{state}: array "
  if how == "deleted manifest":
    (state / "manifest.ocdbt").unlink()
    return f"{state / 'manifest.ocdbt'} is missing"
  (step_dir / "meta" / "metadata").write_text("{garbage")  # garbled meta
  return f"{step_dir / 'meta' / 'metadata'} is not valid JSON"


def stderr_lines(done) -> list[str]:
  """stderr's lines but orbax's note on runs that save before their first eval (harmless)."""
  return [line for line in done.stderr.splitlines() if "Requested `tracked_metric`" not in line]


def one_error(done) -> str:
  errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
  return errors[0]


@pytest.mark.parametrize("how", ["truncated _METADATA", "cut array files", "deleted array files",
                                 "deleted manifest", "garbled meta"])
def test_a_damaged_latest_checkpoint_is_set_aside_and_the_run_resumes_from_the_one_before(
    two_checkpoints, tmp_path, how):
  workdir = tmp_path / "w"
  shutil.copytree(two_checkpoints, workdir)
  named = damage(workdir / "checkpoints" / "4", how)
  damaged = tmp_path / "damaged-copy"
  shutil.copytree(workdir / "checkpoints" / "4", damaged)
  done = train(workdir, "max_steps=6")
  assert done.returncode == 0, done.stderr[-3000:]
  warnings = [line for line in done.stderr.splitlines() if "damaged" in line]
  assert len(warnings) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
  assert warnings[0].startswith("warning: checkpoint step 4 is damaged: ") and named in warnings[0]
  assert "resumed from step 2" in warnings[0] and "resumed from step 2" in done.stdout
  assert "Event loop" not in done.stderr and len(warnings[0]) < 600
  aside = workdir / "checkpoints.damaged" / "4"  # left for the user, byte for byte
  assert not filecmp.dircmp(aside, damaged).diff_files and steps(workdir) == [2, 4, 6]
  assert {p.relative_to(aside) for p in aside.rglob("*")} == {
      p.relative_to(damaged) for p in damaged.rglob("*")}


def test_every_checkpoint_damaged_is_one_line_and_exit_2_touching_nothing(two_checkpoints,
                                                                          tmp_path):
  workdir = tmp_path / "w"
  shutil.copytree(two_checkpoints, workdir)
  damage(workdir / "checkpoints" / "4", "cut array files")
  damage(workdir / "checkpoints" / "2", "garbled meta")
  # config.json aside: the run records its settings before it looks at the checkpoints.
  before = checkpoint_files(workdir)
  done = train(workdir, "max_steps=6")
  assert done.returncode == 2, done.stderr[-3000:]
  error = one_error(done)
  assert "every checkpoint in" in error and "step 4 is damaged" in error
  assert "step 2 is damaged" in error and "meta/metadata is not valid JSON" in error
  assert checkpoint_files(workdir) == before and not (workdir / "checkpoints.damaged").exists()


def checkpoint_files(workdir: Path) -> dict[Path, bytes]:
  return {p: p.read_bytes() for p in (workdir / "checkpoints").rglob("*") if p.is_file()}


# Runs the trainer with orbax's array writes failing as on a full disk from the save of
# step 3 on: tensorstore's own ENOSPC needs a small file system, which tests cannot mount.
FULL_DISK = """
import errno, json, sys
from orbax.checkpoint._src.serialization import serialization
write = serialization.async_serialize_from_host

async def full(slices, spec, **kwargs):
  if "/3.orbax-checkpoint-tmp" in json.dumps(spec, default=str):
    raise OSError(errno.ENOSPC, "No space left on device")
  return await write(slices, spec, **kwargs)

serialization.async_serialize_from_host = full
from flax_resnet.training.trainer import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_full_disk_is_one_line_cleans_its_temporaries_and_the_run_resumes(tmp_path):
  script = tmp_path / "full_disk.py"
  script.write_text(FULL_DISK)
  workdir = tmp_path / "w"
  cmd = train_cmd(workdir, "max_steps=6", "checkpoint_every=1")
  done = subprocess.run([sys.executable, str(script), *cmd[2:]], cwd=ROOT, env=env(),
                        capture_output=True, text=True, timeout=600)
  assert done.returncode == 2, done.stderr[-3000:]
  assert len(stderr_lines(done)) == 1, done.stderr[-3000:]  # nothing of orbax's threads
  error = one_error(done)
  assert f"saving checkpoint step 3 in {workdir / 'checkpoints'} failed: no space left" in error
  assert "removed its temporary folder" in error and "resume from step 2" in error
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["1", "2"]
  again = train(workdir, "max_steps=6", "checkpoint_every=1")
  assert again.returncode == 0 and "resumed from step 2" in again.stdout, again.stderr[-3000:]
  assert steps(workdir)[-1] == 6
