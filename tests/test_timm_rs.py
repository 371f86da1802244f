"""timm's ResNet-RS, its pruned ECA-ResNets, and drop path / DropBlock (stochastic depth):
built key for key, computing timm's numbers, dropping as timm's schedules say."""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import timm
from flax import nnx
from test_timm import (
  assert_train_passes_equal,
  calibrated_timm_pair,
  float64_train_pass,
  our_shapes,
)
from timm.layers import DropBlock2d
from timm.layers.drop import drop_block_2d
from torch_reference import assert_parity, nchw, smooth_images, torch

import flax_resnet
import flax_resnet.model as model_lib
from flax_resnet import pruned
from flax_resnet.model import ResNet, apply_drop_block, drop_block_gamma
from flax_resnet.port.state_dict import (
  from_torch_state_dict,
  infer_architecture,
)
from flax_resnet.port.torch_files import to_torch_state_dict
from flax_resnet.port.twin import timm_resnet
from flax_resnet.registry import architecture
from flax_resnet.training import config as config_lib
from flax_resnet.training.models import check_same_network, run_model

ROOT = Path(__file__).resolve().parents[1]

PRUNED = ["ecaresnet50d_pruned", "ecaresnet101d_pruned"]


def float64_pair(name: str):
  """(timm's calibrated model in float64, ours converted from it in float64), eval mode."""
  reference, _ = calibrated_timm_pair(name)
  reference = copy.deepcopy(reference).double().eval()
  model = from_torch_state_dict(reference.state_dict(), name, param_dtype=jnp.float64)
  return reference, model


def assert_float64_eval_logits_equal_timm(name: str, x: np.ndarray) -> None:
  with jax.enable_x64(True):
    reference, model = float64_pair(name)
    with torch.no_grad():
      want = reference(nchw(x.astype(np.float64))).numpy()
    ours = np.asarray(model(jnp.asarray(x, jnp.float64)))
  assert ours.dtype == np.float64
  err = np.max(np.abs(ours - want)) / np.max(np.abs(want))
  assert err <= 1e-12, f"{name}: relative error {err:.3g}"


@pytest.mark.parametrize("name", ["resnetrs50", *PRUNED])
def test_eval_logits_equal_timm_in_float64(name):
  assert_float64_eval_logits_equal_timm(name, smooth_images(11, (2, 64, 64, 3)))


@pytest.mark.parametrize("name", ["resnetrs50", "ecaresnet50d_pruned"])
def test_float32_logits_and_features_are_as_close_to_float64_as_timms(name):
  reference, model = calibrated_timm_pair(name)
  assert_parity(reference, model, smooth_images(12, (2, 64, 64, 3)))


def test_resnet_rs_train_mode_logits_and_gradients_equal_timm_in_float64():
  reference, _ = calibrated_timm_pair("resnetrs50")
  x = smooth_images(13, (2, 64, 64, 3))
  assert_train_passes_equal(*float64_train_pass(reference, x, np.array([3, 997]), "resnetrs50"))


def test_the_pruned_widths_are_timms_pruning_descriptions():
  # Every tensor of timm's description files (one shape per tensor, read as timm reads them)
  # has that shape here; the fc's is 1000 x the last stage's width.
  for name, stages in [
    ("ecaresnet50d_pruned", pruned.ECARESNET50D_PRUNED),
    ("ecaresnet101d_pruned", pruned.ECARESNET101D_PRUNED),
  ]:
    with open(f"{timm.models.__path__[0]}/_pruned/{name}.txt") as f:
      described = dict(item.split(":") for item in f.read().strip().split("***"))
    ours = our_shapes(nnx.eval_shape(lambda name=name: flax_resnet.create_model(name)))
    compared = [k for k in described if k in ours]
    assert len(compared) > 100 and all(described[k] == str(list(ours[k])) for k in compared)
    assert architecture(name).block_widths == pruned.block_widths(stages)


def test_a_pruned_net_built_by_hand_takes_the_same_widths_and_eca_kernels_as_timms():
  # ECA's kernel follows the unpruned width (timm's pruning keeps its 1-d conv): 5, 5, 5, 7.
  model = nnx.eval_shape(lambda: flax_resnet.create_model("ecaresnet50d_pruned"))
  kernels = [stage[0].se.conv.kernel.get_value().shape[0] for stage in model.stages]
  assert kernels == [5, 5, 5, 7]
  assert model.num_features == 2022
  assert [info.channels for info in model.feature_info] == [64, 19, 171, 818, 2022]


def test_se_reduction_of_resnet_rs_is_a_quarter_rounded_as_timm():
  model = nnx.eval_shape(lambda: flax_resnet.create_model("resnetrs50"))
  assert model.layer1[0].se.fc1.kernel.get_value().shape[-1] == 64  # 256 / 4
  custom = nnx.eval_shape(
    lambda: ResNet("basic", (1, 1), channels=(8, 20), attn_layer="se", se_rd_ratio=0.3)
  )
  # make_divisible(20 * 0.3 = 6) = 8, at least its divisor; 8 * 0.3 = 2.4 -> 8.
  assert custom.layer2[0].se.fc1.kernel.get_value().shape[-1] == 8


def test_a_custom_se_ratio_is_inferred_from_a_state_dict():
  model = ResNet("bottleneck", (1, 1), channels=(16, 32), attn_layer="se", se_rd_ratio=0.5)
  fake = {k: np.empty(v.shape) for k, v in to_torch_state_dict(model).items()}
  arch, options = infer_architecture(fake)
  assert arch is None and options["se_rd_ratio"] == 0.5


CUSTOM = {
  # SE at another reduction, as ResNet-RS's (timm's SEModule with rd_ratio).
  "se_rd_ratio": {
    "block": "bottleneck",
    "layers": (1, 2, 1, 1),
    "channels": (16, 32, 48, 64),
    "stem_type": "deep",
    "stem_width": 16,
    "replace_stem_pool": True,
    "attn_layer": "se",
    "se_rd_ratio": 0.5,
    "num_classes": 10,
  },
  # A pruned net of our own: timm's twin is adapt_model_from_string of its description.
  "block_widths with eca": {
    "block": "bottleneck",
    "layers": (1, 1, 2, 1),
    "stem_type": "deep",
    "stem_width": 16,
    "avg_down": True,
    "attn_layer": "eca",
    "block_widths": (
      ((12, 5, 40),),
      ((20, 9, 70),),
      ((30, 17, 100), (28, 19, 100)),
      ((40, 31, 150),),
    ),
    "num_classes": 10,
  },
}


@pytest.mark.parametrize("options", CUSTOM.values(), ids=list(CUSTOM))
def test_custom_nets_with_the_new_options_match_their_timm_twin(options):
  reference, model = calibrated_timm_pair(None, options)  # the options inferred from the keys
  assert_parity(reference, model, smooth_images(14, (2, 64, 64, 3)))


# Drop path and DropBlock.


def drop_net(**rates) -> ResNet:
  return ResNet("bottleneck", (2, 1, 2, 1), channels=(8, 8, 16, 16), num_classes=5, **rates)


def test_in_eval_mode_drop_path_and_dropblock_change_nothing():
  x = jnp.asarray(smooth_images(20, (2, 48, 48, 3)))
  plain, dropping = drop_net(), drop_net(drop_path_rate=0.5, drop_block_rate=0.5)
  plain.eval()
  dropping.eval()
  assert np.array_equal(np.asarray(plain(x)), np.asarray(dropping(x)))


def test_rates_of_zero_build_and_train_the_net_without_them():
  x = jnp.asarray(smooth_images(21, (2, 48, 48, 3)))
  plain, zero = drop_net(), drop_net(drop_path_rate=0.0, drop_block_rate=0.0)
  assert np.array_equal(np.asarray(plain(x)), np.asarray(zero(x)))  # train mode
  assert nnx.graphdef(plain) == nnx.graphdef(zero)


def test_the_drop_rates_leave_the_initial_weights_as_they_are():
  plain, dropping = drop_net(), drop_net(drop_path_rate=0.2, drop_block_rate=0.1)
  ours = dict(nnx.to_flat_state(nnx.state(dropping, nnx.Param)))
  for path, var in nnx.to_flat_state(nnx.state(plain, nnx.Param)):
    assert np.array_equal(var.get_value(), ours[path].get_value()), path


def test_in_train_mode_the_drops_change_the_output_and_each_call_draws_anew():
  x = jnp.asarray(smooth_images(22, (4, 48, 48, 3)))
  model = drop_net(drop_path_rate=0.5, drop_block_rate=0.5)
  model.set_attributes(use_running_average=True)  # the drops alone differ between calls
  first, second = np.asarray(model(x)), np.asarray(model(x))
  assert not np.array_equal(first, second)


def dropblock_of(block):
  """A block's DropBlock, timm's or ours, where each keeps it: ResNeSt's split attention holds
  it (``conv2.drop``, timm's ``drop_layer``), other blocks as ``drop_block``; None for none
  (timm's ``nn.Identity``)."""
  found = getattr(block.conv2, "drop", None)
  found = found if found is not None else block.drop_block
  return None if isinstance(found, torch.nn.Identity) else found


@pytest.mark.parametrize("name", ["resnet50d", "resnetrs50", "resnet18d", "resnest14d"])
def test_per_block_drop_probabilities_and_dropblocks_are_timms(name):
  with torch.device("meta"):
    reference = timm.create_model(name, drop_path_rate=0.3, drop_block_rate=0.2)
  model = nnx.eval_shape(
    lambda: flax_resnet.create_model(name, drop_path_rate=0.3, drop_block_rate=0.2)
  )
  for i, stage in enumerate(model.stages):
    for j, block in enumerate(stage):
      theirs = getattr(reference, f"layer{i + 1}")[j]
      want_path = theirs.drop_path.drop_prob if theirs.drop_path is not None else None
      ours_path = block.drop_path.rate if block.drop_path is not None else None
      assert ours_path == want_path, (i, j)
      want, ours = dropblock_of(theirs), dropblock_of(block)
      if isinstance(want, DropBlock2d):
        spec = (want.drop_prob, want.block_size, want.gamma_scale)
        assert (ours.rate, ours.block_size, ours.gamma_scale) == spec, (i, j)
      else:
        assert want is None and ours is None, (i, j)


def test_dropblock_with_timms_seeds_gives_timms_output_exactly(monkeypatch):
  # The same seeds into both: timm's bernoulli_ patched to return them.
  rng = np.random.default_rng(0)
  for shape, block_size in [((2, 4, 9, 9), 5), ((2, 3, 7, 6), 3), ((1, 2, 4, 5), 5)]:
    x = rng.standard_normal(shape)
    seeds = (rng.random((shape[0], 1, *shape[2:])) < 0.15).astype(np.float64)

    def bernoulli_(tensor, p, seeds=seeds):
      return tensor.copy_(torch.from_numpy(seeds))

    with monkeypatch.context() as patch:
      patch.setattr(torch.Tensor, "bernoulli_", bernoulli_)
      want = drop_block_2d(torch.from_numpy(x), 0.1, block_size).numpy()
    with jax.enable_x64(True):
      ours = apply_drop_block(
        jnp.asarray(x.transpose(0, 2, 3, 1)), jnp.asarray(seeds.transpose(0, 2, 3, 1)), block_size
      )
      ours = np.asarray(ours).transpose(0, 3, 1, 2)
    assert np.array_equal(ours, want), (shape, block_size)


def the_seeds(n: int, h: int, w: int) -> np.ndarray:
  """The DropBlock seeds of an n x h x w map, the same for timm and ours: one in eight."""
  return (np.random.default_rng([n, h, w]).random((n, h, w)) < 0.125).astype(np.float64)


def seeding_both(monkeypatch) -> dict[str, list]:
  """timm's ``bernoulli_`` and ``jax.random.bernoulli`` patched to draw ``the_seeds``; the seed
  rates each was asked for, in call order."""
  rates: dict[str, list] = {"timm": [], "ours": []}

  def timm_bernoulli_(tensor, p):
    rates["timm"].append(p)
    n, _, h, w = tensor.shape
    return tensor.copy_(torch.from_numpy(the_seeds(n, h, w)[:, None]))

  def our_bernoulli(key, p, shape):
    rates["ours"].append(p)
    return jnp.asarray(the_seeds(*shape[:3])[..., None] > 0)

  monkeypatch.setattr(torch.Tensor, "bernoulli_", timm_bernoulli_)
  monkeypatch.setattr(jax.random, "bernoulli", our_bernoulli)
  return rates


# A plain grouped 3x3 conv and bn2 (radix 0): its DropBlock is after bn2, as a bottleneck's.
RESNEST_RADIX_0 = {
  "block": "resnest",
  "layers": (1, 1, 1, 1),
  "channels": (16, 32, 64, 128),
  "radix": 0,
  "groups": 2,
  "stem_type": "deep",
  "stem_width": 16,
}


# Where the DropBlocks act on 64x64 images, the third stage's size and the fourth's: resnest14d's
# split attention before its stride (an avd pool after it), a radix-0 block's after it.
@pytest.mark.parametrize(
  "name, options, sizes",
  [("resnest14d", None, (8, 4)), (None, RESNEST_RADIX_0, (4, 2))],
  ids=["split", "radix 0"],
)
def test_resnest_dropblock_drops_where_timms_does_given_the_same_seeds(
  monkeypatch, name, options, sizes
):
  told = {"block": "resnest", "radix": 0} if options else {}
  reference, _ = calibrated_timm_pair(name, options, **told)
  if name:
    dropping = timm.create_model(name, drop_block_rate=0.2)
  else:
    spec = {**options, "norm_layer": torch.nn.BatchNorm2d, "drop_block_rate": 0.2}
    dropping = timm_resnet(None, spec)
  dropping.load_state_dict(reference.state_dict())
  rates = seeding_both(monkeypatch)
  # four images: with two, the split attention's bn1 normalises two values to -1 and 1
  x, labels = smooth_images(23, (4, 64, 64, 3)), np.array([1, 9, 90, 900])
  passes = float64_train_pass(dropping, x, labels, name, drop_block_rate=0.2, **told)
  assert_train_passes_equal(*passes)
  third, fourth = sizes
  expected = [
    drop_block_gamma(0.2, 5, 0.25, third, third),
    drop_block_gamma(0.2, 3, 1, fourth, fourth),
  ]
  assert rates["ours"] == rates["timm"] == expected


def expected_drop_fraction(gamma: float, k: int, h: int, w: int) -> np.ndarray:
  """P(position dropped) under timm's DropBlock: 1 - (1 - gamma) ** (the seeds whose block
  covers it), blocks reaching (k - 1) // 2 before and k // 2 after their seed."""
  kh, kw = min(k, h), min(k, w)

  def covering(n, k):
    i = np.arange(n)
    return np.minimum(i + (k - 1) // 2, n - 1) - np.maximum(i - k // 2, 0) + 1

  return 1 - (1 - gamma) ** np.outer(covering(h, kh), covering(w, kw))


@pytest.mark.parametrize("rate, block_size, gamma_scale, h", [(0.2, 5, 0.25, 12), (0.3, 3, 1, 7)])
def test_dropblock_masks_drop_as_often_as_timms_gamma_says(rate, block_size, gamma_scale, h):
  gamma = drop_block_gamma(rate, block_size, gamma_scale, h, h)
  kh = min(block_size, h)
  assert gamma == gamma_scale * rate * h * h / (kh * kh) / ((h - kh + 1) ** 2)
  spec = model_lib.DropBlockSpec(rate, block_size, gamma_scale)
  block = model_lib.DropBlock(spec, stream=nnx.Rngs(0)["dropout"])
  draws = jax.jit(jax.vmap(lambda key: block_mask(block, key, h)))(
    jax.random.split(jax.random.key(1), 4000)
  )
  dropped = np.mean(np.asarray(draws), axis=0)
  expected = expected_drop_fraction(gamma, block_size, h, h)
  # 4000 draws of 2 images: a standard error under 0.006 at these rates.
  assert np.max(np.abs(dropped - expected)) < 0.03, np.max(np.abs(dropped - expected))
  # timm's own masks, drawn as many times, have the same frequency.
  x = torch.ones(2000, 1, h, h)
  theirs = (drop_block_2d(x, rate, block_size, gamma_scale) == 0).double().mean(0)[0].numpy()
  assert np.max(np.abs(theirs - expected)) < 0.04


def block_mask(block, key, h):
  """Where ``block`` zeroes a (2, h, h, 1) map of ones, its key ``key``."""
  gamma = drop_block_gamma(block.rate, block.block_size, block.gamma_scale, h, h)
  seeds = jax.random.bernoulli(key, gamma, (2, h, h, 1))
  return (apply_drop_block(jnp.ones((2, h, h, 1)), seeds, block.block_size) == 0)[..., 0]


def test_dropblock_modules_draw_their_seeds_at_timms_gamma():
  spec = model_lib.DropBlockSpec(0.4, 3, 1.0)
  block = model_lib.DropBlock(spec, stream=nnx.Rngs(3)["dropout"])
  h, drops = 10, []
  step = nnx.jit(lambda b, x: b(x))
  for _ in range(300):
    drops.append(np.asarray(step(block, jnp.ones((4, h, h, 1)))[..., 0] == 0))
  dropped = np.mean(drops, axis=(0, 1))
  expected = expected_drop_fraction(drop_block_gamma(0.4, 3, 1.0, h, h), 3, h, h)
  assert np.max(np.abs(dropped - expected)) < 0.06


def test_drop_path_keeps_the_expected_output_and_drops_whole_samples():
  layer = model_lib.DropPath(0.3, stream=nnx.Rngs(0)["dropout"])
  x = jnp.asarray(np.random.default_rng(0).standard_normal((4000, 3, 3, 2)))
  out = np.asarray(nnx.jit(lambda m, x: m(x))(layer, x))
  kept = np.all(out != 0, axis=(1, 2, 3))
  assert np.all(np.all(out == 0, axis=(1, 2, 3)) | kept)  # whole samples
  assert abs(np.mean(kept) - 0.7) < 0.03
  np.testing.assert_allclose(out[kept], np.asarray(x)[kept] / np.float32(0.7), rtol=1e-6)
  # E[output] = x: over many draws of one sample, the mean approaches it.
  one = jnp.broadcast_to(x[:1], (20000, 3, 3, 2))
  mean = np.mean(np.asarray(nnx.jit(lambda m, x: m(x))(layer, one)), axis=0)
  np.testing.assert_allclose(mean, np.asarray(x[0]), rtol=0.05, atol=0.02)


BAD = [
  ({"attn_layer": "eca", "se_rd_ratio": 0.25}, "se_rd_ratio applies to attn_layer='se' only"),
  ({"attn_layer": "se", "se_rd_ratio": 0}, r"se_rd_ratio must be a number in \(0, 1\]"),
  ({"drop_path_rate": 1.0}, r"drop_path_rate must be a number in \[0, 1\)"),
  ({"drop_block_rate": -0.1}, r"drop_block_rate must be a number in \[0, 1\)"),
  ({"drop_block_rate": True}, r"drop_block_rate must be a number in \[0, 1\)"),
  ({"drop_block_rate": 0.1, "layers": (1, 1)}, "drop_block_rate acts on the third and fourth"),
  ({"block_widths": ((4, 4, 8),)}, "block_widths must have one entry per stage"),
  ({"block_widths": (((4, 4, 8),), ())}, r"block_widths\[1\] must have 1 blocks"),
  ({"block_widths": (((4, 4),), ((4, 4, 8),))}, r"block_widths\[0\]\[0\] must be 3 ints >= 1"),
  ({"block_widths": (((4, 0, 8),), ((4, 4, 8),))}, r"block_widths\[0\]\[0\] must be 3 ints"),
  (
    {"layers": (1, 2), "block_widths": (((4, 4, 8),), ((4, 4, 8), (4, 4, 9)))},
    r"block_widths\[1\]: every block of a stage must end equally wide",
  ),
  (
    {"groups": 2, "block_widths": (((4, 4, 8),), ((4, 4, 8),))},
    "block_widths needs groups=1",
  ),
]


@pytest.mark.parametrize("options, message", BAD, ids=[m for _, m in BAD])
def test_a_bad_rs_option_is_refused_in_one_line_naming_it(options, message):
  options = {"layers": (1, 1), **options}
  with pytest.raises(ValueError, match=message) as error:
    ResNet("bottleneck", channels=(8, 16)[: len(options["layers"])], **options)
  assert "\n" not in str(error.value)


def test_a_custom_pruned_net_runs_and_round_trips_through_the_inference():
  # A deep stem: a plain one is channels[0] wide, which a pruned file does not tell.
  widths = (((3, 5, 12), (7, 2, 12)), ((9, 4, 20),))
  model = ResNet(
    "bottleneck",
    (2, 1),
    channels=(8, 16),
    stem_type="deep",
    stem_width=8,
    block_widths=widths,
    num_classes=3,
  )
  model.eval()
  assert model(jnp.ones((1, 32, 32, 3))).shape == (1, 3)
  arch, options = infer_architecture(to_torch_state_dict(model))
  assert arch is None and options["block_widths"] == widths


# Training with them.

TRAIN = [
  "synthetic=true",
  "layers=1,1,1,1",
  "channels=8,8,16,16",
  "num_classes=3",
  "dtype=float32",
  "workers=0",
  "global_batch=16",
  "epochs=1",
  "max_steps=2",
  "log_every=1",
  "step_cache=false",
]


def train_command(workdir, *sets) -> subprocess.CompletedProcess:
  args = [sys.executable, "train/train.py", "--config", "cifar10_resnet18", "--workdir", workdir]
  for s in [*TRAIN, *sets]:
    args += ["--set", s]
  environment = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  return subprocess.run(
    args, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=600
  )


def test_a_run_trains_with_drop_path_and_dropblock_and_its_ema(tmp_path):
  done = train_command(
    str(tmp_path / "w"), "drop_path_rate=0.2", "drop_block_rate=0.1", "ema_decay=0.9"
  )
  assert done.returncode == 0, done.stderr[-3000:]
  assert "step 2/2" in done.stdout
  saved = json.loads((tmp_path / "w" / "config.json").read_text())
  assert (saved["drop_path_rate"], saved["drop_block_rate"]) == (0.2, 0.1)


def test_the_run_model_drops_as_configured():
  cfg = config_lib.override(
    config_lib.Config(), [*TRAIN, "drop_path_rate=0.3", "drop_block_rate=0.1"]
  )
  model = run_model(cfg)
  rates = [b.drop_path.rate if b.drop_path else 0.0 for s in model.stages for b in s]
  assert rates == pytest.approx([0.0, 0.1, 0.2, 0.3])
  assert [b.drop_block is not None for s in model.stages for b in s] == [0, 0, 1, 1]
  assert model.layer3[0].drop_block.rate == 0.1
  plain = run_model(config_lib.override(config_lib.Config(), TRAIN))
  assert all(b.drop_path is None and b.drop_block is None for s in plain.stages for b in s)


def test_a_resnest_run_drops_blocks_in_its_split_attention():
  cfg = config_lib.override(
    config_lib.Config(), ["arch=resnest14d", "num_classes=3", "drop_block_rate=0.1"]
  )
  model = nnx.eval_shape(lambda: run_model(cfg))
  drops = [dropblock_of(b) for s in model.stages for b in s]
  assert [d is not None for d in drops] == [0, 0, 1, 1]
  assert model.layer3[0].conv2.drop.rate == 0.1 and model.layer3[0].drop_block is None


@pytest.mark.parametrize(
  "assignment, message",
  [
    ("drop_path_rate=1", "config drop_path_rate=1.0: must be below 1"),
    ("drop_block_rate=-0.5", "config drop_block_rate=-0.5: must be at least 0"),
  ],
)
def test_a_bad_drop_rate_is_one_line_naming_the_field(assignment, message):
  with pytest.raises(ValueError) as error:
    config_lib.override(config_lib.Config(), [assignment])
  assert str(error.value).startswith(message) and "\n" not in str(error.value), error.value


def test_dropblock_on_a_net_of_two_stages_is_refused_naming_both_fields(tmp_path):
  done = train_command(str(tmp_path / "w"), "layers=1,1", "channels=8,16", "drop_block_rate=0.1")
  assert done.returncode == 2, done.stderr[-2000:]
  assert "--set drop_block_rate=0.1" in done.stderr and "--set layers=1,1" in done.stderr
  assert "Traceback" not in done.stderr and done.stderr.count("error:") == 1
  assert not (tmp_path / "w").exists()


def test_the_drop_fields_are_listed_with_their_meaning():
  listing = config_lib.field_listing()
  assert "drop_path_rate: float = 0.0" in listing and "drop_block_rate: float = 0.0" in listing


def test_init_from_a_checkpoint_of_another_se_ratio_or_pruning_is_refused_naming_it():
  rs = json.loads(json.dumps(architecture("resnetrs50").options()))  # as metadata holds it
  check_same_network("ck", ("resnetrs50", {}), (None, rs))
  pruned_net = json.loads(json.dumps(architecture("ecaresnet50d_pruned").options()))
  check_same_network("ck", ("ecaresnet50d_pruned", {}), (None, pruned_net))
  with pytest.raises(ValueError, match="se_rd_ratio=None, this run builds se_rd_ratio=0.25"):
    check_same_network("ck", ("resnetrs50", {}), (None, {**rs, "se_rd_ratio": None}))
  other = {**pruned_net, "block_widths": architecture("ecaresnet101d_pruned").block_widths}
  with pytest.raises(ValueError, match="is a network with block_widths="):
    check_same_network("ck", ("ecaresnet50d_pruned", {}), (None, {**other, "layers": [3, 4, 6, 3]}))
