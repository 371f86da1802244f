"""Using every core of a CPU host.

Up to jax 0.10, XLA:CPU runs each convolution on one thread (its matmuls use them
all), so one CPU device runs a ResNet on one core; one device per core with the
batch sharded over them gives each core its share of every convolution. From jax
0.11 on, XLA:CPU spreads each convolution over the cores itself, and one device
is the faster set-up (BENCHMARKS.md).
"""

from __future__ import annotations

import os

import jax


def cores() -> int:
  """The cores this process may run on (its affinity mask, as ``taskset`` sets it)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not on Linux
    return os.cpu_count() or 1


def convolutions_use_every_core() -> bool:
  """Whether this jax's XLA:CPU runs a convolution on all cores (jax 0.11 on)."""
  return jax.__version_info__ >= (0, 11)


def use_every_core(batch: int) -> int:
  """Sets up CPU devices so that ``batch`` keeps every core busy, before JAX's first use.

  One device per core (``one_device_per_core``) where convolutions are
  single-threaded; otherwise JAX's default single CPU device is left as it is.
  Returns the device count asked for, or 0 when none was.
  """
  return 0 if convolutions_use_every_core() else one_device_per_core(batch)


def one_device_per_core(batch: int) -> int:
  """Asks for as many CPU devices as cores, at most, and a count that divides ``batch``.

  Call before JAX's first use of a device. A count the user chose (through
  ``--xla_force_host_platform_device_count`` in XLA_FLAGS or JAX_NUM_CPU_DEVICES)
  is kept. Returns the count asked for, or 0 when it was left to the user.
  """
  if (
    "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")
    or "JAX_NUM_CPU_DEVICES" in os.environ
  ):
    return 0
  count = _largest_divisor(batch, cores())
  jax.config.update("jax_num_cpu_devices", count)
  return count


def batch_devices(batch: int) -> list[jax.Device]:
  """The first devices, as many as possible, over which ``batch`` splits evenly."""
  devices = jax.devices()
  return devices[: _largest_divisor(batch, len(devices))]


def _largest_divisor(batch: int, at_most: int) -> int:
  return max(n for n in range(1, at_most + 1) if batch % n == 0)
