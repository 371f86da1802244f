"""Damage a user meets mid-run: damaged checkpoints, a full disk, Ctrl-C, kill -9, a second
trainer on the same workdir, a cut metrics.jsonl. Each ends in one line, never a traceback,
and what is on disk afterwards is checked."""

import contextlib
import filecmp
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from flax_resnet import errors
from flax_resnet.training.shm import PREFIX

ROOT = Path(__file__).resolve().parents[1]
SYNTHETIC = ["synthetic=true", "global_batch=16", "log_every=1", "checkpoint_every=2"]


def train_cmd(workdir, *sets):
  args = [sys.executable, "train/train.py", "--config", "cifar10_tiny", "--workdir", str(workdir)]
  for s in [*SYNTHETIC, *sets]:
    args += ["--set", s]
  return args


def env():
  return {
    **os.environ,
    "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
    "JAX_PLATFORMS": "cpu",
    "PYTHONPATH": str(ROOT),
  }


def train(workdir, *sets, timeout=600):
  return subprocess.run(
    train_cmd(workdir, *sets), cwd=ROOT, env=env(), capture_output=True, text=True, timeout=timeout
  )


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


HARMLESS = (
  "Requested `tracked_metric`",  # orbax's note on runs that save before their first eval
  "that killed runs' workers left in",  # shm's cleanup after another test's killed run (-n 2)
)


def stderr_lines(done) -> list[str]:
  """stderr's lines but the ``HARMLESS`` notes."""
  return [line for line in done.stderr.splitlines() if not any(h in line for h in HARMLESS)]


def one_error(done) -> str:
  errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
  return errors[0]


@pytest.mark.parametrize(
  "how",
  [
    "truncated _METADATA",
    "cut array files",
    "deleted array files",
    "deleted manifest",
    "garbled meta",
  ],
)
def test_a_damaged_latest_checkpoint_is_set_aside_and_the_run_resumes_from_the_one_before(
  two_checkpoints, tmp_path, how
):
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
    p.relative_to(damaged) for p in damaged.rglob("*")
  }


def test_every_checkpoint_damaged_is_one_line_and_exit_2_touching_nothing(
  two_checkpoints, tmp_path
):
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
from flax_resnet.commands.train import main as train
sys.exit(train(sys.argv[1:]))
"""


def test_a_full_disk_is_one_line_cleans_its_temporaries_and_the_run_resumes(tmp_path):
  script = tmp_path / "full_disk.py"
  script.write_text(FULL_DISK)
  workdir = tmp_path / "w"
  cmd = train_cmd(workdir, "max_steps=6", "checkpoint_every=1")
  done = subprocess.run(
    [sys.executable, str(script), *cmd[2:]],
    cwd=ROOT,
    env=env(),
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert done.returncode == 2, done.stderr[-3000:]
  assert len(stderr_lines(done)) == 1, done.stderr[-3000:]  # nothing of orbax's threads
  error = one_error(done)
  assert f"saving checkpoint step 3 in {workdir / 'checkpoints'} failed: no space left" in error
  assert "removed its temporary folder" in error and "resume from step 2" in error
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["1", "2"]
  again = train(workdir, "max_steps=6", "checkpoint_every=1")
  assert again.returncode == 0 and "resumed from step 2" in again.stdout, again.stderr[-3000:]
  assert steps(workdir)[-1] == 6


def start(workdir, *sets, stderr=subprocess.PIPE):
  """The trainer in a session of its own (a terminal's Ctrl-C reaches its whole group),
  once its step 3 is logged; (process, its child processes)."""
  proc = subprocess.Popen(
    train_cmd(workdir, *sets),
    cwd=ROOT,
    env=env(),
    text=True,
    stdout=subprocess.PIPE,
    stderr=stderr,
    start_new_session=True,
  )
  for line in proc.stdout:
    if line.startswith("step 3/"):
      break
  return proc, children(proc.pid)


def children(pid: int) -> list[int]:
  return [
    int(p.name)
    for p in Path("/proc").iterdir()
    if p.name.isdigit() and _stat(int(p.name))[1] == pid
  ]


def _stat(pid: int) -> tuple[str, int]:
  """(state, parent pid) of process ``pid``; ("gone", 0) once it is reaped."""
  try:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
  except (FileNotFoundError, ProcessLookupError):
    return "gone", 0
  return fields[0], int(fields[1])


def alive(pids: list[int]) -> list[int]:
  return [pid for pid in pids if _stat(pid)[0] not in ("gone", "Z")]


@pytest.fixture(scope="module")
def long_run(data_dir, tmp_path_factory) -> list[str]:
  """A long run with two data workers on real images (a synthetic run starts none): 32 train
  and 4 test images of each CIFAR-10 class."""
  from flax_resnet.bench.datasets import unpack_cifar

  root = unpack_cifar(data_dir, tmp_path_factory.mktemp("cifar"), {"train": 32, "test": 4})
  return [
    "max_steps=400",
    "checkpoint_every=1000",
    "workers=2",
    "synthetic=false",
    f"data_dir={root}",
  ]


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads /proc (Linux)")
def test_ctrl_c_saves_exits_130_in_one_line_and_the_run_resumes(tmp_path, long_run):
  workdir = tmp_path / "w"
  proc, workers = start(workdir, *long_run)
  of_the_run = run_files(proc.pid)
  assert len(workers) >= 2  # grain's worker processes (and multiprocessing's tracker)
  os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 130, err[-3000:]
  lines = stderr_lines(subprocess.CompletedProcess([], 130, out, err))
  assert len(lines) == 1 and lines[0].startswith("interrupted: saved step "), err[-3000:]
  saved = int(lines[0].split()[3])
  assert f"SIGINT: saving at step {saved}" in out and steps(workdir) == [saved]
  assert json.loads((workdir / "summary.json").read_text())["signal"] == "SIGINT"
  time.sleep(1)
  # The run's segments and semaphores are named after it (shm.py): none left. Other names
  # in /dev/shm may come and go with a concurrent test's processes (pytest -n 2).
  assert alive(workers) == [] and not of_the_run()
  again = train(workdir, f"max_steps={saved + 2}", *long_run[1:])
  assert again.returncode == 0 and f"resumed from step {saved}" in again.stdout, again.stderr
  assert steps(workdir)[-1] == saved + 2


def run_files(pid: int) -> Callable[[], set[str]]:
  """What lists the shared memory files (segments, semaphores, lock file) named after the run
  of trainer ``pid``, found by the lock file it holds open (a concurrent test's run has its
  own); call it while the trainer lives."""
  links = []
  for fd in Path(f"/proc/{pid}/fd").iterdir():
    with contextlib.suppress(FileNotFoundError):  # closed meanwhile
      links.append(os.readlink(fd))
  locks = [n for n in links if n.startswith(f"/dev/shm/{PREFIX}") and n.endswith(".lock")]
  assert len(locks) == 1, f"trainer {pid} holds {len(locks)} run locks in /dev/shm: {links}"
  lock = locks[0]
  tag = lock.removeprefix(f"/dev/shm/{PREFIX}").removesuffix(".lock")
  names = (f"{PREFIX}{tag}", f"sem.{PREFIX}{tag}")
  return lambda: {n for n in os.listdir("/dev/shm") if n.startswith(names)}


# Another program's segment, and a live run's lock and segment, as test_data makes them.
OTHERS = """
import sys
from multiprocessing import shared_memory
from pathlib import Path
from flax_resnet.training import shm
foreign = shared_memory.SharedMemory(create=True, size=1000)
tag = shm.claim()
name = shm.segment_name(tag)[1:]
Path("/dev/shm", name).write_bytes(bytes(1000))
print(foreign.name, name, f"{shm.PREFIX}{tag}.lock", flush=True)
sys.stdin.read()
foreign.unlink()
Path("/dev/shm", name).unlink()
"""


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="names files in /dev/shm (Linux)")
def test_the_shared_memory_of_a_run_killed_with_its_workers_is_removed_by_the_next_run(
  tmp_path, long_run
):
  others = subprocess.Popen(
    [sys.executable, "-c", OTHERS],
    env=env(),
    stdin=subprocess.PIPE,
    stdout=subprocess.PIPE,
    text=True,
  )
  assert others.stdout is not None
  theirs = set(others.stdout.readline().split())
  try:
    with open(tmp_path / "stderr", "w") as stderr:
      proc, _ = start(tmp_path / "w", *long_run, stderr=stderr)
    of_the_run = run_files(proc.pid)
    os.killpg(proc.pid, signal.SIGKILL)  # the trainer, its workers and resource tracker
    proc.wait(timeout=60)
    left = of_the_run()
    # Batches in flight, as grain's workers had made them, and the queues' semaphores.
    assert len({n for n in left if n.startswith(PREFIX) and "." not in n}) >= 6, left
    assert any(n.startswith(f"sem.{PREFIX}") for n in left) and len(theirs) == 3
    again = train(tmp_path / "w2", "max_steps=1")
    assert again.returncode == 0, again.stderr[-3000:]
    # Gone: removed by this run (or, under pytest -n 2, perhaps by another test's run first,
    # so this run's warning is not asserted); the live process's and the foreign file stay.
    assert not of_the_run() and theirs <= set(os.listdir("/dev/shm"))
    assert "Traceback" not in again.stderr
  finally:
    others.communicate("", timeout=60)
  assert others.returncode == 0


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads /proc (Linux)")
def test_the_workers_die_with_a_trainer_killed_with_sigkill(tmp_path, long_run):
  # stderr to a file: a pipe would stay open as long as any orphaned worker lives.
  with open(tmp_path / "stderr", "w") as stderr:
    proc, workers = start(tmp_path / "w", *long_run, stderr=stderr)
  try:
    assert len(workers) >= 2
    proc.kill()
    proc.wait(timeout=60)
    deadline = time.monotonic() + 10
    while alive(workers) and time.monotonic() < deadline:
      time.sleep(0.2)
    assert alive(workers) == [], [Path(f"/proc/{p}/cmdline").read_text() for p in alive(workers)]
  finally:
    for pid in alive(workers):  # only what this test started, by pid
      os.kill(pid, signal.SIGKILL)


def test_a_second_trainer_on_a_workdir_in_use_is_refused_in_one_line(tmp_path):
  workdir = tmp_path / "w"
  first, _ = start(workdir, "max_steps=400", "checkpoint_every=2")
  try:
    before = (workdir / "config.json").read_bytes()
    second = train(workdir, "max_steps=500", "checkpoint_every=2")
    assert second.returncode == 2, second.stderr[-3000:]
    error = one_error(second)
    assert f"workdir {workdir} is in use by another train.py (pid {first.pid} on " in error
    assert (workdir / "config.json").read_bytes() == before  # max_steps 400 still
  finally:
    first.send_signal(signal.SIGTERM)
    out, err = first.communicate(timeout=300)
  assert first.returncode == 0 and "SIGTERM: saving" in out, err[-3000:]
  assert "Traceback" not in err and not list((workdir / "checkpoints").glob("*tmp*"))


def test_the_workdir_is_locked_before_its_checkpoints_are_read(tmp_path, monkeypatch):
  # CI once saw the second trainer above fail on a checkpoint that the first had just
  # deleted (keep_checkpoints): orbax read the workdir before the lock refused the run.
  import fcntl

  from flax_resnet.training import checkpoints, config as config_lib, trainer

  read_while = []
  real_manager = checkpoints.manager

  def manager(workdir, *args):
    try:  # another open file description: refused while the trainer holds its lock
      fd = os.open(workdir / ".lock.process_0", os.O_RDWR)
    except FileNotFoundError:
      read_while.append("no lock file")
      return real_manager(workdir, *args)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      read_while.append("unlocked")
    except BlockingIOError:
      read_while.append("locked")
    finally:
      os.close(fd)
    return real_manager(workdir, *args)

  monkeypatch.setattr(checkpoints, "manager", manager)
  cfg = config_lib.override(config_lib.load_preset("cifar10_tiny"), SYNTHETIC)
  trainer.Trainer(cfg, tmp_path / "w")
  assert read_while == ["locked"]


@pytest.mark.parametrize(
  "preset, line, raised",
  [
    ("import no_such_module_here\n", 1, "ModuleNotFoundError: No module named"),
    ("def get_config(:\n  pass\n", 1, "SyntaxError"),
    ("def get_config():\n  return 1 / 0\n", 2, "ZeroDivisionError: division by zero"),
  ],
  ids=["import", "syntax", "get_config raises"],
)
def test_a_preset_that_raises_is_one_line_naming_file_and_line(tmp_path, preset, line, raised):
  path = tmp_path / "preset.py"
  path.write_text(preset)
  done = subprocess.run(
    [sys.executable, "train/train.py", "--config", str(path), "--workdir", str(tmp_path / "w")],
    cwd=ROOT,
    env=env(),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert done.returncode == 2 and len(stderr_lines(done)) == 1, done.stderr[-3000:]
  assert one_error(done).startswith(f"error: --config {path} line {line}: {raised}")
  assert not (tmp_path / "w").exists()


def plot(workdir):
  return subprocess.run(
    [sys.executable, "train/plot.py", "--workdir", str(workdir)],
    cwd=ROOT,
    env=env(),
    capture_output=True,
    text=True,
    timeout=300,
  )


def test_a_cut_last_metrics_line_is_skipped_by_plot_and_repaired_by_the_resumed_run(tmp_path):
  workdir = tmp_path / "w"
  assert train(workdir, "max_steps=2").returncode == 0
  metrics = workdir / "metrics.jsonl"
  whole = metrics.read_bytes()
  metrics.write_bytes(whole + b'{"step": 3, "name": "train/lo')  # killed while writing
  done = plot(workdir)
  assert done.returncode == 0 and (workdir / "curves.png").is_file(), done.stderr
  cut_line = len(whole.splitlines()) + 1
  assert (
    done.stderr.strip() == f"note: {metrics} line {cut_line} is cut short (a run stopped "
    "while writing it): skipped"
  )
  again = train(workdir, "max_steps=4")
  assert again.returncode == 0 and f"removed the last line of {metrics}" in again.stdout
  rows = [json.loads(line) for line in metrics.read_text().splitlines()]  # all whole
  assert metrics.read_bytes().startswith(whole) and {r["step"] for r in rows} == {1, 2, 3, 4}
  metrics.write_text('{"step": 1}\n' + metrics.read_text())  # damage within: not ours to drop
  done = plot(workdir)
  assert done.returncode == 2 and len(stderr_lines(done)) == 1
  assert one_error(done).startswith(f"error: {metrics} line 1 is not a metric (KeyError")


def test_a_failed_load_from_python_leaves_nothing_behind_its_error(tmp_path):
  script = f"""
import flax_resnet
from flax import nnx
from flax_resnet import saved_model
from flax_resnet.registry import build_model
model = build_model("resnet18", dict(num_classes=10, rngs=nnx.Rngs(0)))
path = saved_model.save(model, "{tmp_path / 'model'}", {{"arch": "resnet18",
                                                         "options": {{"num_classes": 10}}}})
for f in (path / "state" / "ocdbt.process_0" / "d").iterdir():
  f.write_bytes(f.read_bytes()[:100])
try:
  flax_resnet.load(path)
except ValueError as e:
  print("refused:", e)
"""
  done = subprocess.run(
    [sys.executable, "-c", script], cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300
  )
  assert done.returncode == 0 and "refused:" in done.stdout and "truncated" in done.stdout
  assert done.stderr == "", done.stderr[-3000:]  # was 16 "Event loop is closed" tracebacks


def test_an_image_over_the_pixel_limit_is_refused_not_decoded_with_a_warning(tmp_path, monkeypatch):
  import warnings

  import numpy as np
  from PIL import Image

  from flax_resnet.preprocess import open_image

  Image.fromarray(np.zeros((100, 150, 3), np.uint8)).save(tmp_path / "big.png")
  monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # 15,000 pixels: between 1x and 2x
  for setting in ("default", "error", "ignore"):  # whatever the warnings filters say
    with warnings.catch_warnings(record=True) as warned:
      warnings.simplefilter(setting)
      with pytest.raises(ValueError, match=r"big.png: refused: .*15000 pixels"):
        open_image(tmp_path / "big.png")
    assert not warned  # the refusal is the one message
  monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 15_000)  # at the limit: read
  assert open_image(tmp_path / "big.png").size == (150, 100)


def test_sixteen_bit_images_become_eight_bits_without_wide_copies(tmp_path):
  import tracemalloc

  import numpy as np
  from PIL import Image

  from flax_resnet.preprocess import open_image

  every = np.arange(65536, dtype=np.uint16)
  ramp = np.tile(every, 16).reshape(1024, 1024)  # every 16-bit value, 16 times
  Image.fromarray(ramp).save(tmp_path / "ramp16.png")
  tracemalloc.start()
  try:
    got = np.asarray(open_image(tmp_path / "ramp16.png"))
    peak = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  np.testing.assert_array_equal(got[..., 0], np.round(ramp / 257).astype(np.uint8))
  # The uint16 array, one uint32 copy, the uint8 result and RGB: 10 bytes a pixel; the
  # int64 and float64 copies before took 30.
  assert peak < 12 * ramp.size, peak / ramp.size


@pytest.mark.parametrize(
  "message, shown",
  [
    (
      "Task exception was never retrieved\nfuture: <Task finished coro=<_read() done, defined "
      "at .../orbax/checkpoint/_src/serialization/serialization.py:300>>",
      False,
    ),
    ("unhandled exception during asyncio.run() shutdown\ntask: <Task .../orbax/...>", False),
    ("Task exception was never retrieved\nfuture: <Task finished coro=<mine() done>>", True),
  ],
)
def test_only_the_aborted_reads_of_orbax_are_kept_from_the_asyncio_log(message, shown):
  # Under load, a damaged checkpoint's failed reads were logged as 60-line tracebacks once
  # their tasks were collected, after the one-line warning.
  record = logging.LogRecord("asyncio", logging.ERROR, __file__, 1, message, None, None)
  assert errors._not_an_aborted_orbax_read(record) is shown


def _raised_from(filename: str) -> BaseException:
  try:
    exec(compile("raise ValueError('OUT_OF_RANGE')", filename, "exec"))
  except ValueError as e:
    return e
  raise AssertionError("unreachable")


def _chained(cause: BaseException) -> BaseException:
  try:
    raise Exception("Encountered error while reading array index") from cause
  except Exception as e:
    return e


@pytest.mark.parametrize(
  "filename, shown",
  [("/venv/orbax/checkpoint/_src/serialization/serialization.py", False), ("mine.py", True)],
)
def test_a_gathering_future_is_kept_from_the_asyncio_log_only_when_orbax_raised_it(filename, shown):
  # CI once failed on "_GatheringFuture exception was never retrieved": its line names no
  # file, only its exception's traceback (chained, as orbax re-raises) reaches orbax.
  error = _chained(_raised_from(filename))
  message = f"_GatheringFuture exception was never retrieved\nfuture: <_GatheringFuture {error!r}>"
  record = logging.LogRecord(
    "asyncio", logging.ERROR, __file__, 1, message, None, (type(error), error, None)
  )
  assert errors._not_an_aborted_orbax_read(record) is shown
