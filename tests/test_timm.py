"""timm's ResNet family: the registry builds timm's networks key for key, and converted
models compute timm's numbers (float32 as close to float64 as timm's own).

timm is in the dev extra (pyproject.toml, ``timm``); torch runs in float32 against a
float64 copy, JAX at the highest matmul precision (``flax_features`` sets it).
"""

import inspect
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import timm
import timm.models.resnet
from flax import nnx
from torch_reference import assert_parity, calibrate, smooth_images, torch

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
from flax_resnet.registry import TIMM_ARCHITECTURES
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


def calibrated_timm_pair(name: str | None, options: dict | None = None):
  """(timm's model with trained-looking BatchNorm, our conversion of it), both in eval mode."""
  torch.manual_seed(0)
  reference = calibrate(torch_resnet(name, options or {}))
  model = from_torch_state_dict(reference.state_dict(), name)
  return reference, model


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
  torch.manual_seed(0)
  reference = calibrate(torch_resnet(None, options))
  model = ResNet(**options)
  assert our_shapes(model) == {
    k: tuple(v.shape) for k, v in reference.state_dict().items() if "num_batches" not in k
  }
  dilation = options.get("replace_stride_with_dilation")
  extra = {"replace_stride_with_dilation": dilation} if dilation else {}
  model = from_torch_state_dict(reference.state_dict(), **extra)
  assert_parity(reference, model, smooth_images(3, (2, 64, 64, 3)))


def test_a_folded_timm_model_is_as_exact_as_timm():
  reference, model = calibrated_timm_pair("seresnext26d_32x4d")
  assert_parity(reference, fold_batchnorm(model), smooth_images(4, (2, 64, 64, 3)))


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
