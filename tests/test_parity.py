"""Converted models compute torchvision's numbers: eval, train, gradients, round trip.

torch runs in float32; JAX at the highest matmul precision (flax_features sets it).
"""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from flax_resnet.torch_port import (from_torch_state_dict, to_torch_layout, to_torch_state_dict,
                                  torch_key)
from flax_resnet.folding import FoldedNorm, fold_batchnorm
from flax_resnet.model import BatchNorm
from flax_resnet.parity import flax_features, judge, torch_features
from torch_reference import calibrated_pair, nchw, smooth_images, torch

ARCHS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
         "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2"]
REL = 1e-5


def per_arch(names):
  # One xdist worker per architecture keeps each pair built once.
  return [pytest.param(n, marks=pytest.mark.xdist_group(n)) for n in names]


def assert_close(ours, theirs, rel, what):
  bound = rel * float(np.max(np.abs(theirs)))
  diff = float(np.max(np.abs(ours.astype(np.float64) - theirs)))
  assert diff <= bound, f"{what}: max|diff| {diff:.3g} > {bound:.3g}"


def assert_parity(reference, model, x):
  """Logits and every feature map as close to float64 as torchvision's float32 ones are.

  The converter's rule (``parity.judge``): our error against a float64 torchvision run
  is at most twice torch's own float32 error plus a floor of 1e-6, relative to the
  map's largest magnitude; the logits' ordered top-5 is float64's.
  """
  ours, theirs = flax_features(model, x), torch_features(reference, nchw(x))
  exact = torch_features(copy.deepcopy(reference).double(), nchw(x).double())
  for key in ("stem", "layer1", "layer2", "layer3", "layer4", "logits"):
    assert ours[key].shape == theirs[key].shape, key
    flat = [a.reshape(len(a), -1) for a in (ours[key], theirs[key], exact[key])]
    verdict = judge(*flat)
    assert verdict["ours_vs_float64"] <= verdict["bound"], (key, verdict)
  assert judge(ours["logits"], theirs["logits"], exact["logits"])["passed"]


@pytest.mark.parametrize("name", per_arch(ARCHS))
def test_round_trip_is_bit_exact(name):
  reference, model = calibrated_pair(name)
  original = reference.state_dict()
  back = to_torch_state_dict(model)
  assert set(back) == set(original)  # torchvision's keys, num_batches_tracked included
  for key, value in back.items():
    if key.endswith("num_batches_tracked"):  # not a weight: the count the model never had
      assert value.dtype == torch.int64 and value.shape == () and int(value) == 0, key
      continue
    assert value.dtype == original[key].dtype and torch.equal(value, original[key]), key
  without = {k: v for k, v in back.items() if not k.endswith("num_batches_tracked")}
  for state in (back, without):  # both read back
    again = from_torch_state_dict(state, name)
    for (path, a), (_, b) in zip(nnx.to_flat_state(nnx.state(model)),
                                 nnx.to_flat_state(nnx.state(again))):
      assert np.array_equal(np.asarray(a.get_value()), np.asarray(b.get_value())), path


@pytest.mark.parametrize("name", per_arch(ARCHS))
@pytest.mark.parametrize("size", [(224, 224), (97, 131)])
def test_eval_logits_and_features_match_torchvision(name, size):
  reference, model = calibrated_pair(name)
  assert_parity(reference, model, smooth_images(1, (3, *size, 3)))


@pytest.mark.parametrize("name", per_arch(["resnet50", "resnet101", "resnext101_64x4d",
                                           "wide_resnet50_2"]))
def test_deep_nets_with_realistic_batchnorm_are_as_exact_as_torchvision(name):
  # Every BatchNorm weight in 0.6-1.4: float32 error grows with depth, torch's own
  # included, beyond the fixed 1e-5 that once held for the nets above.
  reference, model = calibrated_pair(name, bn_scale=(0.6, 1.4))
  assert_parity(reference, model, smooth_images(1, (2, 224, 224, 3)))


@pytest.mark.parametrize("name", per_arch(ARCHS))
def test_folded_batchnorm_is_as_exact_as_torchvision(name):
  # Folding rounds once more (kernel * scale), and must stay within torch's own error.
  reference, model = calibrated_pair(name, bn_scale=(0.6, 1.4))
  folded = fold_batchnorm(model)
  assert isinstance(folded.layer1[0].bn1, FoldedNorm)
  assert isinstance(model.layer1[0].bn1, BatchNorm), "the original must stay unfolded"
  assert_parity(reference, folded, smooth_images(4, (2, 97, 131, 3)))


VARIANTS = [
    ("resnet18", (("num_classes", 10),)),
    ("resnet50", (("replace_stride_with_dilation", (False, True, True)),)),
    ("resnet18", (("in_channels", 1),)),
]


@pytest.mark.parametrize("name, options", VARIANTS, ids=["num_classes=10", "dilation",
                                                          "in_channels=1"])
def test_variant_matches_torchvision(name, options):
  reference, model = calibrated_pair(name, options)
  channels = dict(options).get("in_channels", 3)
  assert_parity(reference, model, smooth_images(2, (3, 97, 131, channels)))


def test_zero_init_residual_variant_matches_torchvision():
  reference, model = calibrated_pair("resnet50", (("zero_init_residual", True),),
                                     randomize_affine=False)
  assert float(np.abs(np.asarray(model.layer1[0].bn3.scale[...])).max()) == 0.0
  assert_parity(reference, model, smooth_images(3, (3, 97, 131, 3)))


def _flax_train_run(model, x, labels, steps):
  """Logits of the first train-mode pass, gradients of its loss, stats after ``steps``."""
  model = nnx.clone(model)
  model.train()

  def loss_fn(m):
    logits = m(x)
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], 1)), logits

  with jax.default_matmul_precision("highest"):
    (_, logits), grads = nnx.jit(nnx.value_and_grad(loss_fn, has_aux=True))(model)
    forward = nnx.jit(lambda m: m(x))
    for _ in range(steps - 1):
      forward(model)
  return np.asarray(logits), grads, model


def _torch_train_run(reference, x, labels, steps):
  import copy
  reference = copy.deepcopy(reference).train()
  logits = reference(nchw(x))
  torch.nn.functional.cross_entropy(logits, torch.from_numpy(labels)).backward()
  with torch.no_grad():
    for _ in range(steps - 1):
      reference(nchw(x))
  return logits.detach().numpy(), reference


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
@pytest.mark.parametrize("moments, backward", [("two_pass", "autodiff"), ("one_pass", "fused")])
def test_train_mode_logits_statistics_and_gradients_match_torchvision(name, moments, backward):
  reference, model = calibrated_pair(name)
  model = nnx.clone(model)
  model.set_attributes(moments=moments, backward=backward, raise_if_not_found=False)
  # ReLU's gradient jumps at 0, and a forward pass has ~1e6 pre-activations with
  # float32 rounding ~1e-6: on some inputs one of them lands on the other side of
  # the kink than in torch, and one element's gradient (a 1/16 share of a BN bias
  # in layer4 at this size) changes. This input has no such crossing; the float64
  # test below shows the gradients are equal on the inputs that do.
  x = smooth_images(6, (4, 64, 64, 3))
  labels = np.array([0, 97, 194, 291])
  ours, grads, trained = _flax_train_run(model, jnp.asarray(x), jnp.asarray(labels), 3)
  theirs, trained_ref = _torch_train_run(reference, x, labels, 3)
  assert_close(ours, theirs, REL, "train-mode logits")
  ref_state = trained_ref.state_dict()
  for path, var in nnx.to_flat_state(nnx.state(trained, nnx.BatchStat)):
    key, value = torch_key(path), to_torch_layout(np.asarray(var.get_value()))
    assert_close(value, ref_state[key].numpy(), REL, key)
  ref_params = dict(trained_ref.named_parameters())
  for path, g in nnx.to_flat_state(grads):
    key, value = torch_key(path), to_torch_layout(np.asarray(g.get_value()))
    expected = ref_params[key].grad.numpy()
    err = np.linalg.norm(value - expected) / np.linalg.norm(expected)
    assert err <= 1e-4, f"gradient of {key}: relative error {err:.3g}"


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
@pytest.mark.parametrize("seed", [4, 5, 7])
def test_train_mode_gradients_equal_torchvision_in_float64(name, seed):
  """Exact semantics, free of float32 kink crossings (which seed 4 has for resnet18 in
  float32, and seeds 5 and 7 for resnet50: up to 1% error in one tensor there)."""
  assert_float64_gradients_equal_torchvision(name, seed)


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
@pytest.mark.parametrize("moments, backward", [("two_pass", "fused"), ("one_pass", "autodiff"),
                                               ("one_pass", "fused")])
def test_batchnorm_speed_options_keep_float64_gradients_equal_torchvision(name, moments,
                                                                          backward):
  assert_float64_gradients_equal_torchvision(name, 5, moments=moments, backward=backward)


def assert_float64_gradients_equal_torchvision(name, seed, **batchnorm):
  reference, _ = calibrated_pair(name)
  reference = copy.deepcopy(reference).double().train()
  x = smooth_images(seed, (4, 64, 64, 3)).astype(np.float64)
  labels = np.array([0, 97, 194, 291])
  torch.nn.functional.cross_entropy(reference(nchw(x)), torch.from_numpy(labels)).backward()
  expected = dict(reference.named_parameters())
  with jax.enable_x64(True):
    model = from_torch_state_dict(reference.state_dict(), name, param_dtype=jnp.float64)
    model.train()
    if batchnorm:
      model.set_attributes(**batchnorm, raise_if_not_found=False)

    def loss_fn(m):
      logp = jax.nn.log_softmax(m(jnp.asarray(x)))
      return -jnp.mean(jnp.take_along_axis(logp, jnp.asarray(labels)[:, None], 1))

    grads = nnx.grad(loss_fn)(model)
    for path, g in nnx.to_flat_state(grads):
      key, value = torch_key(path), to_torch_layout(np.asarray(g.get_value()))
      assert value.dtype == np.float64, key
      want = expected[key].grad.numpy()
      err = np.linalg.norm(value - want) / np.linalg.norm(want)
      assert err <= 1e-12, f"gradient of {key}: relative error {err:.3g}"
