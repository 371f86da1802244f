"""One CPU device per core, so that every core takes a share of each convolution."""

import os
import subprocess
import sys

SNIPPET = ("import sys, jax; from flax_resnet.cpu import cores, one_device_per_core; "
           "print(one_device_per_core(int(sys.argv[1])), len(jax.devices()), cores())")


def _run(batch, **env):
  clean = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
  done = subprocess.run([sys.executable, "-c", SNIPPET, str(batch)], env={**clean, **env},
                        capture_output=True, text=True, timeout=120)
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
