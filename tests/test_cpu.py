"""Every core of a CPU host busy: a device per core where XLA:CPU convolutions are one-threaded."""

import os
import subprocess
import sys

import jax

SNIPPET = (
  "import sys, jax; from flax_resnet import cpu; "
  "print(getattr(cpu, sys.argv[2])(int(sys.argv[1])), len(jax.devices()), cpu.cores())"
)


def _run(batch, function="one_device_per_core", **env):
  clean = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
  done = subprocess.run(
    [sys.executable, "-c", SNIPPET, str(batch), function],
    env={**clean, **env},
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert done.returncode == 0, done.stderr
  return [int(v) for v in done.stdout.split()]


def test_one_device_per_core_when_the_batch_allows():
  asked, devices, cores = _run(720720)  # divisible by every count up to 16
  assert asked == devices == cores or cores > 16


def test_device_count_divides_the_batch():
  asked, devices, cores = _run(1)
  assert asked == devices == 1


def test_a_device_count_the_user_chose_is_kept():
  asked, devices, _ = _run(4, XLA_FLAGS="--xla_force_host_platform_device_count=3")
  assert asked == 0 and devices == 3


def test_every_core_gets_a_device_only_where_convolutions_are_single_threaded():
  asked, devices, cores = _run(720720, "use_every_core")
  if jax.__version_info__ >= (0, 11):  # XLA:CPU's convolutions use every core themselves
    assert asked == 0 and devices == 1
  else:
    assert asked == devices == cores or cores > 16
