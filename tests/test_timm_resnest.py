"""timm's ResNeSt (resnest.py, the split-attention bottleneck): the registry builds every one of
its networks key for key, and converted models compute timm's numbers, in eval and in train
mode, folded or not.

Helpers come from test_timm.py (timm's models on torch's meta device, the calibrated pairs).
"""

import numpy as np
import pytest
import timm
from flax import nnx
from test_timm import (
  assert_timms_keys_shapes_and_parameter_count,
  assert_train_passes_equal,
  calibrated_timm_pair,
  dilation_of,
  float64_train_pass,
  timm_shapes,
)
from torch_reference import assert_parity, smooth_images, torch

import flax_resnet
from flax_resnet.folding import FoldedNorm, fold_batchnorm
from flax_resnet.model import ResNestBottleneck, ResNet, SplitAttention, split_attention_channels
from flax_resnet.port.state_dict import (
  infer_architecture,
  to_state_dict,
)
from flax_resnet.registry import RESNEST_ARCHITECTURES
from flax_resnet.training.models import check_same_network, network_options

# ResNeSt-101 and deeper take long to trace: a test of their own, in SLOW.
DEEP = sorted(n for n, a in RESNEST_ARCHITECTURES.items() if sum(a.layers) > 16)


def test_every_timm_resnest_entry_point_and_pretrained_arch_is_registered():
  entry_points = set(timm.list_models(module="resnest"))
  pretrained = {tag.split(".")[0] for tag in timm.list_models("resnest*", pretrained=True)}
  assert pretrained <= entry_points == set(RESNEST_ARCHITECTURES)
  assert entry_points <= set(flax_resnet.list_models("timm"))


@pytest.mark.parametrize("name", sorted(set(RESNEST_ARCHITECTURES) - set(DEEP)))
def test_resnest_architecture_has_timms_keys_shapes_and_parameter_count(name):
  assert_timms_keys_shapes_and_parameter_count(name)


@pytest.mark.parametrize("name", DEEP)
def test_deep_resnest_architecture_has_timms_keys_shapes_and_parameter_count(name):
  assert_timms_keys_shapes_and_parameter_count(name)


@pytest.mark.parametrize("name", sorted(RESNEST_ARCHITECTURES))
def test_a_timm_resnest_state_dict_is_recognised_as_its_architecture(name):
  # avd_first has no tensor: resnest50d_4s2x40d and _1s4x24d take it from their entries.
  fake = {k: np.empty(s, np.int8) for k, s in timm_shapes(name).items()}
  inferred, options = infer_architecture(fake)
  assert inferred == name, options
  assert options == {"in_channels": 3, "num_classes": 1000, "stem": "imagenet"}


def test_the_split_attention_width_follows_timms_rounding():
  for radix in (1, 2, 3, 4):
    for channels in range(radix, 520, radix):  # the grouped conv takes whole splits
      with torch.device("meta"):
        timm_attn = timm.layers.SplitAttn(channels, radix=radix)
      assert split_attention_channels(channels, radix) == timm_attn.fc1.out_channels


# radix 2 (softmax over two splits), 4 (with avd_first and 2 groups), 1 (a sigmoid gate).
SMALL = [
  ("resnest14d", 64),
  ("resnest26d", 32),
  ("resnest50d_4s2x40d", 32),
  ("resnest50d_1s4x24d", 32),
]


@pytest.mark.parametrize("name, size", SMALL, ids=[name for name, _ in SMALL])
def test_resnest_eval_logits_and_features_match_timm(name, size):
  reference, model = calibrated_timm_pair(name)
  assert_parity(reference, model, smooth_images(1, (2, size, size, 3)))


def test_resnest_train_mode_logits_gradients_and_statistics_equal_timm_in_float64():
  # Batch statistics everywhere, the split attention's bn1 over pooled (N, 1, 1, C) maps too.
  reference, _ = calibrated_timm_pair("resnest14d")
  x = smooth_images(5, (4, 64, 64, 3))
  labels = np.array([0, 97, 194, 291])
  assert_train_passes_equal(*float64_train_pass(reference, x, labels, "resnest14d"))


def test_a_folded_resnest_folds_the_split_attentions_norms_and_is_as_exact_as_timm():
  reference, model = calibrated_timm_pair("resnest14d")
  folded = fold_batchnorm(model)
  attention = folded.layer2[0].conv2
  assert isinstance(attention.bn0, FoldedNorm) and isinstance(attention.bn1, FoldedNorm)
  assert_parity(reference, folded, smooth_images(4, (2, 64, 64, 3)))


# timm's plain stem is 64 wide whatever the stages: the custom nets take deep stems.
TINY = {"block": "resnest", "layers": (1, 1, 1, 1), "channels": (16, 32, 64, 128)}
CUSTOM = {
  # radix 0: a plain grouped 3x3 conv and bn2; avd pools before it in every block, the
  # odd sizes cut the strided pools' last windows.
  "radix 0, avd_first, is_first, odd sizes": (
    {
      **TINY,
      "radix": 0,
      "groups": 2,
      "avd": True,
      "avd_first": True,
      "is_first": True,
      "stem_type": "deep",
      "stem_width": 16,
      "avg_down": True,
    },
    (2, 57, 61, 3),
  ),
  # Dilated stages do not stride: is_first's pools there have stride 1, the 3x3 convs dilate.
  "radix 3 on dilated stages, is_first": (
    {
      **TINY,
      "radix": 3,
      "groups": 2,
      "width_per_group": 48,
      "avd": True,
      "is_first": True,
      "stem_type": "deep_tiered",
      "stem_width": 16,
      "replace_stride_with_dilation": (False, True, True),
    },
    (2, 48, 48, 3),
  ),
  # Without avd the split attention's own conv strides.
  "radix 2 without avd": (
    {**TINY, "radix": 2, "width_per_group": 40, "stem_type": "deep", "stem_width": 8},
    (2, 45, 51, 3),
  ),
}


@pytest.mark.parametrize("options, shape", CUSTOM.values(), ids=list(CUSTOM))
def test_resnest_options_on_custom_nets_match_timm(options, shape):
  # The keys tell neither the avd pools nor a radix of 0 (a Bottleneck's keys): passed on.
  told = {k: options.get(k, False) for k in ("avd", "avd_first", "is_first")}
  told.update(block="resnest", radix=options["radix"], **dilation_of(options))
  reference, model = calibrated_timm_pair(None, options, **told)
  assert_parity(reference, model, smooth_images(3, shape))


def test_a_custom_resnest_state_dict_is_read_as_resnest_with_its_radix_and_groups():
  options = {**TINY, "radix": 4, "groups": 2, "width_per_group": 32, "avd": True}
  fake = {k: np.empty(v.shape, np.int8) for k, v in to_state_dict(ResNet(**options)).items()}
  inferred, read = infer_architecture(fake)
  assert inferred is None
  assert {k: read[k] for k in options} == options


def test_resnest_blocks_hold_timms_modules_where_timm_has_them():
  options = {**RESNEST_ARCHITECTURES["resnest50d_4s2x40d"].options(), "layers": (1, 2, 1, 1)}
  model = nnx.eval_shape(lambda: ResNet(**options))
  first, later = model.layer2[0], model.layer2[1]
  assert first.avd_first is not None and first.avd_last is None and later.avd_first is None
  assert isinstance(first.conv2, SplitAttention) and first.bn2 is None
  assert (first.conv2.radix, first.conv2.groups) == (4, 2)
  plain = nnx.eval_shape(lambda: ResNet(**TINY, radix=0))
  assert plain.layer1[0].bn2 is not None and not isinstance(plain.layer1[0].conv2, SplitAttention)


BAD = [
  ({"block": "resnest", "radix": -1}, "radix must be an int >= 0, got -1"),
  ({"block": "resnest", "radix": 2.0}, "radix must be an int >= 0, got 2.0"),
  ({"block": "resnest", "avd": 1}, "avd must be True or False, got 1"),
  ({"block": "resnest", "is_first": "yes"}, "is_first must be True or False"),
  ({"block": "resnest", "avd_first": True}, "avd_first and is_first .* need avd=True"),
  ({"block": "resnest", "is_first": True}, "avd_first and is_first .* need avd=True"),
  ({"block": "bottleneck", "radix": 2}, "options apply to block='resnest' only, got radix=2"),
  ({"block": "basic", "avd": True}, "options apply to block='resnest' only, got avd=True"),
  ({"block": "resnest", "attn_layer": "se"}, "attn_layer=.se., block_reduce_first=1"),
  ({"block": "resnest", "block_reduce_first": 2}, "attn_layer=None, block_reduce_first=2"),
]


@pytest.mark.parametrize("options, message", BAD, ids=[m for _, m in BAD])
def test_a_bad_resnest_option_is_refused_in_one_line_naming_it(options, message):
  with pytest.raises(ValueError, match=message) as error:
    ResNet(layers=(1, 1), channels=(8, 16), **options)
  assert "\n" not in str(error.value)


def test_a_resnest_architectures_options_are_fixed_by_its_name():
  with pytest.raises(ValueError, match=r"\['radix'\] are fixed by architecture 'resnest50d'"):
    flax_resnet.create_model("resnest50d", radix=4)


def test_a_checkpoint_of_another_radix_is_another_network_for_init_from():
  assert network_options(None, {**TINY, "block": ResNestBottleneck})["block"] == "resnest"
  ours, theirs = (None, {**TINY, "radix": 2}), (None, {**TINY, "radix": 1})
  with pytest.raises(ValueError, match="network with radix=1, this run builds radix=2"):
    check_same_network("ckpt", ours, theirs)
