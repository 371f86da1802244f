"""timm's anti-aliased nets (``aa_layer``: ``resnetaa*`` average pool, ``resnetblur*``
BlurPool2d), GroupNorm (``resnet50_gn``) and the mixed-block ``test_resnet``: built key for key,
as exact as timm in float64, converted and written back bit for bit.

Helpers are tests/test_timm.py's; torch runs a float32 copy and a float64 one
(``assert_parity``), JAX at the highest matmul precision.
"""

import jax.numpy as jnp
import numpy as np
import pytest
import timm
from flax import nnx
from test_timm import (
  assert_train_passes_equal,
  calibrated_timm_pair,
  dilation_of,
  float64_train_pass,
  timm_shapes,
)
from torch_reference import assert_parity, nchw, smooth_images, torch

import flax_resnet
from flax_resnet.errors import FieldError
from flax_resnet.folding import fold_batchnorm
from flax_resnet.model import ResNet
from flax_resnet.port.state_dict import (
  ConversionError,
  convert_state_dict,
  infer_architecture,
  torch_key,
)
from flax_resnet.port.torch_files import to_torch_state_dict
from flax_resnet.training.models import network_options

# One net per family: average-pool aa on basic blocks with the D stem and shortcuts, and on
# bottlenecks with SE, GroupNorm, the mixed-block test net; blur's below, on odd sizes.
FAMILIES = ["resnetaa34d", "seresnetaa50d", "resnet50_gn", "test_resnet"]


@pytest.mark.parametrize("name", FAMILIES)
def test_eval_logits_and_features_match_timm_in_float64(name):
  reference, model = calibrated_timm_pair(name)
  assert_parity(reference, model, smooth_images(11, (2, 64, 64, 3)))


@pytest.mark.parametrize("name", ["resnetblur18", "resnetblur50d"])
def test_blur_anti_aliasing_on_odd_sizes_matches_timm(name):
  # 57x61: every blur (stem and blocks) pads an odd side by reflection and strides past it,
  # and resnetblur50d's ceil-mode average shortcuts must land on the same sizes.
  reference, model = calibrated_timm_pair(name)
  assert_parity(reference, model, smooth_images(12, (2, 57, 61, 3)))


def test_an_odd_size_under_average_pool_anti_aliasing_is_refused_in_one_line_as_timm_refuses_it():
  # timm's nn.AvgPool2d(2) floors 31 to 15 where the 1x1/2 shortcut conv gives 16.
  reference, model = calibrated_timm_pair("resnetaa34d")
  x = smooth_images(13, (1, 62, 64, 3))
  with pytest.raises(RuntimeError, match="must match the size"):
    reference(nchw(x))
  with pytest.raises(ValueError, match="input size: a block's residual branch gives") as error:
    model(jnp.asarray(x))
  assert "\n" not in str(error.value)


SMALL = {"block": "bottleneck", "layers": (1, 1, 2, 1), "stem_type": "deep", "stem_width": 16}
KNOBS = {
  # the conv stem pool at stride 1, then the aa module, its norm and ReLU: maxpool[0], maxpool[2]
  "avg with the conv stem pool": {**SMALL, "aa_layer": "avg", "replace_stem_pool": True},
  "blur with the conv stem pool": {**SMALL, "aa_layer": "blur", "replace_stem_pool": True},
  # a dilated stage's first block: timm's blur at stride 1 (avg's is the identity there)
  "blur with dilation": {
    **SMALL,
    "aa_layer": "blur",
    "avg_down": True,
    "replace_stride_with_dilation": (False, True, True),
  },
  "avg with dilation": {
    **SMALL,
    "aa_layer": "avg",
    "replace_stride_with_dilation": (False, False, True),
  },
  "mixed blocks with blur": {
    "block": ("bottleneck", "basic", "basic", "basic"),
    "layers": (1, 2, 1, 1),
    "channels": (16, 32, 32, 64),
    "stem_type": "deep",  # timm's 7x7 stem is 64 wide whatever the stages
    "stem_width": 8,
    "aa_layer": "blur",
    "num_classes": 10,
  },
}


def custom_timm_pair(options: dict):
  # an aa_layer holds no tensors: the file cannot say it
  told = {"aa_layer": options["aa_layer"]} if "aa_layer" in options else {}
  return calibrated_timm_pair(None, options, **dilation_of(options), **told)


@pytest.mark.parametrize("options", KNOBS.values(), ids=list(KNOBS))
def test_anti_aliasing_on_custom_nets_matches_timm(options):
  reference, model = custom_timm_pair(options)
  assert_parity(reference, model, smooth_images(14, (2, 64, 64, 3)))


@pytest.mark.parametrize(
  "options", [KNOBS["blur with the conv stem pool"], KNOBS["avg with the conv stem pool"]]
)
def test_a_folded_anti_aliased_net_is_as_exact_as_timm(options):
  reference, model = custom_timm_pair(options)
  assert_parity(reference, fold_batchnorm(model), smooth_images(15, (2, 64, 64, 3)))


@pytest.mark.parametrize("name", ["resnetblur18", "resnetaa34d", "resnet50_gn"])
def test_train_mode_logits_and_gradients_equal_timm_in_float64(name):
  reference, _ = calibrated_timm_pair(name)
  x = smooth_images(16, (2, 64, 64, 3))
  assert_train_passes_equal(*float64_train_pass(reference, x, np.array([3, 500]), name))


def fake_state_dict(name: str) -> dict:
  return {k: np.zeros(s, np.float32) for k, s in timm_shapes(name).items()}


@pytest.mark.parametrize(
  "name, keys_of",
  [("resnetblur18", "resnet18"), ("resnetaa34d", "resnet34d"), ("seresnetaa50d", None)],
)
def test_an_anti_aliased_file_reads_as_its_keys_say_and_converts_as_the_aa_net_when_named(
  name, keys_of
):
  state = fake_state_dict(name)
  inferred, options = infer_architecture(state)
  assert inferred == keys_of  # seresnet50d is no timm architecture: a custom ResNet
  assert options.get("aa_layer") is None
  conversion = convert_state_dict(state, name)
  assert conversion.arch == name
  assert conversion.options == {"in_channels": 3, "num_classes": 1000, "stem": "imagenet"}
  assert conversion.model.layer2[0].aa is not None


def test_an_anti_aliased_arch_named_for_another_nets_file_is_refused():
  with pytest.raises(ConversionError, match="file looks like resnet18, not arch='resnetaa34d'"):
    convert_state_dict(fake_state_dict("resnet18"), "resnetaa34d")


def test_a_group_norm_file_is_resnet50_gn_and_a_group_norm_resnet18_stays_resnet18():
  assert infer_architecture(fake_state_dict("resnet50_gn"))[0] == "resnet50_gn"
  model = flax_resnet.create_model("resnet18", norm="group", rngs=nnx.Rngs(0))
  inferred, options = infer_architecture(to_torch_state_dict(model))
  assert (inferred, options["norm"]) == ("resnet18", "group")


def test_resnet50_gns_norm_is_fixed_and_other_nets_keep_the_norm_option():
  with pytest.raises(ValueError, match=r"\['norm'\] are fixed by architecture 'resnet50_gn'"):
    flax_resnet.create_model("resnet50_gn", norm="batch")
  with pytest.raises(ValueError, match=r"\['channels'\] are fixed by architecture 'test_resnet'"):
    flax_resnet.create_model("test_resnet", channels=(8, 8, 8, 8))
  model = nnx.eval_shape(lambda: flax_resnet.create_model("resnet50", norm="group"))
  assert isinstance(model.bn1, nnx.GroupNorm)


def test_a_run_of_resnet50_gn_keeps_its_group_norm_and_refuses_freeze_bn_naming_the_fields():
  from flax_resnet.training import config as config_lib
  from flax_resnet.training.models import model_spec

  run = config_lib.override(config_lib.Config(), ["arch=resnet50_gn", "num_classes=10"])
  assert "norm" not in model_spec(run)[1]  # the architecture's own
  frozen = config_lib.override(run, ["freeze_bn=true"])
  with pytest.raises(FieldError) as error:
    model_spec(frozen)
  assert str(error.value) == (
    "config freeze_bn=True: arch='resnet50_gn' has norm='group', no BatchNorm to freeze"
  )
  assert error.value.in_flags() == (
    "--set freeze_bn=true: --set arch=resnet50_gn has norm='group', no BatchNorm to freeze"
  )


def test_blurpools_filter_is_timms_and_no_state_of_either():
  model = ResNet("basic", (1, 1), channels=(8, 16), aa_layer="blur", num_classes=3)
  assert not any("aa" in torch_key(p) for p, _ in nnx.to_flat_state(nnx.state(model)))
  blur = timm.layers.BlurPool2d(16, stride=2)
  assert "filt" not in blur.state_dict()  # a non-persistent buffer: not in timm's files
  x = smooth_images(17, (2, 9, 7, 16))
  ours = np.asarray(model.layer2[0].aa(jnp.asarray(x)))
  np.testing.assert_allclose(ours, blur(nchw(x)).permute(0, 2, 3, 1).numpy(), rtol=0, atol=1e-6)


BAD = [
  ({"aa_layer": "gaussian"}, r"aa_layer must be one of \('avg', 'blur'\) or None"),
  ({"block": ("basic",)}, r"block must be one block or one per stage \(2\), got 1"),
]


@pytest.mark.parametrize("options, message", BAD, ids=[m for _, m in BAD])
def test_a_bad_aa_layer_or_block_list_is_refused_in_one_line_naming_it(options, message):
  with pytest.raises(ValueError, match=message) as error:
    ResNet(**{"block": "bottleneck", "layers": (1, 1), "channels": (8, 16), **options})
  assert "\n" not in str(error.value)


def test_the_network_options_of_a_run_hold_aa_layer_and_each_stages_block():
  assert network_options("resnetaa50d", {})["aa_layer"] == "avg"
  assert network_options("test_resnet", {})["block"] == ["basic", "basic", "bottleneck", "basic"]
  assert network_options("resnet50", {})["block"] == "bottleneck"


def test_a_file_read_as_a_plain_net_notes_the_anti_aliased_nets_with_its_keys():
  from flax_resnet.port.state_dict import convert_state_dict

  with torch.device("meta"):
    keys = timm.create_model("resnetaa50d").state_dict()
  state = {k: np.zeros(v.shape, np.float32) for k, v in keys.items()}
  read = convert_state_dict(state)
  assert read.arch == "resnet50d"
  assert read.notes == [
    "read as resnet50d; its keys also fit resnetblur50d, resnetaa50d (anti-aliasing holds no "
    "tensors): name the architecture (arch=, --arch) if the file is one of those"
  ]
  assert convert_state_dict(state, "resnetaa50d").notes == []
  assert convert_state_dict(state, "resnet50d").notes == []
