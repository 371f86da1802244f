"""Multiply-adds counted from a model's own computation, and XLA's FLOP estimate."""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax.extend import core


def _eval_forward(model: nnx.Module):
  """A pure function (state, x) -> model(x) in eval mode, and the model's state."""
  graphdef, state = nnx.split(model)

  def forward(state, x):
    m = nnx.merge(graphdef, state)
    m.eval()
    return m(x)

  return forward, state


def count_macs(
  model: nnx.Module, input_shape: Sequence[int] = (1, 224, 224, 3), count_padding: bool = True
) -> int:
  """Multiply-adds of all convolutions and matrix products for one forward pass.

  Read off the traced computation (nothing runs), so it counts exactly what the
  model does, grouped and dilated convs included. torchvision's published
  "GFLOPS" are this figure for one 224x224 image, divided by 1e9. With
  ``count_padding=False`` kernel taps that land on zero padding are left out, as
  XLA's cost analysis does.
  """
  forward, state = _eval_forward(model)
  x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
  return _jaxpr_macs(jax.make_jaxpr(forward)(state, x).jaxpr, count_padding)


def _conv_macs(eqn, count_padding: bool) -> int:
  lhs, rhs = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape
  out = eqn.outvars[0].aval.shape
  lhs_spec, rhs_spec, out_spec = eqn.params["dimension_numbers"]
  macs = out[out_spec[0]] * out[out_spec[1]] * rhs[rhs_spec[1]]  # N * Cout * Cin/groups
  for i in range(2, len(out)):
    size, k, n_out = lhs[lhs_spec[i]], rhs[rhs_spec[i]], out[out_spec[i]]
    if count_padding:
      macs *= k * n_out
      continue
    stride, dilation = eqn.params["window_strides"][i - 2], eqn.params["rhs_dilation"][i - 2]
    low = eqn.params["padding"][i - 2][0]
    macs *= sum(0 <= o * stride - low + t * dilation < size for o in range(n_out) for t in range(k))
  return macs


def _jaxpr_macs(jaxpr, count_padding: bool) -> int:
  total = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "conv_general_dilated":
      total += _conv_macs(eqn, count_padding)
    elif eqn.primitive.name == "dot_general":
      (lhs_contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      total += math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in lhs_contract)
    for sub in jax.tree.leaves(list(eqn.params.values()), is_leaf=_is_jaxpr):
      if _is_jaxpr(sub):
        total += _jaxpr_macs(getattr(sub, "jaxpr", sub), count_padding)
  return total


def _is_jaxpr(x) -> bool:
  return isinstance(x, (core.Jaxpr, core.ClosedJaxpr))


def xla_flops(model: nnx.Module, input_shape: Sequence[int] = (1, 224, 224, 3)) -> float:
  """XLA's cost-analysis FLOPs for the jitted eval forward pass (about 2x MACs)."""
  forward, state = _eval_forward(model)
  x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
  analysis = jax.jit(forward).lower(state, x).cost_analysis()
  if analysis is None:  # a backend without a cost model
    raise RuntimeError("XLA's cost analysis is not available on this backend")
  return float(analysis["flops"])
