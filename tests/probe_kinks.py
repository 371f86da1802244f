"""How train-mode float32 parity behaves on inputs one ulp apart (BENCHMARKS.md, "Numerical
bounds"): the largest gradient error against torchvision's float32 without pinning the
ReLU/max-pool kinks, and the values' and gradients' errors with the float64 run's pattern
pinned (what tests/test_parity.py bounds).

    python tests/probe_kinks.py resnet50,resnet18 5      # archs, inputs (the first unperturbed)

Another CPU's vector code can be mimicked with XLA_FLAGS=--xla_cpu_max_isa=AVX2,
ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2 and OMP_NUM_THREADS=1.
"""

import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
# Run as a script, this folder comes first on the import path: test_parity and
# torch_reference import from here.

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import test_parity as tp  # noqa: E402
from flax import nnx  # noqa: E402
from torch_reference import calibrated_pair, smooth_images  # noqa: E402

from flax_resnet.port.state_dict import to_torch_layout, torch_key  # noqa: E402

VARIANTS = [("two_pass", "autodiff"), ("one_pass", "fused")]


def unpinned_gradient_error(name, moments, backward, x) -> float:
  """The largest relative gradient error of the plain float32 runs (the test before)."""
  reference, model = calibrated_pair(name)
  model = nnx.clone(model)
  model.set_attributes(moments=moments, backward=backward, raise_if_not_found=False)
  labels = np.array([0, 97, 194, 291])
  _, grads, _ = tp._flax_train_run(model, jnp.asarray(x), jnp.asarray(labels), 3)
  _, ref = tp._torch_train_run(reference, x, labels, 3)
  params = dict(ref.named_parameters())
  errors = []
  for path, g in nnx.to_flat_state(grads):
    want = params[torch_key(path)].grad.numpy()
    got = to_torch_layout(np.asarray(g.get_value()))
    errors.append(float(np.linalg.norm(got - want) / np.linalg.norm(want)))
  return max(errors)


def main(archs: str, count: int) -> None:
  patch = pytest.MonkeyPatch()
  base = smooth_images(6, (4, 64, 64, 3))
  for name in archs.split(","):
    for moments, backward in VARIANTS:
      for k in range(count):
        signs = np.random.default_rng(k).choice([-1, 1], base.shape)
        x = base if k == 0 else (base * (1 + signs * 2.0**-23)).astype(np.float32)
        old = unpinned_gradient_error(name, moments, backward, x)
        new = tp.train_mode_errors(name, moments, backward, x, patch)
        grads = max(v for key, v in new.items() if key.startswith("grad"))
        values = max(v for key, v in new.items() if not key.startswith("grad"))
        print(
          f"{name} {moments}/{backward} input {k}: unpinned gradients {old:.2e} | pinned: "
          f"values {values:.2e}, gradients {grads:.2e}",
          flush=True,
        )


if __name__ == "__main__":
  main(sys.argv[1], int(sys.argv[2]))
