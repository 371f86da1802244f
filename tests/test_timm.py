"""timm's ResNet family: the registry builds timm's networks key for key, and converted
models compute timm's numbers (float32 as close to float64 as timm's own).

timm is in the dev extra (pyproject.toml, ``timm``); torch runs in float32 against a
float64 copy, JAX at the highest matmul precision (``flax_features`` sets it).
"""

import copy
import inspect
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import timm
import timm.models.resnet
from flax import nnx
from torch_reference import assert_parity, calibrate, nchw, smooth_images, torch

import flax_resnet
from flax_resnet.folding import fold_batchnorm
from flax_resnet.model import ResNet
from flax_resnet.port.state_dict import (
  from_torch_state_dict,
  infer_architecture,
  to_torch_layout,
  torch_key,
)
from flax_resnet.port.torch_files import to_torch_state_dict
from flax_resnet.port.twin import torch_resnet
from flax_resnet.registry import TIMM_ARCHITECTURES, architecture
from flax_resnet.training.models import freeze_norms, part_of

# One architecture of each knob family: the deep stem with average-pool shortcuts (D), the
# tiered stem (T) on basic blocks, the 64-wide deep stem (S), SE on ResNeXt, ECA.
FAMILIES = ["resnet50d", "resnet10t", "resnet50s", "seresnext26d_32x4d", "ecaresnet26t"]


def timm_shapes(name: str, **kwargs) -> dict[str, tuple]:
  """timm's state-dict keys and shapes (num_batches_tracked aside), built on torch's meta
  device: no memory, no initialisation."""
  with torch.device("meta"):
    model = timm.create_model(name, **kwargs)
  return {k: tuple(v.shape) for k, v in model.state_dict().items() if "num_batches" not in k}


def our_shapes(model) -> dict[str, tuple]:
  """Our model's leaves as torch keys and torch-layout shapes."""
  flat = nnx.to_flat_state(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat)))
  return {
    torch_key(path): to_torch_layout(np.empty(var.get_value().shape, np.int8)).shape
    for path, var in flat
  }


def with_random_group_norms(reference, seed: int = 0):
  """GroupNorm affines drawn away from timm's 1 and 0, so that a swapped weight shows."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in reference.modules():
      if isinstance(m, torch.nn.GroupNorm):
        m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=gen))
        m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.2)
  return reference


def calibrated_timm_pair(name: str | None, options: dict | None = None, **told):
  """(timm's model with trained-looking norms, our conversion of it), both in eval mode.

  ``name``: timm's architecture; or None and ``options``, a custom net of ours, which timm
  builds as ``port.twin`` translates it, with our keys and shapes. ``told``: the options the
  state dict's keys cannot tell (``aa_layer``, dilation, ResNeSt's ``avd``...); the others
  are read off them.
  """
  torch.manual_seed(0)
  reference = with_random_group_norms(calibrate(torch_resnet(name, options or {})))
  if options:
    assert our_shapes(ResNet(**options)) == {
      k: tuple(v.shape) for k, v in reference.state_dict().items() if "num_batches" not in k
    }
  model = from_torch_state_dict(reference.state_dict(), name, **told)
  return reference, model


def dilation_of(options: dict) -> dict:
  """``replace_stride_with_dilation`` where ``options`` dilate: no tensor says it."""
  dilation = options.get("replace_stride_with_dilation")
  return {"replace_stride_with_dilation": dilation} if dilation else {}


class TrainPass(NamedTuple):
  """One train-mode pass: the logits, each parameter's gradient and each running statistic
  after the pass, by timm's state-dict key."""

  logits: np.ndarray
  grads: dict[str, np.ndarray]
  stats: dict[str, np.ndarray]


def float64_train_pass(
  reference, x: np.ndarray, labels: np.ndarray, arch: str | None = None, **options
) -> tuple[TrainPass, TrainPass]:
  """(timm's, ours): one train-mode pass, cross-entropy on ``labels``, of a float64 copy of
  timm's ``reference`` and of our float64 conversion of its weights (``arch`` and
  ``options`` as ``from_torch_state_dict`` takes them)."""
  reference = copy.deepcopy(reference).double().train()
  # From copies: a converted model's arrays may share the tensors' memory (JAX takes numpy
  # arrays without copying on CPU), and timm's train-mode pass updates its statistics in place.
  weights = {k: v.clone() for k, v in reference.state_dict().items()}
  x = x.astype(np.float64)
  logits = reference(nchw(x))
  torch.nn.functional.cross_entropy(logits, torch.from_numpy(labels)).backward()
  statistics = ("running_mean", "running_var")
  theirs = TrainPass(
    logits.detach().numpy(),
    {k: p.grad.numpy() for k, p in reference.named_parameters()},
    {k: v.numpy() for k, v in reference.state_dict().items() if k.endswith(statistics)},
  )
  with jax.enable_x64(True):
    model = from_torch_state_dict(weights, arch, param_dtype=jnp.float64, **options)
    model.train()

    def loss_fn(m):
      out = m(jnp.asarray(x))
      logp = jax.nn.log_softmax(out)
      return -jnp.mean(jnp.take_along_axis(logp, jnp.asarray(labels)[:, None], 1)), out

    (_, out), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    ours = TrainPass(
      np.asarray(out),
      {torch_key(p): to_torch_layout(np.asarray(g.get_value())) for p, g in _flat(grads)},
      {torch_key(p): np.asarray(v.get_value()) for p, v in _flat(nnx.state(model, nnx.BatchStat))},
    )
  return theirs, ours


def _flat(state) -> list:
  return list(nnx.to_flat_state(state))


def relative_error(ours: np.ndarray, theirs: np.ndarray) -> float:
  """``|ours - theirs| / |theirs|`` in the Euclidean norm."""
  return float(np.linalg.norm(ours - theirs) / np.linalg.norm(theirs))


def assert_train_passes_equal(theirs: TrainPass, ours: TrainPass, rtol: float = 1e-12) -> None:
  """Logits, every gradient and every running statistic within ``rtol`` of timm's (relative,
  in the norm); the same keys on both sides."""
  assert relative_error(ours.logits, theirs.logits) <= rtol
  assert set(ours.grads) == set(theirs.grads) and set(ours.stats) == set(theirs.stats)
  largest = max(np.abs(g).max() for g in theirs.grads.values())
  for key, want in theirs.grads.items():
    if key.endswith("conv2.fc1.bias"):
      # ResNeSt's: a constant before a train-mode BatchNorm (bn1) is normalised away, its
      # gradient is zero, which both sides compute as rounding noise: within rtol of the
      # net's largest gradient.
      assert max(np.abs(ours.grads[key]).max(), np.abs(want).max()) <= rtol * largest, key
    else:
      assert relative_error(ours.grads[key], want) <= rtol, f"gradient of {key}"
  for key, want in theirs.stats.items():
    assert relative_error(ours.stats[key], want) <= rtol, key


def test_every_timm_resnet_entry_point_is_built_here():
  entry_points = set(timm.list_models(module="resnet"))
  assert set(TIMM_ARCHITECTURES) <= entry_points
  assert entry_points <= set(flax_resnet.list_models("timm"))


def assert_timms_keys_shapes_and_parameter_count(name: str) -> None:
  """Built abstractly (shapes only), with another head: timm's keys, shapes and count."""
  ours = nnx.eval_shape(lambda: flax_resnet.create_model(name, num_classes=11))
  assert our_shapes(ours) == timm_shapes(name, num_classes=11)
  with torch.device("meta"):
    expected = sum(p.numel() for p in timm.create_model(name, num_classes=11).parameters())
  params = nnx.to_flat_state(nnx.state(ours, nnx.Param))
  assert sum(var.get_value().size for _, var in params) == expected


# ResNet-152 and deeper take 5-25 s to trace on a busy CPU: a test of their own, in SLOW.
DEEP = sorted(n for n, a in TIMM_ARCHITECTURES.items() if sum(a.layers) > 33)


@pytest.mark.parametrize("name", sorted(set(TIMM_ARCHITECTURES) - set(DEEP)))
def test_registered_architecture_has_timms_keys_shapes_and_parameter_count(name):
  assert_timms_keys_shapes_and_parameter_count(name)


@pytest.mark.parametrize("name", DEEP)
def test_deep_registered_architecture_has_timms_keys_shapes_and_parameter_count(name):
  assert_timms_keys_shapes_and_parameter_count(name)


# Anti-aliasing holds no tensors: an aa net's keys are another's (tests/test_timm_aa.py).
@pytest.mark.parametrize("name", sorted(n for n, a in TIMM_ARCHITECTURES.items() if not a.aa_layer))
def test_a_timm_state_dict_is_recognised_as_its_architecture(name):
  shapes = timm_shapes(name)
  fake = {k: np.empty(s, np.int8) for k, s in shapes.items()}
  inferred, options = infer_architecture(fake)
  assert inferred == name, options
  assert options == {"in_channels": 3, "num_classes": 1000, "stem": "imagenet"}


@pytest.mark.parametrize("name", FAMILIES)
def test_eval_logits_and_features_match_timm(name):
  reference, model = calibrated_timm_pair(name)
  assert_parity(reference, model, smooth_images(1, (2, 64, 64, 3)))


def test_average_pool_shortcuts_on_odd_sizes_match_timms_ceil_mode():
  # 57x61: layer2's 2x2 pool sees a last window cut by the edge (ceil_mode=True,
  # count_include_pad=False divides it by the pixels it holds).
  reference, model = calibrated_timm_pair("resnet26d")
  assert_parity(reference, model, smooth_images(2, (2, 57, 61, 3)))


# One of each family: knobs, anti-aliasing (no tensors), GroupNorm, mixed blocks, ResNet-RS,
# pruned widths, ResNeSt (radix 2 and 4).
ROUND_TRIPS = [
  "resnet10t",
  "seresnext26d_32x4d",
  "ecaresnet26t",
  "resnetblur18",
  "resnet50_gn",
  "test_resnet",
  "resnetrs50",
  "ecaresnet50d_pruned",
  "resnest14d",
  "resnest50d_4s2x40d",
]


@pytest.mark.parametrize("name", ROUND_TRIPS)
def test_round_trip_loads_into_timm_strictly_and_bit_exact(name):
  reference, model = calibrated_timm_pair(name)
  original = reference.state_dict()
  back = to_torch_state_dict(model)
  fresh = timm.create_model(name)
  fresh.load_state_dict(back, strict=True)
  for key, value in fresh.state_dict().items():
    if not key.endswith("num_batches_tracked"):
      assert torch.equal(value, original[key]), key


KNOBS = {
  # senet154's knobs (3x3 shortcut convs, a halved first conv) on a small net, with the
  # conv stem pool of ResNet-RS and a narrow deep stem.
  "down_kernel_size, block_reduce_first, replace_stem_pool": {
    "block": "bottleneck",
    "layers": (1, 2, 1, 1),
    "stem_type": "deep",
    "stem_width": 16,
    "replace_stem_pool": True,
    "down_kernel_size": 3,
    "block_reduce_first": 2,
    "attn_layer": "se",
    "num_classes": 10,
  },
  # Dilated stages: the average pool of a stride-1 shortcut is timm's AvgPool2dSame.
  "avg_down with dilation": {
    "block": "bottleneck",
    "layers": (1, 1, 2, 1),
    "stem_type": "deep_tiered",
    "stem_width": 32,
    "avg_down": True,
    "attn_layer": "eca",
    "replace_stride_with_dilation": (False, True, True),
  },
  "3x3 shortcuts with dilation": {
    "block": "bottleneck",
    "layers": (1, 1, 1, 2),
    "down_kernel_size": 3,
    "replace_stride_with_dilation": (False, False, True),
  },
}


@pytest.mark.parametrize("options", KNOBS.values(), ids=list(KNOBS))
def test_timm_knobs_on_custom_nets_match_timm(options):
  reference, model = calibrated_timm_pair(None, options, **dilation_of(options))
  assert_parity(reference, model, smooth_images(3, (2, 64, 64, 3)))


def test_a_folded_timm_model_is_as_exact_as_timm():
  reference, model = calibrated_timm_pair("seresnext26d_32x4d")
  assert_parity(reference, fold_batchnorm(model), smooth_images(4, (2, 64, 64, 3)))


def one_block_a_stage(name: str) -> dict:
  """Architecture ``name``'s options (its stem, shortcuts, attention, widths...) with one block
  in each stage: a pruned net keeps each stage's first block's widths."""
  options = {**architecture(name).options(), "layers": (1, 1, 1, 1)}
  if options.get("block_widths"):
    options["block_widths"] = tuple(stage[:1] for stage in options["block_widths"])
  return options


# The families whose train mode no other file tests (ResNet-RS: test_timm_rs.py; blur, average
# pool aa and GroupNorm: test_timm_aa.py; ResNeSt: test_timm_resnest.py), each by its smallest
# net; the pruned nets' and senet154's (3x3 shortcut convs, a halved first conv, a 64-wide deep
# stem, SE on 64x4d) with one block a stage, which timm builds alike (``port.twin``).
TRAIN_FAMILIES = {
  "D": ("resnet18d", None),
  "T": ("resnet10t", None),
  "S": ("resnet50s", None),
  "SE": ("seresnet18", None),
  "ECA": ("ecaresnet26t", None),
  "pruned": (None, one_block_a_stage("ecaresnet50d_pruned")),
  "senet154": (None, one_block_a_stage("senet154")),
}


@pytest.mark.parametrize("name, options", TRAIN_FAMILIES.values(), ids=list(TRAIN_FAMILIES))
def test_train_mode_logits_gradients_and_statistics_equal_timm_in_float64_on_each_family(
  name, options
):
  reference, _ = calibrated_timm_pair(name, options)
  x = smooth_images(6, (2, 64, 64, 3))
  assert_train_passes_equal(*float64_train_pass(reference, x, np.array([7, 700]), name))


def test_timm_names_build_with_create_model_and_run():
  model = flax_resnet.create_model("resnet10t", num_classes=7, rngs=nnx.Rngs(0))
  model.eval()
  logits = model(jnp.ones((1, 32, 32, 3)))
  assert logits.shape == (1, 7) and bool(jnp.all(jnp.isfinite(logits)))
  assert model.feature_info[0].channels == 64 and model.feature_info[0].stride == 2


def test_torchvisions_list_stays_the_ten_and_timms_list_holds_them_all():
  torchvision_names = flax_resnet.list_models()
  assert len(torchvision_names) == 10
  assert set(torchvision_names) < set(flax_resnet.list_models("timm"))
  with pytest.raises(ValueError, match="source must be one of"):
    flax_resnet.list_models("keras")


BAD_KNOBS = [
  ({"stem_type": "wide"}, "stem_type must be one of"),
  ({"stem_type": "deep", "stem": "cifar"}, "stem_type and replace_stem_pool need stem="),
  ({"stem_width": 32}, "stem_width applies to a deep stem only"),
  ({"stem_type": "deep_tiered", "stem_width": 3}, "stem_width must be an int >= 4"),
  ({"avg_down": 1}, "avg_down must be True or False"),
  ({"down_kernel_size": 2}, "down_kernel_size must be an odd int >= 1"),
  ({"down_kernel_size": 3, "avg_down": True}, "down_kernel_size applies to the conv shortcut"),
  ({"block_reduce_first": 0}, "block_reduce_first must be an int >= 1"),
  ({"attn_layer": "cbam"}, r"attn_layer must be one of \('se', 'eca'\) or None"),
]


@pytest.mark.parametrize("options, message", BAD_KNOBS, ids=[m for _, m in BAD_KNOBS])
def test_a_bad_timm_knob_is_refused_in_one_line_naming_it(options, message):
  with pytest.raises(ValueError, match=message) as error:
    ResNet("bottleneck", (1, 1), channels=(8, 16), **options)
  assert "\n" not in str(error.value)


def test_a_timm_architectures_knobs_are_fixed_by_its_name():
  with pytest.raises(ValueError, match=r"\['avg_down'\] are fixed by architecture 'resnet50d'"):
    flax_resnet.create_model("resnet50d", avg_down=False)


def test_the_timm_knobs_are_keyword_only_options_of_resnet():
  parameters = inspect.signature(ResNet.__init__).parameters
  for knob in ("stem_type", "stem_width", "avg_down", "attn_layer", "block_reduce_first"):
    assert parameters[knob].kind is inspect.Parameter.KEYWORD_ONLY, knob


def test_freezing_the_stem_freezes_every_norm_of_a_deep_stem_and_its_conv_pool():
  model = ResNet(
    "basic", (1, 1), channels=(8, 16), stem_type="deep", stem_width=8, replace_stem_pool=True
  )
  model.train()
  freeze_norms(model, ["stem"])
  stem_norms = [model.conv1[1], model.conv1[4], model.bn1, model.maxpool[1]]
  assert all(norm.use_running_average for norm in stem_norms)
  assert not model.layer1[0].bn1.use_running_average
  paths = [path for path, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))]
  assert {part_of(p) for p in paths} == {"stem", "layer1", "layer2", "fc"}


def test_a_saved_timm_architecture_loads_back_with_its_weights(tmp_path):
  model = flax_resnet.create_model("resnet10t", num_classes=5, rngs=nnx.Rngs(3))
  flax_resnet.save(model, tmp_path / "m", {"arch": "resnet10t", "options": {"num_classes": 5}})
  again, meta = flax_resnet.load(tmp_path / "m")
  assert meta.arch == "resnet10t"
  for (path, a), (_, b) in zip(
    nnx.to_flat_state(nnx.state(model)), nnx.to_flat_state(nnx.state(again))
  ):
    assert np.array_equal(np.asarray(a.get_value()), np.asarray(b.get_value())), path


@pytest.mark.parametrize(
  "options",
  [
    {"channels": (32, 64, 128, 256), "attn_layer": "se"},  # timm's 7x7 stem is 64 wide
    {"replace_stride_with_dilation": (True, False, False), "avg_down": True},  # not the last
  ],
  ids=["narrow 7x7 stem", "first stage dilated"],
)
def test_no_timm_twin_is_claimed_for_a_net_timm_cannot_build(options):
  spec = {"block": "bottleneck", "layers": (1, 1, 1, 1), **options}
  assert torch_resnet(None, spec) is None
  assert torch_resnet(None, {**spec, "stem_type": "deep", "replace_stride_with_dilation": None})


def test_the_docs_count_timms_architectures_as_the_registry_does():
  readme = (Path(__file__).resolve().parents[1] / "docs" / "guides" / "timm.md").read_text()
  resnet, resnest = (len(timm.list_models(module=m)) for m in ("resnet", "resnest"))
  built = len(flax_resnet.list_models("timm"))
  assert built == resnet + resnest
  assert f"lists all {built} architectures of timm's `resnet.py` ({resnet}," in readme
  assert f"`resnest.py` ({resnest})" in readme


@pytest.mark.parametrize(
  "name", ["resnest14d", "test_resnet", "resnetblur18", "resnet50d", "ecaresnet50d_pruned"]
)
def test_freezing_parts_freezes_every_batchnorm_inside_them_on_every_family(name):
  from flax_resnet.model import BatchNorm

  model = flax_resnet.create_model(name, num_classes=10)
  model.train()
  freeze_norms(model, ["stem", "layer1"])
  norms = [
    (part_of(path), module)
    for path, module in nnx.iter_graph(model)
    if isinstance(module, BatchNorm) and path
  ]
  assert {part for part, _ in norms} == {"stem", "layer1", "layer2", "layer3", "layer4"}
  for part, norm in norms:
    assert norm.use_running_average == (part in ("stem", "layer1")), (part, norm)
  paths = [path for path, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))]
  assert {part_of(p) for p in paths} == {"stem", "layer1", "layer2", "layer3", "layer4", "fc"}


# Folded, each family that no other test folds (D and SE: above; blur and average pool aa:
# test_timm_aa.py; ResNeSt: test_timm_resnest.py): ResNet-RS's conv stem pool and senet154's
# 3x3 shortcut convs fold too.
FOLDED_FAMILIES = {
  "T": ("resnet10t", None),
  "S": (None, one_block_a_stage("resnet50s")),
  "ECA": ("ecaresnet26t", None),
  "pruned": (None, one_block_a_stage("ecaresnet50d_pruned")),
  "RS": (None, one_block_a_stage("resnetrs50")),
  "senet154": (None, one_block_a_stage("senet154")),
}


@pytest.mark.parametrize("name, options", FOLDED_FAMILIES.values(), ids=list(FOLDED_FAMILIES))
def test_a_folded_net_of_each_family_folds_every_norm_and_is_as_exact_as_timm(name, options):
  reference, model = calibrated_timm_pair(name, options)
  folded = fold_batchnorm(model)
  kinds = {type(module).__name__ for _, module in nnx.iter_graph(folded)}
  assert "FoldedNorm" in kinds and "BatchNorm" not in kinds
  assert_parity(reference, folded, smooth_images(7, (2, 64, 64, 3)))


def test_folding_timms_group_norm_net_is_refused_in_one_line_and_changes_nothing():
  model = flax_resnet.create_model("resnet50_gn", rngs=nnx.Rngs(0))
  before = nnx.to_pure_dict(nnx.state(model))
  with pytest.raises(ValueError) as error:
    fold_batchnorm(model)
  assert str(error.value) == (
    "fold_batchnorm: bn1 is GroupNorm, not a BatchNorm; only norm='batch' or 'frozen_batch' "
    "models can be folded"
  )
  after = nnx.to_pure_dict(nnx.state(model))
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), before, after))
