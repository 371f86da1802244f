"""BatchNorm folded into the convolution before it, for inference.

With running statistics a norm is ``x * a + b`` per channel. Every norm of a ResNet
follows a convolution, so ``a`` can scale that convolution's output channels (and its
bias, where it has one: ResNeSt's ``conv2.fc1``) once, ahead of time, and the norm shrinks
to a bias: one elementwise pass fewer per layer, and on GPUs the bias and the ReLU after it
fuse into the convolution's kernel.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from flax_resnet.model import BatchNorm, FrozenBatchNorm, ResNet, Sequential, SplitAttention


class FoldedNorm(nnx.Module):
  """What is left of a norm folded into the convolution before it: a per-channel bias.

  The bias is an ``nnx.BatchStat``, as a folded model is for inference only: an
  optimiser over ``nnx.Param`` has nothing to train in it.
  """

  def __init__(self, bias: jax.Array, dtype=None):
    self.bias = nnx.BatchStat(bias)
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    dtype = self.dtype or x.dtype
    return x.astype(dtype) + self.bias[...].astype(dtype)


def fold_batchnorm(model: ResNet) -> ResNet:
  """A copy of ``model`` for inference, each BatchNorm folded into the conv before it.

  Its logits equal the eval-mode logits of ``model`` within float32 rounding
  (tests/test_parity.py holds them to torchvision's own float32 accuracy on all ten
  architectures). ``model`` itself is not changed. The copy keeps the attribute
  paths, with ``FoldedNorm`` in place of each norm; it cannot be trained or saved
  as a flax-resnet checkpoint: fold after loading, not before saving.
  """
  if not isinstance(model, ResNet):
    raise TypeError(f"fold_batchnorm takes a flax_resnet ResNet, got {type(model).__name__}")
  folded = nnx.clone(model)
  folded.eval()
  for (conv_owner, conv_name), (owner, norm_name) in _conv_norm_pairs(folded):
    conv, norm = _child(conv_owner, conv_name), _child(owner, norm_name)
    if not isinstance(norm, (BatchNorm, FrozenBatchNorm)):
      raise ValueError(
        f"fold_batchnorm: {norm_name} is {type(norm).__name__}, not a BatchNorm; "
        "only norm='batch' or 'frozen_batch' models can be folded"
      )
    _set_child(owner, norm_name, _fold(conv, norm))
  return folded


def _fold(conv: nnx.Conv, norm) -> FoldedNorm:
  f = jnp.promote_types(norm.var.dtype, conv.kernel.dtype)
  a = norm.scale[...].astype(f) * jax.lax.rsqrt(norm.var[...].astype(f) + norm.epsilon)
  b = norm.bias[...].astype(f) - norm.mean[...].astype(f) * a
  kernel = conv.kernel[...]
  conv.kernel.set_value((kernel.astype(f) * a).astype(kernel.dtype))  # HWIO: a scales O
  if conv.bias is not None:
    conv.bias.set_value((conv.bias[...].astype(f) * a).astype(conv.bias.dtype))
  return FoldedNorm(b.astype(norm.var.dtype), norm.dtype)


def _conv_norm_pairs(model: ResNet):
  """((owner, conv attribute), (owner, norm attribute)) for every conv followed by a norm:
  timm's deep stem (``conv1[0]`` and ``conv1[1]``... ``conv1[6]`` and ``bn1``), its conv
  pool (``maxpool[0]`` and its norm), average-pool shortcuts (``downsample[1]`` and
  ``downsample[2]``) and ResNeSt's split attention (``conv2.conv`` and ``conv2.bn0``,
  ``conv2.fc1`` and ``conv2.bn1``) included."""
  if isinstance(model.conv1, Sequential):
    yield from (((model.conv1, i), (model.conv1, i + 1)) for i in (0, 3))
    yield (model.conv1, 6), (model, "bn1")
  else:
    yield (model, "conv1"), (model, "bn1")
  pool = getattr(model, "maxpool", None)
  if isinstance(pool, Sequential) and isinstance(pool[0], nnx.Conv):
    # the conv pool's norm is last but its ReLU, after an aa module if any: a per-channel
    # scale passes through an average or a blur unchanged
    yield (pool, 0), (pool, len(pool) - 2)
  for stage in model.stages:
    for block in stage:
      for i in range(1, 4):
        conv = getattr(block, f"conv{i}", None)
        if isinstance(conv, SplitAttention):
          yield from (((conv, c), (conv, n)) for c, n in (("conv", "bn0"), ("fc1", "bn1")))
        elif conv is not None:
          yield (block, f"conv{i}"), (block, f"bn{i}")
      if block.downsample is not None:
        n = len(block.downsample)
        yield (block.downsample, n - 2), (block.downsample, n - 1)


def _child(owner, name):
  return owner[name] if isinstance(name, int) else getattr(owner, name)


def _set_child(owner, name, value) -> None:
  if isinstance(name, int):
    owner[name] = value
  else:
    setattr(owner, name, value)
