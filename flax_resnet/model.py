"""torchvision's ResNet family in Flax NNX, numerically equal to torchvision.

Attribute paths mirror torchvision's state-dict keys (``layer1[0].conv2``,
``layer2[0].downsample[1]``, ``fc``), inputs are NHWC, and every padding is
explicit and equal to torchvision's. The file reads in build order: norms, blocks,
then the network.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from flax_resnet.choices import BACKWARDS, DEFAULT_CHANNELS, MOMENTS, NORMS, REMATS, STEMS

Dtype = Any


# torchvision initialises convs with kaiming_normal_(mode="fan_out", nonlinearity="relu").
_kaiming_normal_fan_out = jax.nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _host_rng(key: jax.Array) -> np.random.Generator | None:
  """numpy's generator seeded by a concrete JAX key (the same key, the same numbers on
  every host), or None for a traced key (abstract construction: shapes only)."""
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.key_data(key)
  try:
    seed = np.asarray(key, np.uint32)
  except jax.errors.TracerArrayConversionError:
    return None
  return np.random.default_rng(seed.ravel().tolist())


def _filled(n: int, value: float, dtype) -> jax.Array:
  # From numpy: jnp.ones would compile a program for each of the net's channel counts.
  return jax.device_put(np.full((n,), value, np.dtype(dtype)))


def _draw_dtype(dtype) -> np.dtype:
  return np.dtype(np.float64 if np.dtype(dtype) == np.float64 else np.float32)


def conv_init(key: jax.Array, shape: tuple[int, ...], dtype: Dtype = jnp.float32) -> jax.Array:
  """torchvision's conv initialisation of an HWIO kernel: normal, std sqrt(2 / fan_out).

  Drawn on the host with numpy, seeded by ``key``: ``jax.random`` compiles one XLA
  program per kernel shape, 3-4 s of a cold ResNet-50 construction on a CPU, where
  numpy takes milliseconds (BENCHMARKS.md). A traced key (``nnx.eval_shape``,
  ``nnx.jit``) takes the ``jax.random`` path of the same distribution.
  """
  rng = _host_rng(key)
  if rng is None:
    return _kaiming_normal_fan_out(key, shape, dtype)
  h, w, _, cout = shape
  x = rng.standard_normal(shape, dtype=_draw_dtype(dtype)) * np.sqrt(2.0 / (h * w * cout))
  return _to_device(x, dtype)


def linear_init(key: jax.Array, shape: tuple[int, ...], dtype: Dtype = jnp.float32) -> jax.Array:
  """torch.nn.Linear's kernel initialisation, kaiming_uniform_(a=sqrt(5)), that is
  U(+-1/sqrt(fan_in)); on the host as ``conv_init``."""
  return _uniform(key, shape, dtype, 1.0 / math.sqrt(shape[0]))


def _linear_bias_init(fan_in: int):
  return lambda key, shape, dtype: _uniform(key, shape, dtype, 1.0 / math.sqrt(fan_in))


def _uniform(key, shape, dtype, bound: float) -> jax.Array:
  rng = _host_rng(key)
  if rng is None:
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  x = rng.random(shape, dtype=_draw_dtype(dtype)) * (2 * bound) - bound
  return _to_device(x, dtype)


def _to_device(x: np.ndarray, dtype) -> jax.Array:
  # Cast by numpy: jnp.asarray(x, dtype) compiles a conversion for every kernel shape.
  return jax.device_put(x.astype(np.dtype(dtype), copy=False))


class BatchNorm(nnx.Module):
  """BatchNorm over the channel (last) axis with PyTorch's semantics.

  Normalises with the biased batch variance but updates ``var`` with the unbiased
  one, as ``torch.nn.BatchNorm2d`` does; NNX's BatchNorm uses the biased one for
  both. ``momentum`` follows the NNX convention (weight of the old statistics):
  0.9 here is torch's 0.1. Statistics are computed and kept in float32 (float64
  with a float64 ``param_dtype``), whatever the compute ``dtype``.

  ``batch_groups`` > 1 splits the batch into that many equal consecutive groups
  and normalises each with its own statistics, as PyTorch DDP does per GPU; the
  running statistics move towards the groups' average. With the batch sharded
  over that many devices each group is one device's shard, so no statistic
  crosses devices. Set it on a whole model with
  ``model.set_attributes(batch_groups=n, raise_if_not_found=False)``.

  Two speed options, set the same way, change how batch statistics are computed
  in training (eval mode is unaffected):

  - ``moments="one_pass"``: mean and E[x^2] in one pass over the activations, the
    variance as their difference, instead of the exact default ``"two_pass"``
    (mean, then the mean squared deviation). In float32 the difference cancels
    digits when ``|mean| >> std``; BENCHMARKS.md has the error measured against
    float64.
  - ``backward="fused"``: the gradient by hand (two reductions and one elementwise
    pass, as cuDNN's BatchNorm backward) instead of ``"autodiff"`` of the forward
    formula. The same function: equal to autodiff to 1e-12 in float64.
  """

  def __init__(
    self,
    num_features: int,
    *,
    momentum: float = 0.9,
    epsilon: float = 1e-5,
    use_running_average: bool = False,
    dtype: Dtype = None,
    param_dtype: Dtype = jnp.float32,
    rngs: nnx.Rngs | None = None,
  ):
    del rngs  # no random initialisation; accepted for a uniform norm signature
    stat_dtype = jnp.promote_types(jnp.float32, param_dtype)
    self.scale = nnx.Param(_filled(num_features, 1, param_dtype))
    self.bias = nnx.Param(_filled(num_features, 0, param_dtype))
    self.mean = nnx.BatchStat(_filled(num_features, 0, stat_dtype))
    self.var = nnx.BatchStat(_filled(num_features, 1, stat_dtype))
    self.momentum, self.epsilon = momentum, epsilon
    self.use_running_average = use_running_average
    self.dtype = dtype
    self.batch_groups = 1
    self.moments, self.backward = "two_pass", "autodiff"

  def __call__(self, x: jax.Array) -> jax.Array:
    if self.use_running_average:
      return _affine(
        x, self.mean[...], self.var[...], self.scale[...], self.bias[...], self.epsilon, self.dtype
      )
    _choice("BatchNorm moments", self.moments, MOMENTS)
    _choice("BatchNorm backward", self.backward, BACKWARDS)
    out, mean, var = _batch_norm_train(
      x,
      self.scale[...],
      self.bias[...],
      self.mean[...],
      self.var[...],
      momentum=self.momentum,
      epsilon=self.epsilon,
      groups=self.batch_groups,
      dtype=self.dtype,
      moments=self.moments,
      backward=self.backward,
    )
    # set_value, not `[...] =`: flax then reads the tracer's sharding, whose error
    # path walks the whole traced program; ResNet-152 traced 25x slower that way.
    self.mean.set_value(mean)
    self.var.set_value(var)
    return out


@functools.partial(
  jax.jit, static_argnames=("momentum", "epsilon", "groups", "dtype", "moments", "backward")
)
def _batch_norm_train(
  x,
  scale,
  bias,
  running_mean,
  running_var,
  *,
  momentum,
  epsilon,
  groups,
  dtype,
  moments="two_pass",
  backward="autodiff",
):
  """BatchNorm with batch statistics: the output and the updated running statistics.

  Jitted so that the train step traces and differentiates it once per shape, not
  once per layer: the 53 of a ResNet-50 come in 12 shapes.
  """
  if x.shape[0] % groups:
    raise ValueError(f"BatchNorm: batch {x.shape[0]} is not divisible by batch_groups {groups}")
  xg = x.reshape(groups, x.shape[0] // groups, *x.shape[1:])
  normalize = _normalize_fused if backward == "fused" else _normalize
  out, mean, var = normalize(xg, scale, bias, epsilon, moments, dtype or x.dtype)
  n = x.size // (groups * x.shape[-1])  # elements per group and channel
  unbiased = var * (n / max(n - 1, 1))
  m, axes = momentum, tuple(range(mean.ndim - 1))
  new_mean = m * running_mean + (1 - m) * jnp.mean(mean, axes)
  new_var = m * running_var + (1 - m) * jnp.mean(unbiased, axes)
  return out.reshape(x.shape), new_mean, new_var


def _normalize(xg, scale, bias, epsilon, moments, out_dtype):
  """(normalised xg in ``out_dtype``, per-group mean, biased variance); statistics in
  float32, or float64 for float64 parameters."""
  f = jnp.promote_types(jnp.float32, scale.dtype)
  mean, var = _batch_moments(xg, f, moments)
  # Centre before scaling: the folded x * a + b form differentiates through
  # mean * a, which cancels catastrophically when |mean| >> std (1% gradient error).
  a = scale.astype(f) * jax.lax.rsqrt(var + epsilon)
  out = (xg.astype(f) - mean) * a + bias.astype(f)
  return out.astype(out_dtype), mean, var


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _normalize_fused(xg, scale, bias, epsilon, moments, out_dtype):
  return _normalize(xg, scale, bias, epsilon, moments, out_dtype)


def _normalize_fused_fwd(xg, scale, bias, epsilon, moments, out_dtype):
  out, mean, var = _normalize(xg, scale, bias, epsilon, moments, out_dtype)
  return (out, mean, var), (xg, scale, bias, mean, var)


def _normalize_fused_bwd(epsilon, moments, out_dtype, residuals, cotangents):
  """The BatchNorm backward: per-group sums of g and g * xhat, then one pass for dx.

  dx = a * (g - mean(g) - xhat * mean(g * xhat)), a = scale / std, plus the
  terms of the batch mean's and variance's own cotangents (zero in a train step,
  where they feed only the running statistics, and then folded away by XLA).
  """
  del moments  # both forms compute the same function
  xg, scale, bias, mean, var = residuals
  g, g_mean, g_var = cotangents
  f = mean.dtype
  axes = tuple(range(1, xg.ndim - 1))
  n = math.prod(xg.shape[i] for i in axes)
  rstd = jax.lax.rsqrt(var + epsilon)
  centred = xg.astype(f) - mean
  xhat, g = centred * rstd, g.astype(f)
  sum_g = jnp.sum(g, axes, keepdims=True)
  sum_gx = jnp.sum(g * xhat, axes, keepdims=True)
  a = scale.astype(f) * rstd
  dx = a * (g - sum_g / n - xhat * (sum_gx / n)) + g_mean / n + g_var * (2.0 / n) * centred
  reduce = tuple(range(xg.ndim - 1))  # groups too: scale and bias are shared
  d_scale = jnp.sum(sum_gx, reduce).astype(scale.dtype)
  d_bias = jnp.sum(sum_g, reduce).astype(bias.dtype)
  return dx.astype(xg.dtype), d_scale, d_bias


_normalize_fused.defvjp(_normalize_fused_fwd, _normalize_fused_bwd)


class FrozenBatchNorm(nnx.Module):
  """BatchNorm that always uses its running statistics and trains nothing.

  Like torchvision's ``FrozenBatchNorm2d``: all four tensors are statistics
  (``nnx.BatchStat``), so optimisers over ``nnx.Param`` leave them alone. For
  fine-tuning with batches too small for reliable batch statistics.
  """

  def __init__(
    self,
    num_features: int,
    *,
    epsilon: float = 1e-5,
    dtype: Dtype = None,
    param_dtype: Dtype = jnp.float32,
    rngs: nnx.Rngs | None = None,
  ):
    del rngs  # no random initialisation; accepted for a uniform norm signature
    stat_dtype = jnp.promote_types(jnp.float32, param_dtype)
    self.scale = nnx.BatchStat(_filled(num_features, 1, stat_dtype))
    self.bias = nnx.BatchStat(_filled(num_features, 0, stat_dtype))
    self.mean = nnx.BatchStat(_filled(num_features, 0, stat_dtype))
    self.var = nnx.BatchStat(_filled(num_features, 1, stat_dtype))
    self.epsilon, self.dtype = epsilon, dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    return _affine(
      x, self.mean[...], self.var[...], self.scale[...], self.bias[...], self.epsilon, self.dtype
    )


def _batch_moments(
  x: jax.Array, dtype: Dtype, moments: str = "two_pass"
) -> tuple[jax.Array, jax.Array]:
  """Per-group mean and biased variance of ``x`` (groups, n, ..., C), in ``dtype``.

  Both keep the reduced axes, shaped (groups, 1, ..., 1, C), to broadcast against ``x``.
  ``"two_pass"`` centres before squaring; ``"one_pass"`` reads ``x`` once for the mean
  and the mean square and clamps their difference at zero.
  """
  x = x.astype(dtype)
  axes = tuple(range(1, x.ndim - 1))
  mean = jnp.mean(x, axes, keepdims=True)
  if moments == "one_pass":
    return mean, jnp.maximum(jnp.mean(jnp.square(x), axes, keepdims=True) - jnp.square(mean), 0)
  return mean, jnp.mean(jnp.square(x - mean), axes, keepdims=True)


def _affine(x, mean, var, scale, bias, epsilon, dtype):
  # With fixed statistics, one multiply-add per element, as torch's CPU kernel does.
  a = scale.astype(var.dtype) * jax.lax.rsqrt(var + epsilon)
  b = bias.astype(var.dtype) - mean * a
  dtype = dtype or x.dtype
  return x.astype(dtype) * a.astype(dtype) + b.astype(dtype)


def make_norm(
  norm: str,
  num_features: int,
  *,
  groups: int = 32,
  dtype: Dtype = None,
  param_dtype: Dtype = jnp.float32,
  rngs: nnx.Rngs,
) -> nnx.Module:
  """Builds the norm layer named by ``norm`` (one of ``NORMS``)."""
  if norm == "batch":
    return BatchNorm(num_features, dtype=dtype, param_dtype=param_dtype)
  if norm == "frozen_batch":
    return FrozenBatchNorm(num_features, dtype=dtype, param_dtype=param_dtype)
  if norm == "group":
    return nnx.GroupNorm(
      num_features,
      num_groups=groups,
      epsilon=1e-5,
      use_fast_variance=False,
      dtype=dtype,
      param_dtype=param_dtype,
      rngs=rngs,
    )
  raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


def make_head(
  num_features: int,
  num_classes: int,
  *,
  dtype: Dtype = None,
  param_dtype: Dtype = jnp.float32,
  rngs: nnx.Rngs,
) -> nnx.Linear:
  """The classifier ``fc``, initialised as torch.nn.Linear."""
  return nnx.Linear(
    num_features,
    num_classes,
    kernel_init=linear_init,
    bias_init=_linear_bias_init(num_features),
    dtype=dtype,
    param_dtype=param_dtype,
    rngs=rngs,
  )


_NHWC = tuple(jax.lax.conv_dimension_numbers((1,) * 4, (1,) * 4, ("NHWC", "HWIO", "NHWC")))


def conv_general_dilated(
  lhs: jax.Array,
  rhs: jax.Array,
  window_strides,
  padding,
  lhs_dilation=None,
  rhs_dilation=None,
  dimension_numbers=None,
  feature_group_count: int = 1,
  precision=None,
  **kwargs,
) -> jax.Array:
  """``jax.lax.conv_general_dilated`` that runs NHWC 1x1 convolutions as matrix products on CPU.

  XLA:CPU computes a 1x1 convolution's kernel gradient 5-15x slower than the equal
  matrix product (BENCHMARKS.md), and ResNet-50 has 36 of them. Other backends and
  every other convolution take the lax path.
  """
  if (
    jax.default_backend() == "cpu"
    and rhs.shape[:2] == (1, 1)
    and feature_group_count == 1
    and all(tuple(p) == (0, 0) for p in padding)
    and set(lhs_dilation or (1,)) == {1}
    and kwargs.get("out_sharding") is None
    and dimension_numbers is not None
    and tuple(dimension_numbers) == _NHWC
  ):
    return _pointwise(lhs, rhs, window_strides, precision, kwargs.get("preferred_element_type"))
  return jax.lax.conv_general_dilated(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation,
    rhs_dilation,
    dimension_numbers,
    feature_group_count,
    precision=precision,
    **kwargs,
  )


def _pointwise(x, kernel, strides, precision, preferred_element_type):
  if tuple(strides) != (1, 1):
    x = jax.lax.slice(x, (0, 0, 0, 0), x.shape, (1, *strides, 1))
  n, h, w, c = x.shape
  # A 2-D product: XLA:CPU's gradient of the 4-D dot_general is 2-5x slower.
  y = jnp.matmul(
    x.reshape(n * h * w, c),
    kernel.reshape(c, -1),
    precision=precision,
    preferred_element_type=preferred_element_type,
  )
  return y.reshape(n, h, w, -1)


class Layers(NamedTuple):
  """What every conv and norm of a network shares: norm kind, dtypes, rngs."""

  norm: str
  norm_groups: int
  dtype: Dtype
  param_dtype: Dtype
  rngs: nnx.Rngs

  def conv(
    self,
    cin: int,
    cout: int,
    k: int,
    stride: int = 1,
    *,
    padding: int = 0,
    dilation: int = 1,
    groups: int = 1,
  ) -> nnx.Conv:
    return nnx.Conv(
      cin,
      cout,
      (k, k),
      (stride, stride),
      padding=((padding, padding),) * 2,
      kernel_dilation=(dilation, dilation),
      feature_group_count=groups,
      use_bias=False,
      kernel_init=conv_init,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      conv_general_dilated=conv_general_dilated,
      rngs=self.rngs,
    )

  def bn(self, num_features: int) -> nnx.Module:
    return make_norm(
      self.norm,
      num_features,
      groups=self.norm_groups,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      rngs=self.rngs,
    )


class Downsample(nnx.List):
  """The projection shortcut, ``downsample[0]`` (1x1 conv) and ``downsample[1]`` (norm)."""

  def __init__(self, make: Layers, cin: int, cout: int, stride: int):
    super().__init__([make.conv(cin, cout, 1, stride), make.bn(cout)])

  def __call__(self, x: jax.Array) -> jax.Array:
    return self[1](self[0](x))


class BasicBlock(nnx.Module):
  """Two 3x3 convs with a residual connection (ResNet-18/34)."""

  expansion = 1

  def __init__(
    self,
    make: Layers,
    inplanes: int,
    planes: int,
    stride: int = 1,
    downsample: nnx.Module | None = None,
    groups: int = 1,
    base_width: int = 64,
    dilation: int = 1,
    dropout: float = 0.0,
    expansion: int | None = None,
  ):
    del groups, base_width  # validated by ResNet: a BasicBlock has neither
    out = planes * (expansion or self.expansion)
    self.conv1 = make.conv(inplanes, planes, 3, stride, padding=dilation, dilation=dilation)
    self.bn1 = make.bn(planes)
    self.conv2 = make.conv(planes, out, 3, padding=dilation, dilation=dilation)
    self.bn2 = make.bn(out)
    self.downsample = downsample
    self.dropout = _branch_dropout(dropout, make.rngs)

  @property
  def residual_norms(self) -> tuple[nnx.Module, ...]:
    """The residual branch's last norm (a property: see ``ResNet.stages``)."""
    return (self.bn2,)

  def __call__(self, x: jax.Array) -> jax.Array:
    out = nnx.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    return _merge(self, x, out)


class Bottleneck(nnx.Module):
  """1x1 reduce, 3x3, 1x1 expand (ResNet-50 and deeper, ResNeXt, Wide ResNet).

  This is ResNet v1.5: the stride sits on the 3x3 conv rather than the first 1x1,
  which sees every input pixel that way and gains about 0.5% top-1 on ImageNet.
  """

  expansion = 4

  def __init__(
    self,
    make: Layers,
    inplanes: int,
    planes: int,
    stride: int = 1,
    downsample: nnx.Module | None = None,
    groups: int = 1,
    base_width: int = 64,
    dilation: int = 1,
    dropout: float = 0.0,
    expansion: int | None = None,
  ):
    width = int(planes * (base_width / 64.0)) * groups
    out = planes * (expansion or self.expansion)
    self.conv1 = make.conv(inplanes, width, 1)
    self.bn1 = make.bn(width)
    self.conv2 = make.conv(
      width, width, 3, stride, padding=dilation, dilation=dilation, groups=groups
    )
    self.bn2 = make.bn(width)
    self.conv3 = make.conv(width, out, 1)
    self.bn3 = make.bn(out)
    self.downsample = downsample
    self.dropout = _branch_dropout(dropout, make.rngs)

  @property
  def residual_norms(self) -> tuple[nnx.Module, ...]:
    """The residual branch's last norm (a property: see ``ResNet.stages``)."""
    return (self.bn3,)

  def __call__(self, x: jax.Array) -> jax.Array:
    out = nnx.relu(self.bn1(self.conv1(x)))
    out = nnx.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    return _merge(self, x, out)


def _branch_dropout(rate: float, rngs: nnx.Rngs) -> nnx.Dropout | None:
  # broadcast over H and W: whole channels are dropped, as nn.Dropout2d does.
  return nnx.Dropout(rate, broadcast_dims=(1, 2), rngs=rngs) if rate > 0 else None


def _merge(block, x: jax.Array, out: jax.Array) -> jax.Array:
  if block.dropout is not None:
    out = block.dropout(out)
  identity = x if block.downsample is None else block.downsample(x)
  return nnx.relu(out + identity)


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


class FeatureInfo(NamedTuple):
  """One feature map of ``ResNet.features``: its name, channel count and stride."""

  name: str
  channels: int
  stride: int


class ResNet(nnx.Module):
  """The ResNet family, with torchvision's constructor options and defaults.

  Args:
    block: ``BasicBlock``, ``Bottleneck``, or their names ``"basic"``/``"bottleneck"``.
    layers: blocks per stage, e.g. ``(3, 4, 6, 3)``; any number of stages.
    num_classes: size of ``fc``; 0 builds a headless model returning pooled features.
    zero_init_residual: zero the last norm's scale in every residual branch.
    groups, width_per_group: ResNeXt cardinality and width (Bottleneck only).
    replace_stride_with_dilation: one flag per stage after the first; a dilated
      stage keeps the resolution and dilates its 3x3 convs instead.
    norm: ``"batch"`` (PyTorch-exact BatchNorm), ``"frozen_batch"`` or ``"group"``.
    norm_groups: groups of ``"group"`` norm.
    in_channels: channels of the input images.
    stem: ``"imagenet"`` (7x7/2 conv + 3x3/2 max-pool) or ``"cifar"`` (3x3/1 conv).
    channels: base channels per stage (outputs are ``channels * expansion``); the
      stem has ``channels[0]``.
    expansion: output/base channel ratio of a block; defaults to the block's own.
    dropout: channel-wise dropout on each residual branch before the addition.
    dtype: computation dtype (e.g. ``jnp.bfloat16``); param_dtype: storage dtype.
    rngs: random streams for initialisation and dropout; ``nnx.Rngs(0)`` if omitted.

  Models start in training mode, as torch modules do: call ``model.eval()`` to use
  running statistics and disable dropout, ``model.train()`` to switch back.

  Activation checkpointing: ``model.remat = "block"`` (or ``"stage"``) wraps each
  residual block (each stage) in ``nnx.remat``, so that a backward pass recomputes its
  activations instead of keeping them: less memory for more compute; the same function,
  parameters and state paths. ``"none"`` (the default) keeps them.
  """

  def __init__(
    self,
    block: type[nnx.Module] | str,
    layers: Sequence[int],
    num_classes: int = 1000,
    zero_init_residual: bool = False,
    groups: int = 1,
    width_per_group: int = 64,
    replace_stride_with_dilation: Sequence[bool] | None = None,
    norm: str = "batch",
    norm_groups: int = 32,
    in_channels: int = 3,
    stem: str = "imagenet",
    channels: Sequence[int] = DEFAULT_CHANNELS,
    expansion: int | None = None,
    dropout: float = 0.0,
    dtype: Dtype = None,
    param_dtype: Dtype = jnp.float32,
    *,
    rngs: nnx.Rngs | None = None,
  ):
    block = _check_args(
      block,
      layers,
      num_classes,
      groups,
      width_per_group,
      replace_stride_with_dilation,
      norm,
      in_channels,
      stem,
      channels,
      expansion,
      dropout,
    )
    dilate = tuple(replace_stride_with_dilation or (False,) * (len(layers) - 1))
    make = Layers(norm, norm_groups, dtype, param_dtype, rngs or nnx.Rngs(0))
    self.stem, self.in_channels, self.num_classes = stem, in_channels, num_classes
    self.dtype = dtype
    self.remat = "none"
    width = channels[0]
    if stem == "imagenet":
      self.conv1 = make.conv(in_channels, width, 7, 2, padding=3)
    else:
      self.conv1 = make.conv(in_channels, width, 3, 1, padding=1)
    self.bn1 = make.bn(width)
    self._build_stages(
      make, block, layers, channels, expansion, dilate, groups, width_per_group, dropout
    )
    self.num_features = self.feature_info[-1].channels
    if num_classes:
      self.fc = make_head(
        self.num_features, num_classes, dtype=dtype, param_dtype=param_dtype, rngs=make.rngs
      )
    if zero_init_residual:
      self._zero_init_residual()

  def _build_stages(
    self, make, block, layers, channels, expansion, dilate, groups, width_per_group, dropout
  ):
    exp = expansion or block.expansion
    inplanes, dilation = channels[0], 1
    stride_so_far = 2 if self.stem == "imagenet" else 1
    info = [FeatureInfo("stem", inplanes, stride_so_far)]
    stride_so_far *= 2 if self.stem == "imagenet" else 1  # the max-pool
    for i, (planes, depth) in enumerate(zip(channels, layers)):
      stride = 1 if i == 0 else 2
      previous_dilation = dilation
      if i > 0 and dilate[i - 1]:
        dilation, stride = dilation * stride, 1
      downsample = None
      if stride != 1 or inplanes != planes * exp:
        downsample = Downsample(make, inplanes, planes * exp, stride)
      blocks = [
        block(
          make,
          inplanes,
          planes,
          stride,
          downsample,
          groups,
          width_per_group,
          previous_dilation,
          dropout,
          exp,
        )
      ]
      blocks += [
        block(make, planes * exp, planes, 1, None, groups, width_per_group, dilation, dropout, exp)
        for _ in range(1, depth)
      ]
      setattr(self, f"layer{i + 1}", nnx.List(blocks))
      inplanes, stride_so_far = planes * exp, stride_so_far * stride
      info.append(FeatureInfo(f"layer{i + 1}", inplanes, stride_so_far))
    self.feature_info = tuple(info)

  def _zero_init_residual(self):
    for stage in self.stages:
      for blk in stage:
        for norm in blk.residual_norms:
          norm.scale[...] = jnp.zeros_like(norm.scale[...])

  @property
  def stages(self) -> tuple[nnx.List, ...]:
    """The stages ``layer1``, ``layer2``, ... in order.

    A property, not a method: ``nnx.tabulate`` tabulates every public method's output,
    and cannot display a list of modules.
    """
    return tuple(getattr(self, info.name) for info in self.feature_info[1:])

  def features(self, x: jax.Array) -> dict[str, jax.Array]:
    """Feature maps by name: ``stem`` (after conv1/bn1/relu) and each ``layerN``.

    Their channel counts and strides are in ``self.feature_info``.
    """
    self._check_input(x)
    x = nnx.relu(self.bn1(self.conv1(x)))
    out = {"stem": x}
    if self.stem == "imagenet":
      x = max_pool_3x3_s2(x)
    _choice("remat", self.remat, REMATS)
    for info, stage in zip(self.feature_info[1:], self.stages):
      if self.remat == "stage":
        x = nnx.remat(_run_blocks)(stage, x)
      else:
        for blk in stage:
          x = nnx.remat(_run_blocks)((blk,), x) if self.remat == "block" else blk(x)
      out[info.name] = x
    return out

  def reset_classifier(self, num_classes: int, *, rngs: nnx.Rngs | None = None) -> None:
    """Replaces ``fc`` by a new one for ``num_classes`` classes, initialised as
    ``torch.nn.Linear`` (what torchvision users do with ``model.fc = nn.Linear(...)``);
    ``num_classes=0`` removes it, and the model returns pooled features. The backbone
    is untouched; ``rngs`` draws the new weights (``nnx.Rngs(0)`` if omitted)."""
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 0:
      raise ValueError(f"num_classes must be an int >= 0, got {num_classes!r}")
    if self.num_classes:
      del self.fc
    self.num_classes = num_classes
    if num_classes:
      self.fc = make_head(
        self.num_features,
        num_classes,
        dtype=self.dtype,
        param_dtype=self.conv1.kernel[...].dtype,
        rngs=rngs or nnx.Rngs(0),
      )

  def forward_head(self, x: jax.Array) -> jax.Array:
    """Global average pool and, unless headless, the classifier."""
    x = jnp.mean(x, axis=(1, 2))
    return self.fc(x) if self.num_classes else x

  def __call__(self, x: jax.Array) -> jax.Array:
    """Logits (N, num_classes) for NHWC images, or pooled features when headless."""
    return self.forward_head(self.features(x)[self.feature_info[-1].name])

  def _check_input(self, x: jax.Array) -> None:
    if x.ndim != 4 or x.shape[-1] != self.in_channels:
      raise ValueError(
        f"input must be NHWC with C={self.in_channels} (in_channels), got shape "
        f"{tuple(x.shape)}; transpose NCHW arrays with x.transpose(0, 2, 3, 1)"
      )


def _run_blocks(blocks, x: jax.Array) -> jax.Array:
  """``x`` through ``blocks`` in turn: the function that ``nnx.remat`` recomputes."""
  for blk in blocks:
    x = blk(x)
  return x


def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
  """torchvision's stem pool: 3x3, stride 2, padding 1, the padding at -inf."""
  init = np.array(-np.inf, x.dtype)  # a concrete identity lets JAX pick the differentiable max
  return jax.lax.reduce_window(
    x, init, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), ((0, 0), (1, 1), (1, 1), (0, 0))
  )


def _choice(name: str, value, allowed) -> None:
  if value not in allowed:
    raise ValueError(f"{name} must be one of {tuple(allowed)}, got {value!r}")


def _check_args(
  block,
  layers,
  num_classes,
  groups,
  width_per_group,
  dilate,
  norm,
  in_channels,
  stem,
  channels,
  expansion,
  dropout,
) -> type[nnx.Module]:
  """Validates ResNet's arguments; returns the block class."""
  if isinstance(block, str):
    _choice("block", block, BLOCKS)
    block = BLOCKS[block]
  _choice("block", block, BLOCKS.values())
  _choice("norm", norm, NORMS)
  _choice("stem", stem, STEMS)
  if not layers or any(int(n) < 1 for n in layers):
    raise ValueError(f"layers must be a non-empty sequence of positive ints, got {layers!r}")
  if len(channels) != len(layers):
    raise ValueError(
      f"channels must have one entry per stage ({len(layers)} for layers="
      f"{tuple(layers)}), got {tuple(channels)}"
    )
  if dilate is not None and len(dilate) != len(layers) - 1:
    raise ValueError(
      "replace_stride_with_dilation must have one entry per stage after the "
      f"first ({len(layers) - 1}), got {tuple(dilate)}"
    )
  if block is BasicBlock and (groups != 1 or width_per_group != 64):
    raise ValueError(
      "BasicBlock only supports groups=1 and width_per_group=64, got "
      f"groups={groups}, width_per_group={width_per_group}"
    )
  if block is BasicBlock and dilate is not None and any(dilate):
    raise ValueError(
      "replace_stride_with_dilation is not supported with BasicBlock "
      f"(dilation > 1), got {tuple(dilate)}"
    )
  for name, value, low in [
    ("num_classes", num_classes, 0),
    ("in_channels", in_channels, 1),
    ("groups", groups, 1),
    ("width_per_group", width_per_group, 1),
    ("expansion", expansion or 1, 1),
  ]:
    if not isinstance(value, int) or value < low:
      raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
  if not 0.0 <= dropout < 1.0:
    raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
  return block
