"""Shared fixtures: 8 virtual CPU devices, and the real data beside the checkout."""

import os
from pathlib import Path

# Must be set before jax is imported anywhere: sharding tests use 8 virtual devices.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

DATA_ENV = "FLAX_RESNET_DATA"
DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
  """``$FLAX_RESNET_DATA`` or ``../shared/data``; missing data fails under CI=true."""
  path = Path(os.environ.get(DATA_ENV, DEFAULT_DATA))
  if not path.is_dir():
    message = f"data directory {path} not found (set {DATA_ENV} to the shared data folder)"
    if os.environ.get("CI", "").lower() == "true":
      pytest.fail(message)
    pytest.skip(message)
  return path
