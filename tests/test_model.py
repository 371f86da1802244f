"""The model family: sizes, cost, shapes, modes, dtypes and argument checks."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import flax_resnet as fr
from flax_resnet.model import BatchNorm, conv_general_dilated, conv_init, max_pool_3x3_s2

PARAMS = {
  "resnet18": 11_689_512,
  "resnet34": 21_797_672,
  "resnet50": 25_557_032,
  "resnet101": 44_549_160,
  "resnet152": 60_192_808,
  "resnext50_32x4d": 25_028_904,
  "resnext101_32x8d": 88_791_336,
  "resnext101_64x4d": 83_455_272,
  "wide_resnet50_2": 68_883_240,
  "wide_resnet101_2": 126_886_696,
}
# torchvision's published "GFLOPS" (multiply-adds at 224x224) for the same weights.
GMACS = {
  "resnet18": 1.81,
  "resnet34": 3.66,
  "resnet50": 4.09,
  "resnet101": 7.80,
  "resnet152": 11.51,
  "resnext50_32x4d": 4.23,
  "resnext101_32x8d": 16.41,
  "resnext101_64x4d": 15.46,
  "wide_resnet50_2": 11.40,
  "wide_resnet101_2": 22.75,
}
ARCHS = list(PARAMS)


@functools.cache
def _abstract(name, options):
  return nnx.eval_shape(lambda: fr.create_model(name, **dict(options)))


def abstract(name, **options):
  """An abstract model (shapes only, nothing allocated), built once per argument set."""
  return _abstract(name, tuple(sorted(options.items())))


def n_params(model):
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def traced_shapes(model, shape):
  """Shapes of the logits and of every feature map, from one abstract trace."""
  graphdef, state = nnx.split(model)

  def run(state, x):
    m = nnx.merge(graphdef, state)
    return m(x), m.features(x)

  logits, feats = jax.eval_shape(run, state, jax.ShapeDtypeStruct(shape, jnp.float32))
  return logits.shape, {k: v.shape for k, v in feats.items()}


def out_shape(model, shape):
  return traced_shapes(model, shape)[0]


def feature_shapes(model, shape):
  return traced_shapes(model, shape)[1]


def test_all_ten_architectures_are_listed():
  assert fr.list_models() == ARCHS


@pytest.mark.parametrize("name", ARCHS)
def test_parameter_count_equals_torchvision(name):
  assert n_params(abstract(name)) == PARAMS[name]


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnext101_64x4d", "wide_resnet50_2"])
@pytest.mark.parametrize("num_classes", [10, 37])
def test_parameter_count_equals_torchvision_for_other_heads(name, num_classes):
  torch = pytest.importorskip("torch", reason="torch is needed to count torchvision's model")
  import torchvision

  with torch.device("meta"):
    reference = getattr(torchvision.models, name)(num_classes=num_classes)
  expected = sum(p.numel() for p in reference.parameters())
  assert n_params(abstract(name, num_classes=num_classes)) == expected


@pytest.mark.parametrize("name", ARCHS)
def test_multiply_adds_equal_torchvision_published_gflops(name):
  assert round(fr.count_macs(abstract(name)) / 1e9, 2) == GMACS[name]


@pytest.mark.parametrize("name", ARCHS)
def test_xla_cost_analysis_is_twice_the_multiply_adds(name):
  # XLA leaves out kernel taps over zero padding, so compare with that count.
  model = abstract(name)
  macs = fr.count_macs(model, count_padding=False)
  assert macs < fr.count_macs(model)
  assert abs(fr.xla_flops(model) / (2 * macs) - 1) <= 0.05


@pytest.mark.parametrize("name", ARCHS)
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("size", [(224, 224), (97, 131), (32, 32)])
def test_output_shape(name, batch, size):
  logits, feats = traced_shapes(abstract(name), (batch, *size, 3))
  assert logits == (batch, 1000)
  for info in abstract(name).feature_info:
    h, w = feats[info.name][1:3]
    assert feats[info.name] == (batch, h, w, info.channels)
    assert (h, w) == tuple(math.ceil(s / info.stride) for s in size)


@pytest.mark.parametrize("name", ARCHS)
def test_every_architecture_builds_and_runs(name):
  model = fr.create_model(name, num_classes=7, rngs=nnx.Rngs(0))
  model.eval()
  logits = model(jnp.ones((1, 32, 32, 3)))
  assert logits.shape == (1, 7) and bool(jnp.all(jnp.isfinite(logits)))


@pytest.mark.parametrize("dilation, stride", [((False, False, True), 16), ((False, True, True), 8)])
def test_dilation_keeps_output_stride(dilation, stride):
  model = abstract("resnet50", replace_stride_with_dilation=dilation)
  assert model.feature_info[-1].stride == stride
  assert feature_shapes(model, (1, 224, 224, 3))["layer4"] == (
    1,
    224 // stride,
    224 // stride,
    2048,
  )


def test_cifar_stem_keeps_32x32_at_layer1():
  model = abstract("resnet18", stem="cifar", num_classes=10)
  feats = feature_shapes(model, (2, 32, 32, 3))
  assert feats["stem"] == feats["layer1"][:3] + (64,) == (2, 32, 32, 64)
  assert feats["layer4"] == (2, 4, 4, 512)
  assert model.conv1.kernel.shape == (3, 3, 3, 64)


@pytest.mark.parametrize(
  "name, width", [("resnet18", 512), ("resnet50", 2048), ("wide_resnet50_2", 2048)]
)
def test_headless_model_returns_pooled_features(name, width):
  model = abstract(name, num_classes=0)
  assert not hasattr(model, "fc")
  assert out_shape(model, (3, 64, 64, 3)) == (3, width)


def test_custom_depths_from_the_generic_config():
  resnet26 = nnx.eval_shape(lambda: fr.ResNet("bottleneck", (2, 2, 2, 2)))
  assert sum(1 for s in resnet26.stages for _ in s) == 8  # 8 blocks * 3 convs + 2 = 26
  assert out_shape(resnet26, (1, 64, 64, 3)) == (1, 1000)
  three = nnx.eval_shape(
    lambda: fr.ResNet("basic", (2, 2, 2), channels=(16, 32, 64), stem="cifar", num_classes=10)
  )
  assert [i.name for i in three.feature_info] == ["stem", "layer1", "layer2", "layer3"]
  assert out_shape(three, (4, 32, 32, 3)) == (4, 10)
  assert feature_shapes(three, (4, 32, 32, 3))["layer3"] == (4, 8, 8, 64)
  custom = nnx.eval_shape(
    lambda: fr.ResNet("bottleneck", (1, 1), channels=(32, 64), expansion=2, num_classes=0)
  )
  assert out_shape(custom, (1, 64, 64, 3)) == (1, 128)


def test_attribute_paths_mirror_torchvision_keys():
  model = abstract("resnet50")
  assert model.layer1[0].downsample[0].kernel.shape == (1, 1, 64, 256)
  assert model.layer2[0].conv2.strides == (2, 2)  # v1.5: stride on the 3x3
  assert model.layer2[0].conv1.strides == (1, 1)
  assert model.layer4[2].bn3.scale.shape == (2048,)
  assert model.fc.kernel.shape == (2048, 1000)


def test_grouped_and_wide_bottleneck_widths():
  assert abstract("resnext50_32x4d").layer1[0].conv2.kernel.shape == (3, 3, 4, 128)
  assert abstract("resnext101_64x4d").layer4[0].conv2.kernel.shape == (3, 3, 32, 2048)
  assert abstract("wide_resnet50_2").layer1[0].conv2.kernel.shape == (3, 3, 128, 128)


def test_initialisation_follows_torchvision():
  model = fr.ResNet18(rngs=nnx.Rngs(3))
  k = np.asarray(model.layer3[0].conv1.kernel[...])  # 3x3, 128 -> 256
  assert abs(k.std() - math.sqrt(2 / (256 * 9))) < 0.02 * math.sqrt(2 / (256 * 9))
  assert abs(k.mean()) < 1e-3
  bound = 1 / math.sqrt(512)
  for leaf in (model.fc.kernel[...], model.fc.bias[...]):
    leaf = np.asarray(leaf)
    assert leaf.min() >= -bound and leaf.max() <= bound and leaf.max() > 0.9 * bound
  assert np.all(np.asarray(model.layer1[0].bn2.scale[...]) == 1)
  assert np.all(np.asarray(model.layer1[0].bn2.bias[...]) == 0)


@pytest.mark.parametrize(
  "shape", [(3, 3, 64, 128), (7, 7, 3, 64), (1, 1, 256, 64), (3, 3, 4, 128)]
)  # the last: a ResNeXt group's kernel
def test_conv_init_draws_kaiming_normal_on_the_host_and_traced_keys_take_jax(shape):
  key = jax.random.key(5)
  drawn = np.asarray(conv_init(key, shape, jnp.float32))
  std = math.sqrt(2 / (shape[0] * shape[1] * shape[3]))  # fan_out, as torch's mode="fan_out"
  assert drawn.shape == shape and drawn.dtype == np.float32
  assert abs(drawn.std() - std) < 0.05 * std and abs(drawn.mean()) < 0.05 * std
  np.testing.assert_array_equal(drawn, conv_init(key, shape, jnp.float32))  # the key decides
  assert not np.array_equal(drawn, conv_init(jax.random.key(6), shape, jnp.float32))
  traced = jax.jit(lambda k: conv_init(k, shape, jnp.float32))(key)
  assert traced.shape == shape and abs(float(jnp.std(traced)) - std) < 0.05 * std


def test_building_a_model_compiles_no_program_per_layer():
  fr.ResNet18(num_classes=3)  # the few shape-independent programs (keys) compile once here
  with jax.log_compiles(True), _count_compiles() as compiled:
    fr.ResNet50(rngs=nnx.Rngs(7))
  assert compiled == [], compiled


class _count_compiles:
  """Collects the names of the programs JAX compiles inside the block."""

  def __enter__(self):
    import logging

    self.names, self.handler = [], logging.Handler()
    self.handler.emit = lambda record: (
      self.names.append(record.getMessage()[:80])
      if record.getMessage().startswith("Compiling")
      else None
    )
    logging.getLogger("jax").addHandler(self.handler)
    return self.names

  def __exit__(self, *exc):
    import logging

    logging.getLogger("jax").removeHandler(self.handler)


@pytest.mark.parametrize("name, last", [("resnet18", "bn2"), ("resnet50", "bn3")])
def test_zero_init_residual_zeroes_the_last_norm_of_each_branch(name, last):
  model = fr.create_model(name, zero_init_residual=True, num_classes=0)
  blocks = [b for stage in model.stages for b in stage]
  assert all(np.all(np.asarray(getattr(b, last).scale[...]) == 0) for b in blocks)
  assert np.all(np.asarray(blocks[0].bn1.scale[...]) == 1)


def test_max_pool_pads_with_minus_infinity():
  x = -jnp.ones((1, 5, 5, 2)) * jnp.arange(1, 26).reshape(1, 5, 5, 1)
  y = max_pool_3x3_s2(x)
  assert y.shape == (1, 3, 3, 2)
  assert float(y[0, 0, 0, 0]) == -1.0  # a zero pad would give 0
  assert float(y[0, 2, 2, 0]) == -19.0  # x[3, 3]: the window over rows and cols 3..5


def test_batchnorm_uses_biased_variance_to_normalise_and_unbiased_for_running_var():
  x = jax.random.normal(jax.random.key(0), (4, 3, 5, 6)) * 2 + 1
  bn = BatchNorm(6)
  y = bn(x)
  xn = np.asarray(x, np.float64).reshape(-1, 6)
  mean, var = xn.mean(0), xn.var(0)
  expected = (np.asarray(x) - mean) / np.sqrt(var + 1e-5)
  np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(bn.mean[...]), 0.1 * mean, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(bn.var[...]), 0.9 + 0.1 * xn.var(0, ddof=1), rtol=1e-5)
  bn.eval()
  before = np.asarray(bn.var[...])
  bn(x)
  np.testing.assert_array_equal(np.asarray(bn.var[...]), before)


def test_batch_groups_normalise_each_group_with_its_own_statistics():
  model = fr.ResNet(
    "basic", (1, 1), channels=(8, 16), stem="cifar", num_classes=3, rngs=nnx.Rngs(0)
  )
  x = jax.random.normal(jax.random.key(2), (6, 8, 8, 3)) * 3 + 1
  alone = [nnx.clone(model) for _ in range(3)]
  model.set_attributes(batch_groups=3, raise_if_not_found=False)
  y = model(x)
  expected = np.concatenate([np.asarray(m(x[2 * i : 2 * i + 2])) for i, m in enumerate(alone)])
  np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-5, atol=1e-5)
  assert np.max(np.abs(np.asarray(nnx.clone(alone[0])(x)) - expected)) > 1e-2  # groups matter
  for got, *each in zip(_stats(model), *map(_stats, alone)):
    np.testing.assert_allclose(got, np.mean(each, axis=0), rtol=1e-5, atol=1e-6)


def test_batch_not_divisible_by_batch_groups_is_rejected():
  bn = BatchNorm(4)
  bn.batch_groups = 3
  with pytest.raises(ValueError, match="batch 4 is not divisible by batch_groups 3"):
    bn(jnp.ones((4, 2, 2, 4)))


def _stats(model):
  return [np.asarray(v) for v in jax.tree.leaves(nnx.state(model, nnx.BatchStat))]


def test_jitted_eval_leaves_statistics_and_train_step_updates_them():
  model = fr.ResNet18(num_classes=5, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
  labels = jnp.array([0, 1, 2, 3])
  before = _stats(model)

  @nnx.jit
  def predict(m, x):
    return m(x)

  model.eval()
  first = predict(model, x)
  assert all(np.array_equal(a, b) for a, b in zip(before, _stats(model)))
  np.testing.assert_array_equal(np.asarray(first), np.asarray(predict(model, x)))

  @nnx.jit
  def grad_step(m, x, y):
    def loss_fn(m):
      logits = m(x)
      return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))

    return nnx.value_and_grad(loss_fn)(m)

  model.train()
  loss, grads = grad_step(model, x, labels)
  assert np.isfinite(float(loss))
  assert all(bool(jnp.any(g != 0)) for g in jax.tree.leaves(grads))
  after = _stats(model)
  assert all(not np.array_equal(a, b) for a, b in zip(before, after))


def test_dropout_is_active_only_in_train_mode():
  model = fr.ResNet18(num_classes=5, dropout=0.5, rngs=nnx.Rngs(0))
  plain = fr.ResNet18(num_classes=5, rngs=nnx.Rngs(1))
  nnx.update(plain, *nnx.state(model, nnx.Param, nnx.BatchStat))
  x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  model.eval(), plain.eval()
  np.testing.assert_array_equal(np.asarray(model(x)), np.asarray(plain(x)))
  model.train(), plain.train()
  assert not np.allclose(np.asarray(model(x)), np.asarray(model(x)))
  np.testing.assert_array_equal(np.asarray(plain(x)), np.asarray(plain(x)))


def test_branch_dropout_drops_whole_channels():
  block = fr.ResNet18(dropout=0.5).layer1[0]
  out = np.asarray(block.dropout(jnp.ones((4, 5, 5, 64))))
  per_channel = out.reshape(4, 25, 64)
  assert np.all(per_channel == per_channel[:, :1, :])
  assert set(np.unique(out)) == {0.0, 2.0}


def test_bfloat16_compute_keeps_float32_params_and_statistics():
  model = fr.ResNet18(num_classes=5, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
  logits = nnx.jit(lambda m, x: m(x))(model, jnp.ones((2, 32, 32, 3)))
  assert logits.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(logits)))
  assert {x.dtype for x in jax.tree.leaves(nnx.state(model, nnx.Param))} == {jnp.dtype(jnp.float32)}
  stats = jax.tree.leaves(nnx.state(model, nnx.BatchStat))
  assert {x.dtype for x in stats} == {jnp.dtype(jnp.float32)}
  assert any(float(jnp.abs(s).sum()) not in (0.0, float(s.size)) for s in stats)  # updated


def test_float64_params_keep_float64_statistics():
  with jax.enable_x64(True):
    model = fr.ResNet18(num_classes=2, param_dtype=jnp.float64, norm="batch")
    model(jnp.ones((2, 32, 32, 3), jnp.float64))
    assert {x.dtype for x in jax.tree.leaves(nnx.state(model, nnx.BatchStat))} == {
      jnp.dtype(jnp.float64)
    }


def test_frozen_batchnorm_trains_nothing_and_ignores_train_mode():
  model = fr.ResNet18(num_classes=5, norm="frozen_batch", rngs=nnx.Rngs(0))
  convs_and_fc = 11_689_512 - 9600 - 512 * 1000 - 1000 + 512 * 5 + 5  # minus BN affine
  assert n_params(model) == convs_and_fc
  x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  before = _stats(model)
  train_out = model(x)
  model.eval()
  np.testing.assert_array_equal(np.asarray(train_out), np.asarray(model(x)))
  assert all(np.array_equal(a, b) for a, b in zip(before, _stats(model)))


def test_group_norm_variant_runs():
  model = fr.ResNet50(num_classes=3, norm="group", rngs=nnx.Rngs(0))
  assert type(model.bn1).__name__ == "GroupNorm" and model.bn1.num_groups == 32
  assert not nnx.state(model, nnx.BatchStat)
  assert model(jnp.ones((1, 32, 32, 3))).shape == (1, 3)


def test_in_channels_changes_the_stem():
  model = abstract("resnet18", in_channels=1)
  assert model.conv1.kernel.shape == (7, 7, 1, 64)
  assert out_shape(model, (2, 64, 64, 1)) == (2, 1000)


def test_nchw_input_is_rejected_with_the_shape():
  model = fr.ResNet18(num_classes=2)
  with pytest.raises(ValueError, match=r"NHWC.*\(1, 3, 32, 32\)"):
    model(jnp.ones((1, 3, 32, 32)))


BAD_ARGS = [
  ("unknown name", lambda: fr.create_model("resnet51"), "resnet51.*resnet18.*wide_resnet101_2"),
  ("groups on basic", lambda: fr.create_model("resnet18", groups=32), "groups"),
  ("groups via ResNet", lambda: fr.ResNet("basic", (2, 2, 2, 2), groups=2), "groups"),
  (
    "width on basic",
    lambda: fr.ResNet("basic", (2, 2, 2, 2), width_per_group=32),
    "width_per_group",
  ),
  (
    "dilation on basic",
    lambda: fr.create_model("resnet34", replace_stride_with_dilation=(False, True, True)),
    "replace_stride_with_dilation",
  ),
  (
    "dilation length",
    lambda: fr.create_model("resnet50", replace_stride_with_dilation=(False, True)),
    "replace_stride_with_dilation",
  ),
  ("negative classes", lambda: fr.create_model("resnet18", num_classes=-1), "num_classes"),
  ("zero channels", lambda: fr.create_model("resnet18", in_channels=0), "in_channels"),
  (
    "stage list",
    lambda: fr.ResNet("bottleneck", (3, 4, 6, 3), channels=(64, 128, 256)),
    "channels",
  ),
  ("empty layers", lambda: fr.ResNet("bottleneck", ()), "layers"),
  ("unknown norm", lambda: fr.create_model("resnet18", norm="layer"), "norm.*'batch'"),
  ("unknown stem", lambda: fr.create_model("resnet18", stem="deep"), "stem.*'imagenet'"),
  ("unknown block", lambda: fr.ResNet("preact", (2, 2)), "block"),
  ("dropout one", lambda: fr.create_model("resnet18", dropout=1.0), "dropout"),
  ("dropout negative", lambda: fr.create_model("resnet18", dropout=-0.1), "dropout"),
  ("fixed option", lambda: fr.create_model("resnet50", layers=(1, 1, 1, 1)), "layers"),
]


@pytest.mark.parametrize("build, message", [b[1:] for b in BAD_ARGS], ids=[b[0] for b in BAD_ARGS])
def test_bad_arguments_raise_value_error_naming_the_argument(build, message):
  with pytest.raises(ValueError, match=message):
    build()


@pytest.mark.parametrize("stride", [1, 2])
def test_pointwise_conv_as_matmul_equals_lax_conv_with_gradients(stride):
  def loss(conv, x, w):
    dn = jax.lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))
    y = conv(x, w, (stride, stride), ((0, 0), (0, 0)), dimension_numbers=dn)
    return jnp.sum(jnp.sin(y))

  with jax.enable_x64(True):
    kx, kw = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (2, 7, 7, 16), jnp.float64)
    w = jax.random.normal(kw, (1, 1, 16, 8), jnp.float64)
    ours = jax.value_and_grad(functools.partial(loss, conv_general_dilated), (0, 1))(x, w)
    ref = jax.value_and_grad(functools.partial(loss, jax.lax.conv_general_dilated), (0, 1))(x, w)
  assert ours[1][0].shape == x.shape and ours[1][1].shape == w.shape
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_pointwise_convs_lower_to_matmuls_on_cpu_and_the_rest_stay_convolutions():
  model = fr.create_model("resnet50", num_classes=10)
  model.eval()
  jaxpr = str(jax.make_jaxpr(lambda x: model(x))(jnp.zeros((1, 32, 32, 3))))
  # 53 convs: 17 of them 3x3 or 7x7 (stem + 16 blocks), 36 1x1 (32 in blocks, 4 downsamples)
  assert jaxpr.count("conv_general_dilated[") == 17
  assert jaxpr.count("dot_general[") == 36 + 1  # + fc


def test_a_folded_model_keeps_the_mode_and_weights_of_its_original():
  model = fr.ResNet18(num_classes=10)
  before = jax.tree.map(np.asarray, nnx.state(model))
  folded = fr.fold_batchnorm(model)
  assert not model.bn1.use_running_average, "the original stays in train mode"
  jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.asarray, nnx.state(model)))
  params = [path for path, _ in nnx.to_flat_state(nnx.state(folded, nnx.Param))]
  assert params and not [p for p in params if any(str(k).startswith("bn") for k in p)]


def test_bfloat16_folded_model_matches_the_unfolded_one():
  model = fr.ResNet18(num_classes=10, dtype=jnp.bfloat16)
  model.eval()
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 64, 64, 3)), jnp.float32)
  ours, folded = model(x), fr.fold_batchnorm(model)(x)
  assert folded.dtype == jnp.bfloat16
  np.testing.assert_allclose(
    np.asarray(folded, np.float32),
    np.asarray(ours, np.float32),
    atol=0.05 * float(jnp.max(jnp.abs(ours))),
  )


def test_group_norm_models_cannot_be_folded():
  with pytest.raises(ValueError, match="bn1 is GroupNorm, not a BatchNorm"):
    fr.fold_batchnorm(fr.ResNet18(norm="group"))


def test_a_folded_model_cannot_be_saved(tmp_path):
  folded = fr.fold_batchnorm(fr.ResNet18())
  with pytest.raises(ValueError, match="folded"):
    fr.save(folded, tmp_path / "ckpt", {"arch": "resnet18", "options": {}})
  assert not (tmp_path / "ckpt").exists()


@pytest.mark.parametrize("groups", [1, 2])
def test_fused_batchnorm_backward_equals_autodiff_in_float64(groups):
  from flax_resnet.model import _batch_norm_train

  rng = np.random.default_rng(groups)
  with jax.enable_x64(True):
    x = jnp.asarray(rng.standard_normal((8, 5, 6, 7)) * 3 + 2)
    args = (
      x,
      jnp.asarray(rng.uniform(0.5, 1.5, 7)),
      jnp.asarray(rng.standard_normal(7)),
      jnp.zeros(7),
      jnp.ones(7),
    )
    # Cotangents on the running statistics too: the hand-written rule must not drop them.
    cotangents = (
      jnp.asarray(rng.standard_normal(x.shape)),
      jnp.asarray(rng.standard_normal(7)),
      jnp.asarray(rng.standard_normal(7)),
    )
    results = []
    for backward in ("autodiff", "fused"):
      out, vjp = jax.vjp(
        functools.partial(
          _batch_norm_train,
          momentum=0.9,
          epsilon=1e-5,
          groups=groups,
          dtype=None,
          backward=backward,
        ),
        *args,
      )
      results.append((out, vjp(cotangents)))
  for a, b in zip(*[jax.tree.map(np.asarray, jax.tree.leaves(r)) for r in results]):
    assert a.dtype == np.float64 and np.max(np.abs(a - b)) <= 1e-13 * np.max(np.abs(a))


def test_one_pass_variance_loses_digits_only_when_the_mean_dwarfs_the_std():
  rng = np.random.default_rng(0)
  errors = {}
  for offset in (0.0, 1000.0):
    x = rng.standard_normal((1, 64, 8, 8, 4)) + offset
    exact = x.var(axis=(1, 2, 3), keepdims=True)
    for moments in ("two_pass", "one_pass"):
      _, var = fr.model._batch_moments(jnp.asarray(x, jnp.float32), jnp.float32, moments)
      errors[offset, moments] = float(np.max(np.abs(np.asarray(var) - exact) / exact))
  assert errors[0.0, "one_pass"] < 1e-5 and errors[0.0, "two_pass"] < 1e-5
  assert errors[1000.0, "two_pass"] < 1e-5 < 1e-2 < errors[1000.0, "one_pass"]


def test_an_unknown_batchnorm_option_names_itself():
  model = fr.ResNet18(num_classes=10)
  model.set_attributes(backward="cudnn", raise_if_not_found=False)
  with pytest.raises(ValueError, match="BatchNorm backward must be one of .*'cudnn'"):
    model(jnp.ones((2, 32, 32, 3)))


def test_nnx_tabulate_summarises_a_resnet_with_torchvisions_parameter_count():
  # nnx.tabulate tabulates every public method's output; one returning modules crashed it.
  summary = nnx.tabulate(fr.ResNet18(), jnp.ones((1, 32, 32, 3)), depth=1)
  assert "11,689,512" in summary  # sum(p.numel() for p in torchvision's resnet18.parameters())
  assert "layer4" in summary and "fc" in summary


def test_reset_classifier_gives_a_fresh_head_or_none_and_keeps_the_backbone():
  model = fr.ResNet18(num_classes=7)
  model.eval()
  x = jnp.ones((2, 32, 32, 3))
  pooled = jnp.mean(model.features(x)["layer4"], axis=(1, 2))
  model.reset_classifier(10, rngs=nnx.Rngs(1))
  assert model(x).shape == (2, 10) and model.num_classes == 10
  bound = 1 / math.sqrt(512)  # torch.nn.Linear's U(-1/sqrt(fan_in), 1/sqrt(fan_in))
  assert float(jnp.abs(model.fc.kernel[...]).max()) <= bound
  model.reset_classifier(0)
  assert not hasattr(model, "fc") and np.array_equal(model(x), pooled)
  with pytest.raises(ValueError, match="num_classes must be an int >= 0"):
    model.reset_classifier(-1)


def test_a_saved_model_loads_with_its_own_rng_streams(tmp_path):
  fr.save(
    fr.ResNet18(num_classes=3), tmp_path / "ck", {"arch": "resnet18", "options": {"num_classes": 3}}
  )
  model, _ = fr.load(tmp_path / "ck", rngs=nnx.Rngs(0), dropout=0.1)  # once a trace error
  assert model.num_classes == 3 and model.layer1[0].dropout.rate == 0.1


def test_abstract_construction_converts_no_tracer_to_numpy(monkeypatch):
  # A tracer's conversion error describes its origin by walking everything traced so far:
  # one per kernel made a deep net's abstract construction quadratic (resnetrs420: 110 s).
  raised = []
  init = jax.errors.TracerArrayConversionError.__init__
  monkeypatch.setattr(
    jax.errors.TracerArrayConversionError,
    "__init__",
    lambda self, tracer: raised.append(tracer) or init(self, tracer),
  )
  nnx.eval_shape(lambda: fr.create_model("resnet50d"))
  assert raised == []
