"""torchvision's and timm's ResNet family in Flax NNX, numerically equal to them.

Attribute paths mirror their state-dict keys (``layer1[0].conv2``,
``layer2[0].downsample[1]``, timm's ``conv1[3]`` and ``layer1[0].se.fc1``, ``fc``), inputs
are NHWC, and every padding is explicit and equal to theirs. The file reads in build order:
norms, blocks, then the network.
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

from flax_resnet.choices import (
  AA_LAYERS,
  ATTN_LAYERS,
  BACKWARDS,
  DEFAULT_CHANNELS,
  MOMENTS,
  NORMS,
  REMATS,
  STEM_TYPES,
  STEMS,
)

Dtype = Any


# torchvision initialises convs with kaiming_normal_(mode="fan_out", nonlinearity="relu").
_kaiming_normal_fan_out = jax.nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _host_rng(key: jax.Array) -> np.random.Generator | None:
  """numpy's generator seeded by a concrete JAX key (the same key, the same numbers on
  every host), or None for a traced key (abstract construction: shapes only)."""
  if isinstance(key, jax.core.Tracer):
    # Asked, not tried: a tracer's conversion error describes its origin, a walk over
    # everything traced so far, which made abstract construction quadratic in depth.
    return None
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.key_data(key)
  return np.random.default_rng(np.asarray(key, np.uint32).ravel().tolist())


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


def fan_in_uniform_init(
  key: jax.Array, shape: tuple[int, ...], dtype: Dtype = jnp.float32
) -> jax.Array:
  """torch's default conv initialisation, kaiming_uniform_(a=sqrt(5)): U(+-1/sqrt(fan_in)),
  fan_in = every kernel axis but the last (timm's ECA conv, which no timm init touches)."""
  return _uniform(key, shape, dtype, 1.0 / math.sqrt(math.prod(shape[:-1])))


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
    bias: bool = False,
  ) -> nnx.Conv:
    """A k x k conv, torchvision's initialisation; a ``bias`` as torch draws it."""
    return nnx.Conv(
      cin,
      cout,
      (k, k),
      (stride, stride),
      padding=((padding, padding),) * 2,
      kernel_dilation=(dilation, dilation),
      feature_group_count=groups,
      use_bias=bias,
      kernel_init=conv_init,
      bias_init=_linear_bias_init(cin // groups * k * k),
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      conv_general_dilated=conv_general_dilated,
      rngs=self.rngs,
    )

  def bn(self, num_features: int) -> nnx.Module:
    """The network's norm (``norm``: batch, frozen batch or group) over ``num_features``."""
    return make_norm(
      self.norm,
      num_features,
      groups=self.norm_groups,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      rngs=self.rngs,
    )


def get_padding(kernel_size: int, stride: int, dilation: int = 1) -> int:
  """timm's symmetric conv padding, ``((stride - 1) + dilation * (kernel_size - 1)) // 2``."""
  return ((stride - 1) + dilation * (kernel_size - 1)) // 2


class Sequential(nnx.List):
  """Modules applied in turn, indexed as torch's ``nn.Sequential`` (``conv1[3]``,
  ``downsample[1]``): parameter-free places (``Relu``, a pool) keep the indices after them."""

  def __call__(self, x: jax.Array) -> jax.Array:
    for layer in self:
      x = layer(x)
    return x


class Relu(nnx.Module):
  """ReLU as a module without state, the place of a torch ``nn.ReLU`` in a ``Sequential``."""

  def __call__(self, x: jax.Array) -> jax.Array:
    return nnx.relu(x)


class AvgPool(nnx.Module):
  """timm's ``avg_down`` pool, 2x2: with stride 2, ``nn.AvgPool2d(2, 2, ceil_mode=True,
  count_include_pad=False)`` (a window cut by the edge averages the pixels it holds); with
  stride 1 in a dilated stage, ``AvgPool2dSame(2, 1)`` (one zero row and column padded at the
  end, every window divided by 4); with stride 1 otherwise, the identity."""

  def __init__(self, stride: int, dilation: int = 1):
    self.stride, self.dilation = stride, dilation

  def __call__(self, x: jax.Array) -> jax.Array:
    if self.dilation == 1 and self.stride == 1:
      return x
    if self.dilation > 1:
      return _window_sum(x, 1, ((0, 1), (0, 1))) / np.array(4, x.dtype)
    pad = tuple((0, n % 2) for n in x.shape[1:3])  # ceil_mode: a last, cut window
    count = _window_sum(np.ones((1, *x.shape[1:3], 1), x.dtype), 2, pad)
    return _window_sum(x, 2, pad) / count


def _window_sum(x, stride: int, pad) -> jax.Array:
  return jax.lax.reduce_window(
    x,
    np.array(0, x.dtype),
    jax.lax.add,
    (1, 2, 2, 1),
    (1, stride, stride, 1),
    ((0, 0), *pad, (0, 0)),
  )


class AvgAntiAlias(nnx.Module):
  """timm's average-pool anti-aliasing (``aa_layer=nn.AvgPool2d``, built as
  ``nn.AvgPool2d(stride)``): a stride x stride window at that stride, no padding, a last row or
  column that does not fill a window dropped (floor mode); the identity at stride 1."""

  def __init__(self, stride: int):
    self.stride = stride

  def __call__(self, x: jax.Array) -> jax.Array:
    if self.stride == 1:
      return x
    s = self.stride
    total = jax.lax.reduce_window(
      x, np.array(0, x.dtype), jax.lax.add, (1, s, s, 1), (1, s, s, 1), ((0, 0),) * 4
    )
    return total / np.array(s * s, x.dtype)


def binomial_filter(size: int) -> np.ndarray:
  """BlurPool2d's 2-d filter: the outer product of the binomial row ``C(size - 1, k) / 2^(size -
  1)`` with itself (sums to 1; exact in float32 and bfloat16 for size 3)."""
  row = np.array([math.comb(size - 1, k) for k in range(size)], np.float64) / 2 ** (size - 1)
  return np.outer(row, row)


class BlurPool(nnx.Module):
  """timm's ``BlurPool2d`` (size 3): each channel blurred by ``binomial_filter`` at ``stride``,
  after padding by ``get_padding(3, stride)`` (1) in ``reflect`` mode (the edge pixel not
  repeated). The filter is a constant: timm keeps it in a non-persistent buffer, outside its
  state dict, and here it is no state either."""

  def __init__(self, channels: int, stride: int = 2, filt_size: int = 3):
    self.channels, self.stride, self.filt_size = channels, stride, filt_size

  def __call__(self, x: jax.Array) -> jax.Array:
    k, p = self.filt_size, get_padding(self.filt_size, self.stride)
    x = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode="reflect")
    kernel = np.broadcast_to(binomial_filter(k)[:, :, None, None], (k, k, 1, self.channels))
    return jax.lax.conv_general_dilated(
      x,
      jnp.asarray(kernel, x.dtype),
      (self.stride, self.stride),
      ((0, 0), (0, 0)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=self.channels,
    )


def make_aa(aa_layer: str, channels: int, stride: int) -> nnx.Module:
  """timm's ``create_aa`` for ``aa_layer`` of ``AA_LAYERS``: the module that strides (or, at
  stride 1 where a stage's dilation grows, blurs) in place of a conv."""
  return AvgAntiAlias(stride) if aa_layer == "avg" else BlurPool(channels, stride)


class MaxPool(nnx.Module):
  """torch's ``nn.MaxPool2d(3, stride, padding=1)`` as a module: the stem pool's place."""

  def __init__(self, stride: int):
    self.stride = stride

  def __call__(self, x: jax.Array) -> jax.Array:
    return _max_pool_3x3(x, self.stride)


class Downsample(Sequential):
  """The projection shortcut: ``downsample[0]`` conv and ``downsample[1]`` norm, as torchvision
  and timm's ``downsample_conv`` (a ``kernel_size`` conv where it strides or dilates, else
  1x1); with ``avg_down``, timm's ``downsample_avg``: ``[0]`` an ``AvgPool``, ``[1]`` a 1x1
  conv, ``[2]`` the norm."""

  def __init__(
    self,
    make: Layers,
    cin: int,
    cout: int,
    stride: int,
    *,
    kernel_size: int = 1,
    dilation: int = 1,
    first_dilation: int = 1,
    avg_down: bool = False,
  ):
    if avg_down:
      super().__init__([AvgPool(stride, dilation), make.conv(cin, cout, 1), make.bn(cout)])
      return
    k = 1 if stride == 1 and dilation == 1 else kernel_size
    d = first_dilation if k > 1 else 1
    conv = make.conv(cin, cout, k, stride, padding=get_padding(k, stride, d), dilation=d)
    super().__init__([conv, make.bn(cout)])


def make_divisible(v: float, divisor: int = 8) -> int:
  """timm's channel rounding for SE (``round_limit=0``): to the nearest multiple of
  ``divisor``, at least ``divisor``."""
  return max(divisor, int(v + divisor / 2) // divisor * divisor)


class SqueezeExcite(nnx.Module):
  """timm's ``SEModule``: global mean, 1x1 conv ``fc1`` (to ``channels * rd_ratio``, 1/16 by
  default, rounded by ``make_divisible``) with bias, ReLU, 1x1 conv ``fc2`` back with bias, a
  sigmoid gate on each channel."""

  def __init__(self, make: Layers, channels: int, rd_ratio: float | None = None):
    reduced = make_divisible(channels * (rd_ratio or 1 / 16))
    self.fc1 = make.conv(channels, reduced, 1, bias=True)
    self.fc2 = make.conv(reduced, channels, 1, bias=True)

  def __call__(self, x: jax.Array) -> jax.Array:
    s = jnp.mean(x, axis=(1, 2), keepdims=True)
    return x * jax.nn.sigmoid(self.fc2(nnx.relu(self.fc1(s))))


def eca_kernel_size(channels: int, gamma: float = 2, beta: float = 1) -> int:
  """ECA's conv width from the channel count: ``|log2(C) + beta| / gamma``, made odd, >= 3."""
  t = int(abs(math.log(channels, 2) + beta) / gamma)
  return max(t if t % 2 else t + 1, 3)


class EfficientChannelAttention(nnx.Module):
  """timm's ``EcaModule``: global mean, a bias-free 1-d conv ``conv`` across the channels
  (width ``eca_kernel_size``, zero padding), a sigmoid gate on each channel."""

  def __init__(self, make: Layers, channels: int, rd_ratio: float | None = None):
    del rd_ratio  # SE's alone; accepted for a uniform attention signature
    k = eca_kernel_size(channels)
    self.conv = nnx.Conv(
      1,
      1,
      (k,),
      padding=(((k - 1) // 2,) * 2,),
      use_bias=False,
      kernel_init=fan_in_uniform_init,
      dtype=make.dtype,
      param_dtype=make.param_dtype,
      rngs=make.rngs,
    )

  def __call__(self, x: jax.Array) -> jax.Array:
    s = jnp.mean(x, axis=(1, 2))[..., None]  # (N, C, 1): the channels as the conv's length
    return x * jax.nn.sigmoid(self.conv(s))[:, None, None, :, 0]


ATTENTION = {"se": SqueezeExcite, "eca": EfficientChannelAttention}


def make_attn(
  make: Layers,
  attn_layer: str | None,
  channels: int,
  rd_ratio: float | None = None,
  nominal: int | None = None,
) -> nnx.Module | None:
  """The block's ``se`` module (timm names every kind so): ``attn_layer`` of ``ATTN_LAYERS``,
  or None for none; SE reduces by ``rd_ratio``. ``nominal``: the unpruned width of a pruned
  block, which sizes ECA's kernel (timm's pruning rebuilds 2-d convs only, not ECA's 1-d one)."""
  if not attn_layer:
    return None
  return ATTENTION[attn_layer](
    make, nominal if attn_layer == "eca" and nominal else channels, rd_ratio
  )


class DropBlockSpec(NamedTuple):
  """One stage's DropBlock, as timm's ``drop_blocks`` makes it: the drop probability, the
  block's side and the scale of the seed rate (``drop_block_gamma``)."""

  rate: float
  block_size: int
  gamma_scale: float


# timm's drop_blocks: DropBlock in the third stage (5x5 blocks, the seed rate scaled by 1/4)
# and the fourth (3x3 blocks), in every block of them; none in the others.
DROP_BLOCK_STAGES = {2: (5, 0.25), 3: (3, 1.0)}


def drop_block_specs(rate: float, stages: int) -> list[DropBlockSpec | None]:
  """Each stage's DropBlock for ``drop_block_rate=rate`` (timm's ``drop_blocks``)."""
  table = DROP_BLOCK_STAGES if rate > 0 else {}
  return [DropBlockSpec(rate, *table[i]) if i in table else None for i in range(stages)]


def drop_path_rates(rate: float, layers: Sequence[int]) -> list[float]:
  """Each block's drop-path probability, timm's stochastic-depth rule: linear over the
  net's n blocks, block i (counted over all stages from 0) drops with ``rate * i / (n - 1)``;
  the first never drops (nor the only block of a one-block net)."""
  n = sum(layers)
  return [rate * i / (n - 1) if n > 1 else 0.0 for i in range(n)]


class DropPath(nnx.Module):
  """timm's ``DropPath`` (stochastic depth): in training, each sample's residual branch is
  zeroed with probability ``rate`` and the kept ones are divided by ``1 - rate`` (the
  expectation stays); the identity in eval mode (``deterministic``, as ``nnx.Dropout``).
  Its keys: a fork of ``stream`` (``drop_stream``)."""

  def __init__(self, rate: float, *, stream: nnx.RngStream):
    self.rate, self.deterministic = rate, False
    self.rngs = stream.fork()

  def __call__(self, x: jax.Array) -> jax.Array:
    if self.deterministic or self.rate == 0:
      return x
    keep = 1.0 - self.rate
    kept = jax.random.bernoulli(self.rngs(), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return x * (kept.astype(x.dtype) / np.array(keep, x.dtype))


def drop_block_gamma(rate: float, block_size: int, gamma_scale: float, h: int, w: int) -> float:
  """timm's DropBlock seed rate on an ``h`` x ``w`` map: a block's seeds are drawn at every
  position with this probability, ``gamma_scale * rate * h * w / (kh * kw) / ((h - kh + 1) *
  (w - kw + 1))``, the block ``kh`` x ``kw`` cut to the map."""
  kh, kw = min(block_size, h), min(block_size, w)
  return float(gamma_scale * rate * h * w) / float(kh * kw) / float((h - kh + 1) * (w - kw + 1))


def apply_drop_block(x: jax.Array, seeds: jax.Array, block_size: int) -> jax.Array:
  """``x`` (N, H, W, C) with a block around each seed zeroed in every channel, rescaled as timm
  does: by the mask's size over its kept count (+ 1e-7, in float32). ``seeds`` (N, H, W, 1):
  1 where a block starts. A block ``kh`` x ``kw`` (``block_size`` cut to the map) covers
  ``(k - 1) // 2`` rows and columns before its seed and ``k // 2`` after (timm's max-pool, its
  even-kernel fix included)."""
  kh, kw = min(block_size, x.shape[1]), min(block_size, x.shape[2])
  pad = ((0, 0), ((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2), (0, 0))
  seeds = seeds.astype(x.dtype)
  dropped = jax.lax.reduce_window(
    seeds, np.array(0, x.dtype), jax.lax.max, (1, kh, kw, 1), (1, 1, 1, 1), pad
  )
  keep = 1 - dropped
  f32 = np.float32
  # torch computes timm's numel / (kept + 1e-7) as a reciprocal times numel: so here too.
  scale = f32(keep.size) * (f32(1) / (jnp.sum(keep.astype(f32)) + f32(1e-7)))
  return x * (keep * scale.astype(x.dtype))


class DropBlock(nnx.Module):
  """timm's ``DropBlock2d`` (as ``drop_block_rate`` configures it): in training, square blocks
  of the feature map are zeroed in all channels at once, seeded at each position with
  probability ``drop_block_gamma``, and the rest scaled up (``apply_drop_block``); the
  identity in eval mode. Its keys: a fork of ``stream``, as ``DropPath``'s."""

  def __init__(self, spec: DropBlockSpec, *, stream: nnx.RngStream):
    self.rate, self.block_size, self.gamma_scale = spec
    self.deterministic = False
    self.rngs = stream.fork()

  def __call__(self, x: jax.Array) -> jax.Array:
    if self.deterministic or self.rate == 0:
      return x
    n, h, w, _ = x.shape
    gamma = drop_block_gamma(self.rate, self.block_size, self.gamma_scale, h, w)
    return apply_drop_block(
      x, jax.random.bernoulli(self.rngs(), gamma, (n, h, w, 1)), self.block_size
    )


def drop_stream(rngs: nnx.Rngs) -> nnx.RngStream:
  """The random stream of a net's ``DropPath`` and ``DropBlock`` modules: a fork of the
  ``dropout`` stream of a copy of ``rngs``, so that the parameters drawn from ``rngs`` are
  the same whatever the drop rates (as with ``nnx.Dropout``, ``dropout`` falls back to
  ``default`` where ``rngs`` has no such stream)."""
  return nnx.clone(rngs)["dropout"].fork()


def _drop_path(rate: float, stream: nnx.RngStream | None) -> DropPath | None:
  if rate > 0 and stream is None:
    raise ValueError("a block with drop_path > 0 needs drop_rngs (model.drop_stream)")
  return DropPath(rate, stream=stream) if rate > 0 and stream is not None else None


def _drop_block(spec: DropBlockSpec | None, stream: nnx.RngStream | None) -> DropBlock | None:
  if spec is not None and stream is None:
    raise ValueError("a block with drop_block needs drop_rngs (model.drop_stream)")
  return DropBlock(spec, stream=stream) if spec is not None and stream is not None else None


def _maybe(module: nnx.Module | None, x: jax.Array) -> jax.Array:
  return x if module is None else module(x)


class BasicBlock(nnx.Module):
  """Two 3x3 convs with a residual connection (ResNet-18/34). With ``aa_layer`` (given only to a
  block that strides or changes dilation), ``conv1`` runs at stride 1 and ``aa`` (after its
  ReLU) strides, as in timm."""

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
    *,
    reduce_first: int = 1,
    attn_layer: str | None = None,
    aa_layer: str | None = None,
    se_rd_ratio: float | None = None,
    widths: Sequence[int] | None = None,
    drop_path: float = 0.0,
    drop_block: DropBlockSpec | None = None,
    drop_rngs: nnx.RngStream | None = None,
  ):
    del groups, base_width  # validated by ResNet: a BasicBlock has neither
    nominal = planes * (expansion or self.expansion)
    first, out = widths or (planes // reduce_first, nominal)
    conv_stride = 1 if aa_layer else stride  # the aa module strides instead
    self.conv1 = make.conv(inplanes, first, 3, conv_stride, padding=dilation, dilation=dilation)
    self.bn1 = make.bn(first)
    self.drop_block = _drop_block(drop_block, drop_rngs)
    self.aa = make_aa(aa_layer, first, stride) if aa_layer else None
    self.conv2 = make.conv(first, out, 3, padding=dilation, dilation=dilation)
    self.bn2 = make.bn(out)
    self.se = make_attn(make, attn_layer, out, se_rd_ratio, nominal)
    self.downsample = downsample
    self.dropout = _branch_dropout(dropout, make.rngs)
    self.drop_path = _drop_path(drop_path, drop_rngs)

  @property
  def residual_norms(self) -> tuple[nnx.Module, ...]:
    """The residual branch's last norm (a property: see ``ResNet.stages``)."""
    return (self.bn2,)

  def __call__(self, x: jax.Array) -> jax.Array:
    out = nnx.relu(_maybe(self.drop_block, self.bn1(self.conv1(x))))
    out = self.bn2(self.conv2(out if self.aa is None else self.aa(out)))
    return _merge(self, x, out)


class Bottleneck(nnx.Module):
  """1x1 reduce, 3x3, 1x1 expand (ResNet-50 and deeper, ResNeXt, Wide ResNet).

  This is ResNet v1.5: the stride sits on the 3x3 conv rather than the first 1x1,
  which sees every input pixel that way and gains about 0.5% top-1 on ImageNet. With
  ``aa_layer``, ``conv2`` runs at stride 1 and ``aa`` (after its ReLU) strides, as in timm.
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
    *,
    reduce_first: int = 1,
    attn_layer: str | None = None,
    aa_layer: str | None = None,
    se_rd_ratio: float | None = None,
    widths: Sequence[int] | None = None,
    drop_path: float = 0.0,
    drop_block: DropBlockSpec | None = None,
    drop_rngs: nnx.RngStream | None = None,
  ):
    width = int(planes * (base_width / 64.0)) * groups
    nominal = planes * (expansion or self.expansion)
    first, width, out = widths or (width // reduce_first, width, nominal)
    self.conv1 = make.conv(inplanes, first, 1)
    self.bn1 = make.bn(first)
    conv_stride = 1 if aa_layer else stride  # the aa module strides instead
    self.conv2 = make.conv(
      first, width, 3, conv_stride, padding=dilation, dilation=dilation, groups=groups
    )
    self.bn2 = make.bn(width)
    self.drop_block = _drop_block(drop_block, drop_rngs)
    self.aa = make_aa(aa_layer, width, stride) if aa_layer else None
    self.conv3 = make.conv(width, out, 1)
    self.bn3 = make.bn(out)
    self.se = make_attn(make, attn_layer, out, se_rd_ratio, nominal)
    self.downsample = downsample
    self.dropout = _branch_dropout(dropout, make.rngs)
    self.drop_path = _drop_path(drop_path, drop_rngs)

  @property
  def residual_norms(self) -> tuple[nnx.Module, ...]:
    """The residual branch's last norm (a property: see ``ResNet.stages``)."""
    return (self.bn3,)

  def __call__(self, x: jax.Array) -> jax.Array:
    out = nnx.relu(self.bn1(self.conv1(x)))
    out = nnx.relu(_maybe(self.drop_block, self.bn2(self.conv2(out))))
    out = self.bn3(self.conv3(out if self.aa is None else self.aa(out)))
    return _merge(self, x, out)


def _branch_dropout(rate: float, rngs: nnx.Rngs) -> nnx.Dropout | None:
  # broadcast over H and W: whole channels are dropped, as nn.Dropout2d does.
  return nnx.Dropout(rate, broadcast_dims=(1, 2), rngs=rngs) if rate > 0 else None


def _merge(block, x: jax.Array, out: jax.Array) -> jax.Array:
  """The branch's attention (timm's place: after the last norm), dropout, drop path, the
  shortcut, ReLU."""
  if block.se is not None:
    out = block.se(out)
  if block.dropout is not None:
    out = block.dropout(out)
  out = _maybe(block.drop_path, out)
  identity = x if block.downsample is None else block.downsample(x)
  if out.shape != identity.shape:  # timm fails here too, with torch's message
    raise ValueError(
      f"input size: a block's residual branch gives {out.shape[1:3]} but its shortcut "
      f"{identity.shape[1:3]}: average-pool anti-aliasing (aa_layer='avg') drops an odd size's "
      "last row or column, the shortcut keeps it; give an input size divisible by the stride "
      "of the net's last feature map"
    )
  return nnx.relu(out + identity)


def split_attention_channels(channels: int, radix: int) -> int:
  """timm's width of the split attention's ``fc1``: a quarter of ``channels * radix`` rounded
  to a multiple of 8, at least 32, rounded up where rounding lost over 10%."""
  wanted = channels * radix / 4
  rounded = max(32, make_divisible(wanted))
  return rounded + 8 if rounded < 0.9 * wanted else rounded


class SplitAttention(nnx.Module):
  """timm's ``SplitAttn`` (ResNeSt's 3x3 conv): a grouped conv ``conv`` to ``radix`` splits of
  ``channels`` each and its norm ``bn0``, then an attention over the splits: their sum's
  global mean through ``fc1`` (with bias), ``bn1``, ReLU and ``fc2`` (with bias), both
  grouped by ``groups``, a softmax across the splits in each channel (a sigmoid gate for
  ``radix=1``), and the splits' sum so weighted. ``drop``: the block's ``DropBlock``, which
  acts where timm's ``drop_layer`` does, on ``bn0``'s output before its ReLU."""

  def __init__(
    self,
    make: Layers,
    channels: int,
    stride: int,
    dilation: int,
    groups: int,
    radix: int,
    drop: DropBlock | None = None,
  ):
    splits, attn = channels * radix, split_attention_channels(channels, radix)
    self.conv = make.conv(
      channels,
      splits,
      3,
      stride,
      padding=dilation,
      dilation=dilation,
      groups=groups * radix,
    )
    self.bn0 = make.bn(splits)
    self.drop = drop
    self.fc1 = make.conv(channels, attn, 1, groups=groups, bias=True)
    self.bn1 = make.bn(attn)
    self.fc2 = make.conv(attn, splits, 1, groups=groups, bias=True)
    self.radix, self.groups = radix, groups

  def __call__(self, x: jax.Array) -> jax.Array:
    x = nnx.relu(_maybe(self.drop, self.bn0(self.conv(x))))
    n, h, w, c = x.shape
    splits = x.reshape(n, h, w, self.radix, c // self.radix)  # channel r * C + i: split r
    pooled = jnp.mean(jnp.sum(splits, axis=3), axis=(1, 2), keepdims=True)
    attn = self.fc2(nnx.relu(self.bn1(self.fc1(pooled))))
    if self.radix == 1:
      return x * jax.nn.sigmoid(attn)
    # fc2's channels run group-major (group, split, channel within group); the splits' are
    # split-major: softmax over the split axis, then reorder.
    attn = jax.nn.softmax(attn.reshape(n, self.groups, self.radix, -1), axis=2)
    attn = attn.transpose(0, 2, 1, 3).reshape(n, 1, 1, self.radix, c // self.radix)
    return jnp.sum(splits * attn, axis=3)


class AvdPool(nnx.Module):
  """ResNeSt's ``avd`` pool, timm's ``nn.AvgPool2d(3, stride, padding=1)``: 3x3 windows,
  zero padding of one pixel counted in every window's divisor of 9, floor-sized output."""

  def __init__(self, stride: int):
    self.stride = stride

  def __call__(self, x: jax.Array) -> jax.Array:
    total = jax.lax.reduce_window(
      x,
      np.array(0, x.dtype),
      jax.lax.add,
      (1, 3, 3, 1),
      (1, self.stride, self.stride, 1),
      ((0, 0), (1, 1), (1, 1), (0, 0)),
    )
    return total / np.array(9, x.dtype)


class ResNestBottleneck(nnx.Module):
  """timm's ``ResNestBottleneck``: a Bottleneck whose 3x3 conv is a ``SplitAttention``
  (``conv2.conv``, ``conv2.bn0``, ``conv2.fc1``...; no ``bn2``), or with ``radix=0`` a plain
  grouped 3x3 conv and ``bn2``. With ``avd``, a block that strides (or every block, with
  ``is_first``) moves its stride from the 3x3 conv to an ``AvdPool``, after it, or before it
  with ``avd_first``. ``drop_block`` acts where timm's does: inside the split attention
  (``conv2.drop``, after ``bn0``), or with ``radix=0`` after ``bn2`` (``drop_block``)."""

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
    *,
    reduce_first: int = 1,
    attn_layer: str | None = None,
    radix: int = 1,
    avd: bool = False,
    avd_first: bool = False,
    is_first: bool = False,
    aa_layer: str | None = None,
    se_rd_ratio: float | None = None,
    widths: Sequence[int] | None = None,
    drop_path: float = 0.0,
    drop_block: DropBlockSpec | None = None,
    drop_rngs: nnx.RngStream | None = None,
  ):
    # validated by ResNet: timm's ResNeSt has none of these
    del reduce_first, attn_layer, aa_layer, se_rd_ratio, widths
    width = int(planes * (base_width / 64.0)) * groups
    out = planes * (expansion or self.expansion)
    pool = stride if avd and (stride > 1 or is_first) else 0
    stride = 1 if pool else stride
    self.conv1 = make.conv(inplanes, width, 1)
    self.bn1 = make.bn(width)
    self.avd_first = AvdPool(pool) if pool and avd_first else None
    self.conv2: nnx.Module
    self.bn2 = None if radix else make.bn(width)
    drop = _drop_block(drop_block, drop_rngs)
    self.drop_block = None if radix else drop
    if radix:
      self.conv2 = SplitAttention(make, width, stride, dilation, groups, radix, drop)
    else:
      self.conv2 = make.conv(
        width, width, 3, stride, padding=dilation, dilation=dilation, groups=groups
      )
    self.avd_last = AvdPool(pool) if pool and not avd_first else None
    self.conv3 = make.conv(width, out, 1)
    self.bn3 = make.bn(out)
    self.se = None
    self.downsample = downsample
    self.dropout = _branch_dropout(dropout, make.rngs)
    self.drop_path = _drop_path(drop_path, drop_rngs)

  @property
  def residual_norms(self) -> tuple[nnx.Module, ...]:
    """The residual branch's last norm (a property: see ``ResNet.stages``)."""
    return (self.bn3,)

  def __call__(self, x: jax.Array) -> jax.Array:
    out = nnx.relu(self.bn1(self.conv1(x)))
    if self.avd_first is not None:
      out = self.avd_first(out)
    out = self.conv2(out)
    if self.bn2 is not None:
      out = nnx.relu(_maybe(self.drop_block, self.bn2(out)))
    if self.avd_last is not None:
      out = self.avd_last(out)
    out = self.bn3(self.conv3(out))
    return _merge(self, x, out)


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck, "resnest": ResNestBottleneck}


class FeatureInfo(NamedTuple):
  """One feature map of ``ResNet.features``: its name, channel count and stride."""

  name: str
  channels: int
  stride: int


class ResNet(nnx.Module):
  """The ResNet family, with torchvision's constructor options and defaults, and timm's.

  Args:
    block: ``BasicBlock``, ``Bottleneck``, ``ResNestBottleneck``, or their names ``"basic"``,
      ``"bottleneck"``, ``"resnest"``; or a sequence of them, one per stage (timm's
      ``test_resnet`` mixes basic and bottleneck blocks; ``"resnest"`` is for every stage).
    layers: blocks per stage, e.g. ``(3, 4, 6, 3)``; any number of stages.
    num_classes: size of ``fc``; 0 builds a headless model returning pooled features.
    zero_init_residual: zero the last norm's scale in every residual branch.
    groups: ResNeXt cardinality (Bottleneck, ResNeSt only).
    width_per_group: ResNeXt width per group (Bottleneck, ResNeSt only).
    replace_stride_with_dilation: one flag per stage after the first; a dilated
      stage keeps the resolution and dilates its 3x3 convs instead.
    norm: ``"batch"`` (PyTorch-exact BatchNorm), ``"frozen_batch"`` or ``"group"`` (torch's
      and timm's GroupNorm, eps 1e-5: timm's ``resnet50_gn``).
    norm_groups: groups of ``"group"`` norm (32, as timm's).
    in_channels: channels of the input images.
    stem: ``"imagenet"`` (7x7/2 conv + 3x3/2 max-pool) or ``"cifar"`` (3x3/1 conv).
    channels: base channels per stage (outputs are ``channels * expansion``); the
      stem has ``channels[0]``.
    expansion: output/base channel ratio of a block; defaults to the block's own.
    dropout: channel-wise dropout on each residual branch before the addition.
    dtype: computation dtype (e.g. ``jnp.bfloat16``); param_dtype: storage dtype.
    rngs: random streams for initialisation and dropout; ``nnx.Rngs(0)`` if omitted.

  timm's options (keyword only; timm's names, defaults and keys):
    stem_type: ``""`` (the 7x7 conv), ``"deep"`` (``conv1`` a sequence of three 3x3 convs of
      ``stem_width``, ``stem_width``, ``2 * stem_width`` channels, the first strided, with
      norms and ReLUs between: ``conv1[0]``, ``conv1[1]``, ``conv1[3]``, ``conv1[4]``,
      ``conv1[6]``) or ``"deep_tiered"`` (the first conv ``3 * (stem_width // 4)`` wide).
    stem_width: the deep stem's width, 64 if omitted; only with a deep stem.
    replace_stem_pool: a 3x3/2 conv, norm and ReLU (``maxpool[0]``, ``maxpool[1]``) in place
      of the stem's max-pool.
    avg_down: shortcuts pool 2x2 and then project with a 1x1 conv (ResNet-D's
      ``downsample[1]``, ``downsample[2]``) instead of a strided 1x1 conv.
    down_kernel_size: the kernel of a strided or dilated shortcut conv (not with avg_down).
    block_reduce_first: the first conv of each block is this many times narrower.
    attn_layer: channel attention after each block's last norm, as ``se``: ``"se"``
      (squeeze-and-excitation) or ``"eca"`` (efficient channel attention); None for none.
    aa_layer: anti-aliasing (timm's ``resnetaa*``, ``resnetblur*``): ``"avg"`` (a 2x2 average
      pool) or ``"blur"`` (``BlurPool2d``'s fixed 3x3 binomial filter, reflect padding). Where a
      block strides, its 3x3 conv runs at stride 1 and the block's ``aa`` strides after the ReLU
      (a blur also where a dilated stage begins); the stem's max-pool becomes a 2x2/2 average
      pool (``"avg"``) or a 3x3/1 max-pool and a blur at stride 2 (``"blur"``), and the conv
      pool of ``replace_stem_pool`` runs at stride 1 before it. No tensors: the keys stay the
      same as without it. None for none.
    se_rd_ratio: SE's reduction, ``fc1`` ``channels * se_rd_ratio`` wide (``make_divisible``);
      1/16 if omitted, ResNet-RS's 1/4; only with ``attn_layer="se"``.
    block_widths: a pruned net's widths (timm's ``ecaresnet*_pruned``, ``flax_resnet.pruned``):
      per stage, per block, its convs' output widths (a bottleneck's conv1, conv2, conv3; a
      basic block's conv1, conv2), every block of a stage ending equally wide; groups=1.
      ``channels`` stay the nominal widths, which decide where a shortcut projects and ECA's
      kernel, as in timm's pruned nets.
    drop_path_rate: stochastic depth (timm's ``DropPath``): block i of the net's n drops its
      residual branch, per sample, with probability ``drop_path_rate * i / (n - 1)``, the kept
      ones scaled by 1 / (1 - that); training only.
    drop_block_rate: DropBlock (timm's ``drop_blocks``) after the first 3x3 conv's norm (a
      bottleneck's ``bn2``, a basic block's ``bn1``, ResNeSt's split attention's ``bn0``) of
      every block of the third (5x5 blocks, seed rate scaled by 1/4) and fourth stage (3x3);
      training only. Both draw from a copy of ``rngs``' ``dropout`` stream: the initial
      weights do not depend on them.

  ResNeSt's options (``block="resnest"`` only; timm passes them in ``block_args``, here they
  are keywords of their own; timm's ``cardinality`` and ``base_width`` are ``groups`` and
  ``width_per_group``):
    radix: splits of the split-attention 3x3 conv (``conv2.conv``, ``conv2.fc1``...); 1 gates
      with a sigmoid, 2 or more with a softmax across the splits; 0 a plain 3x3 conv and
      ``bn2``.
    avd: a block that strides does so by a 3x3 average pool (padding 1, zeros counted) after
      its 3x3 conv, which keeps stride 1.
    avd_first: that pool before the 3x3 conv instead (with ``avd``).
    is_first: that pool in every block, of stride 1 where the block does not stride (with
      ``avd``; timm's block argument, which reaches every block).

  Models start in training mode, as torch modules do: call ``model.eval()`` to use
  running statistics and disable dropout, ``model.train()`` to switch back.

  Activation checkpointing: ``model.remat = "block"`` (or ``"stage"``) wraps each
  residual block (each stage) in ``nnx.remat``, so that a backward pass recomputes its
  activations instead of keeping them: less memory for more compute; the same function,
  parameters and state paths. ``"none"`` (the default) keeps them.
  """

  def __init__(
    self,
    block: type[nnx.Module] | str | Sequence[type[nnx.Module] | str],
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
    stem_type: str = "",
    stem_width: int | None = None,
    replace_stem_pool: bool = False,
    avg_down: bool = False,
    down_kernel_size: int = 1,
    block_reduce_first: int = 1,
    attn_layer: str | None = None,
    aa_layer: str | None = None,
    radix: int = 1,
    avd: bool = False,
    avd_first: bool = False,
    is_first: bool = False,
    se_rd_ratio: float | None = None,
    block_widths: Sequence[Sequence[Sequence[int]]] | None = None,
    drop_path_rate: float = 0.0,
    drop_block_rate: float = 0.0,
    rngs: nnx.Rngs | None = None,
  ):
    _check_timm_args(
      stem=stem,
      stem_type=stem_type,
      stem_width=stem_width,
      replace_stem_pool=replace_stem_pool,
      avg_down=avg_down,
      down_kernel_size=down_kernel_size,
      block_reduce_first=block_reduce_first,
      attn_layer=attn_layer,
      aa_layer=aa_layer,
    )
    _check_rs_args(attn_layer, se_rd_ratio, drop_path_rate, drop_block_rate, layers)
    blocks = _check_args(
      block=block,
      layers=layers,
      num_classes=num_classes,
      groups=groups,
      width_per_group=width_per_group,
      dilate=replace_stride_with_dilation,
      norm=norm,
      in_channels=in_channels,
      stem=stem,
      channels=channels,
      expansion=expansion,
      dropout=dropout,
    )
    split = {"radix": radix, "avd": avd, "avd_first": avd_first, "is_first": is_first}
    _check_resnest_args(blocks, split, attn_layer, block_reduce_first, aa_layer)
    dilate = tuple(replace_stride_with_dilation or (False,) * (len(layers) - 1))
    make = Layers(norm, norm_groups, dtype, param_dtype, rngs or nnx.Rngs(0))
    self.stem, self.in_channels, self.num_classes = stem, in_channels, num_classes
    self.dtype, self.param_dtype = dtype, param_dtype
    self.remat = "none"
    width = self._build_stem(make, channels[0], stem_type, stem_width, replace_stem_pool, aa_layer)
    shortcut = {"kernel_size": down_kernel_size, "avg_down": avg_down}
    options = {
      "reduce_first": block_reduce_first,
      "attn_layer": attn_layer,
      "aa_layer": aa_layer,
      "se_rd_ratio": se_rd_ratio,
    }
    if ResNestBottleneck in blocks:
      options.update(split)
    per_stage = _per_block_options(
      layers,
      _check_block_widths(block_widths, blocks, layers, groups),
      drop_path_rate,
      drop_block_rate,
      drop_stream(make.rngs) if drop_path_rate or drop_block_rate else None,
    )
    self._build_stages(
      make,
      blocks,
      layers,
      (width, *channels),
      expansion,
      dilate,
      (groups, width_per_group, dropout),
      shortcut,
      options,
      per_stage,
    )
    self.num_features = self.feature_info[-1].channels
    if num_classes:
      self.fc = make_head(
        self.num_features, num_classes, dtype=dtype, param_dtype=param_dtype, rngs=make.rngs
      )
    if zero_init_residual:
      self._zero_init_residual()

  def _build_stem(self, make, width, stem_type, stem_width, replace_stem_pool, aa_layer) -> int:
    """``conv1``, ``bn1`` and a ``maxpool`` module if asked; the stem's output width."""
    cin = self.in_channels
    if self.stem == "cifar":
      self.conv1 = make.conv(cin, width, 3, 1, padding=1)
    elif not stem_type:
      self.conv1 = make.conv(cin, width, 7, 2, padding=3)
    else:
      second = stem_width or 64
      first = 3 * (second // 4) if stem_type == "deep_tiered" else second
      width = 2 * second
      self.conv1 = Sequential(
        [
          make.conv(cin, first, 3, 2, padding=1),
          make.bn(first),
          Relu(),
          make.conv(first, second, 3, padding=1),
          make.bn(second),
          Relu(),
          make.conv(second, width, 3, padding=1),
        ]
      )
    self.bn1 = make.bn(width)
    if replace_stem_pool or (aa_layer and self.stem == "imagenet"):
      self.maxpool = _stem_pool(make, width, replace_stem_pool, aa_layer)
    return width

  def _build_stages(
    self, make, blocks, layers, widths, expansion, dilate, per_block, shortcut, options, per_stage
  ):
    """``layer1``, ``layer2``... after a stem ``widths[0]`` wide, of base ``widths[1:]``;
    ``per_stage``: each block's own options (``_per_block_options``). Where a shortcut
    projects is decided on the nominal (unpruned) widths, as timm's pruned nets keep it."""
    groups, width_per_group, dropout = per_block
    inplanes, dilation = widths[0], 1
    nominal = inplanes
    stride_so_far = 2 if self.stem == "imagenet" else 1
    info = [FeatureInfo("stem", inplanes, stride_so_far)]
    stride_so_far *= 2 if self.stem == "imagenet" else 1  # the max-pool
    for i, (block, planes, depth) in enumerate(zip(blocks, widths[1:], layers)):
      exp = expansion or block.expansion
      stride = 1 if i == 0 else 2
      previous_dilation = dilation
      if i > 0 and dilate[i - 1]:
        dilation, stride = dilation * stride, 1
      # timm's aa where the first block strides or the stage's dilation grows; no other block.
      aa_first = {"aa_layer": None}
      if stride != 1 or dilation != previous_dilation:
        aa_first = {"aa_layer": options["aa_layer"]}
      downsample = None
      own = per_stage[i]
      out = own[0]["widths"][-1] if own[0].get("widths") else planes * exp
      if stride != 1 or nominal != planes * exp:
        downsample = Downsample(
          make,
          inplanes,
          out,
          stride,
          dilation=dilation,
          first_dilation=previous_dilation,
          **shortcut,
        )
      shared = (groups, width_per_group)
      stage = [
        block(
          make,
          inplanes,
          planes,
          stride,
          downsample,
          *shared,
          previous_dilation,
          dropout,
          exp,
          **{**options, **aa_first},
          **own[0],
        )
      ]
      rest = {**options, "aa_layer": None}
      stage += [
        block(make, out, planes, 1, None, *shared, dilation, dropout, exp, **rest, **own[j])
        for j in range(1, depth)
      ]
      setattr(self, f"layer{i + 1}", nnx.List(stage))
      inplanes, nominal, stride_so_far = out, planes * exp, stride_so_far * stride
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
    if hasattr(self, "maxpool"):
      x = self.maxpool(x)
    elif self.stem == "imagenet":
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
        param_dtype=self.param_dtype,
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
  return _max_pool_3x3(x, 2)


def _max_pool_3x3(x: jax.Array, stride: int) -> jax.Array:
  init = np.array(-np.inf, x.dtype)  # a concrete identity lets JAX pick the differentiable max
  return jax.lax.reduce_window(
    x, init, jax.lax.max, (1, 3, 3, 1), (1, stride, stride, 1), ((0, 0), (1, 1), (1, 1), (0, 0))
  )


def _stem_pool(make: Layers, width: int, replace_stem_pool: bool, aa_layer: str | None):
  """timm's ``maxpool`` in place of the stem's 3x3/2 max-pool: the conv pool (``[0]`` conv, at
  stride 1 before ``[1]`` an aa module with ``aa_layer``, then the norm and ReLU); or with
  ``aa_layer`` alone, a 2x2/2 average pool (``"avg"``, no max-pool at all) or ``[0]`` a 3x3/1
  max-pool and ``[1]`` a blur at stride 2 (``"blur"``)."""
  if replace_stem_pool:
    conv = make.conv(width, width, 3, 1 if aa_layer else 2, padding=1)
    aa = [make_aa(aa_layer, width, 2)] if aa_layer else []
    return Sequential([conv, *aa, make.bn(width), Relu()])
  if aa_layer == "avg":
    return AvgAntiAlias(2)
  return Sequential([MaxPool(1), BlurPool(width, 2)])


def _choice(name: str, value, allowed) -> None:
  if value not in allowed:
    raise ValueError(f"{name} must be one of {tuple(allowed)}, got {value!r}")


def _check_timm_args(
  *,
  stem,
  stem_type,
  stem_width,
  replace_stem_pool,
  avg_down,
  down_kernel_size,
  block_reduce_first,
  attn_layer,
  aa_layer,
) -> None:
  """Validates ResNet's timm options: one line naming the parameter. Keywords only: one
  setting in the wrong place would check another's value."""
  _choice("stem_type", stem_type, STEM_TYPES)
  for name, value, allowed in [
    ("attn_layer", attn_layer, ATTN_LAYERS),
    ("aa_layer", aa_layer, AA_LAYERS),
  ]:
    if value is not None and value not in allowed:
      raise ValueError(f"{name} must be one of {allowed} or None, got {value!r}")
  for name, flag in [("replace_stem_pool", replace_stem_pool), ("avg_down", avg_down)]:
    if not isinstance(flag, bool):
      raise ValueError(f"{name} must be True or False, got {flag!r}")
  if stem != "imagenet" and (stem_type or replace_stem_pool):
    raise ValueError(f"stem_type and replace_stem_pool need stem='imagenet', got stem={stem!r}")
  if stem_width is not None and not stem_type:
    raise ValueError(
      f"stem_width applies to a deep stem only (stem_type='deep' or 'deep_tiered'), got "
      f"stem_width={stem_width!r} with stem_type={stem_type!r}"
    )
  low = 4 if stem_type == "deep_tiered" else 1
  if stem_width is not None and (not _is_int(stem_width) or stem_width < low):
    raise ValueError(f"stem_width must be an int >= {low}, got {stem_width!r}")
  if not _is_int(down_kernel_size) or down_kernel_size < 1 or down_kernel_size % 2 == 0:
    raise ValueError(f"down_kernel_size must be an odd int >= 1, got {down_kernel_size!r}")
  if avg_down and down_kernel_size != 1:
    raise ValueError(
      f"down_kernel_size applies to the conv shortcut, not to avg_down=True; got "
      f"down_kernel_size={down_kernel_size!r}"
    )
  if not _is_int(block_reduce_first) or block_reduce_first < 1:
    raise ValueError(f"block_reduce_first must be an int >= 1, got {block_reduce_first!r}")


def _check_resnest_args(blocks, split, attn_layer, block_reduce_first, aa_layer) -> None:
  """Validates ResNeSt's options (``split``: radix, avd, avd_first, is_first by name) against
  the stages' ``blocks``: one line naming the parameter."""
  if not _is_int(split["radix"]) or split["radix"] < 0:
    raise ValueError(f"radix must be an int >= 0, got {split['radix']!r}")
  for name in ("avd", "avd_first", "is_first"):
    if not isinstance(split[name], bool):
      raise ValueError(f"{name} must be True or False, got {split[name]!r}")
  if ResNestBottleneck not in blocks:
    defaults = {"radix": 1, "avd": False, "avd_first": False, "is_first": False}
    given = ", ".join(f"{k}={v!r}" for k, v in split.items() if v != defaults[k])
    if given:
      raise ValueError(f"ResNeSt's options apply to block='resnest' only, got {given}")
    return
  if any(b is not ResNestBottleneck for b in blocks):
    raise ValueError("block='resnest' is for every stage, not mixed with other blocks")
  if (split["avd_first"] or split["is_first"]) and not split["avd"]:
    raise ValueError("avd_first and is_first place the avd pool: they need avd=True")
  if attn_layer is not None or block_reduce_first != 1 or aa_layer is not None:
    raise ValueError(
      "attn_layer, block_reduce_first and aa_layer are not options of block='resnest' "
      f"(timm's ResNestBottleneck has none of them), got attn_layer={attn_layer!r}, "
      f"block_reduce_first={block_reduce_first!r}, aa_layer={aa_layer!r}"
    )


def _check_rs_args(attn_layer, se_rd_ratio, drop_path_rate, drop_block_rate, layers) -> None:
  """Validates SE's reduction and the drop rates: one line naming the parameter."""
  if se_rd_ratio is not None and attn_layer != "se":
    raise ValueError(f"se_rd_ratio applies to attn_layer='se' only, got attn_layer={attn_layer!r}")
  if se_rd_ratio is not None and not (_is_number(se_rd_ratio) and 0 < se_rd_ratio <= 1):
    raise ValueError(f"se_rd_ratio must be a number in (0, 1], got {se_rd_ratio!r}")
  for name, rate in [("drop_path_rate", drop_path_rate), ("drop_block_rate", drop_block_rate)]:
    if not (_is_number(rate) and 0 <= rate < 1):
      raise ValueError(f"{name} must be a number in [0, 1), got {rate!r}")
  if drop_block_rate and len(layers) < 3:
    raise ValueError(
      f"drop_block_rate acts on the third and fourth stages (timm's drop_blocks), and "
      f"layers={tuple(layers)} has {len(layers)}"
    )


def _is_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_block_widths(block_widths, blocks, layers, groups) -> tuple | None:
  """``block_widths`` as tuples, validated: per stage, per block, each conv's output width
  (a bottleneck's three, a basic block's two), every block of a stage ending equally wide."""
  if block_widths is None:
    return None
  if ResNestBottleneck in blocks:
    raise ValueError("block_widths applies to basic and bottleneck blocks, not to 'resnest'")
  if groups != 1:
    raise ValueError(f"block_widths needs groups=1 (ungrouped 3x3 convs), got groups={groups}")
  if not isinstance(block_widths, Sequence) or len(block_widths) != len(layers):
    raise ValueError(
      f"block_widths must have one entry per stage ({len(layers)} for layers={tuple(layers)})"
      f", got {block_widths!r}"
    )
  for i, (stage, depth) in enumerate(zip(block_widths, layers)):
    if not isinstance(stage, Sequence) or len(stage) != depth:
      raise ValueError(f"block_widths[{i}] must have {depth} blocks (layers[{i}]), got {stage!r}")
    block, n = blocks[i], 3 if blocks[i] is Bottleneck else 2
    for j, widths in enumerate(stage):
      ok = isinstance(widths, Sequence) and len(widths) == n
      if not ok or not all(_is_int(w) and w >= 1 for w in widths):
        raise ValueError(
          f"block_widths[{i}][{j}] must be {n} ints >= 1 (the {block.__name__}'s conv widths)"
          f", got {widths!r}"
        )
    ends = sorted({widths[-1] for widths in stage})
    if len(ends) > 1:
      raise ValueError(
        f"block_widths[{i}]: every block of a stage must end equally wide (the residual sum)"
        f", got {ends}"
      )
  return tuple(tuple(tuple(w) for w in stage) for stage in block_widths)


def _per_block_options(
  layers, block_widths, drop_path_rate, drop_block_rate, stream
) -> list[list[dict]]:
  """Per stage, per block: its ``widths`` (None: the nominal ones), ``drop_path`` rate,
  ``drop_block`` (None: none) and the stream they draw from."""
  rates = iter(drop_path_rates(drop_path_rate, layers))
  specs = drop_block_specs(drop_block_rate, len(layers))
  return [
    [
      {
        "widths": block_widths[i][j] if block_widths else None,
        "drop_path": next(rates),
        "drop_block": specs[i],
        "drop_rngs": stream,
      }
      for j in range(depth)
    ]
    for i, depth in enumerate(layers)
  ]


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _check_args(
  *,
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
) -> tuple[type[nnx.Module], ...]:
  """Validates ResNet's arguments (keywords only, as ``_check_timm_args``); returns the block
  class of each stage."""
  _choice("norm", norm, NORMS)
  _choice("stem", stem, STEMS)
  if not layers or any(int(n) < 1 for n in layers):
    raise ValueError(f"layers must be a non-empty sequence of positive ints, got {layers!r}")
  blocks = _stage_blocks(block, len(layers))
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
  if BasicBlock in blocks and (groups != 1 or width_per_group != 64):
    raise ValueError(
      "BasicBlock only supports groups=1 and width_per_group=64, got "
      f"groups={groups}, width_per_group={width_per_group}"
    )
  if BasicBlock in blocks and dilate is not None and any(dilate):
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
  return blocks


def _stage_blocks(block, stages: int) -> tuple[type[nnx.Module], ...]:
  """One block class per stage from ``block``: a class or name for all, or one per stage."""
  each = [block] * stages if isinstance(block, (str, type)) else list(block)
  if len(each) != stages:
    raise ValueError(
      f"block must be one block or one per stage ({stages}), got {len(each)}: {tuple(block)!r}"
    )
  classes = []
  for b in each:
    if isinstance(b, str):
      _choice("block", b, BLOCKS)
      b = BLOCKS[b]
    _choice("block", b, BLOCKS.values())
    classes.append(b)
  return tuple(classes)
