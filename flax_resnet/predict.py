"""Predictions of a model: ``top_k`` classes (on a folded copy) and reading images for it.
``flax-resnet-predict`` (``flax_resnet.commands.predict``) prints them."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from flax_resnet.preprocess import EvalTransform

# JAX and Flax (2-3 s to import) are imported where they are used: a command's --help and
# usage errors answer at once.


def top_k(model, images: np.ndarray, k: int = 5, batch_size: int = 32):
  """(indices, probabilities), each (N, k), from a jitted eval forward in batches.

  The forward runs on an eval-mode copy with BatchNorm folded into the convolutions
  (``fold_batchnorm``), whichever mode ``model`` is in; ``model`` is not changed.
  The last batch is padded to ``batch_size`` so that one compiled program serves all.
  """
  import jax
  from flax import nnx

  graphdef, state = nnx.split(_inference_copy(model))

  @jax.jit
  def probs(state, x):
    logits = nnx.merge(graphdef, state)(x)
    return jax.lax.top_k(jax.nn.softmax(logits.astype(np.float32)), k)

  idx, p = [], []
  for start in range(0, len(images), batch_size):
    chunk = images[start : start + batch_size]
    pad = batch_size - len(chunk)
    padded = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
    top_p, top_i = probs(state, padded)
    p.append(np.asarray(top_p)[: len(chunk)])
    idx.append(np.asarray(top_i)[: len(chunk)])
  return np.concatenate(idx), np.concatenate(p)


def top_k_onnx(session, record: dict, images: np.ndarray, k: int = 5, batch_size: int = 32):
  """``top_k`` of an ONNX export (``deploy.load_onnx``) on ONNX Runtime: NHWC ``images`` fed
  in the layout and dtype its record says, in batches (its fixed one, if it has one)."""
  from flax_resnet.deploy import numpy_dtype

  fixed = record["batch"] if record["batch"] != "dynamic" else None
  batch_size = fixed or batch_size
  idx, p = [], []
  for start in range(0, len(images), batch_size):
    chunk = images[start : start + batch_size]
    x = chunk.transpose(0, 3, 1, 2) if record["layout"] == "NCHW" else chunk
    if fixed:
      x = np.concatenate([x, np.zeros((fixed - len(x), *x.shape[1:]), x.dtype)])
    x = np.ascontiguousarray(x, numpy_dtype(record["input_dtype"]))
    logits = session.run(None, {record["input"]: x})[0][: len(chunk)].astype(np.float64)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    order = np.argsort(-probs, -1, kind="stable")[:, :k]
    idx.append(order)
    p.append(np.take_along_axis(probs, order, -1))
  return np.concatenate(idx), np.concatenate(p)


def _inference_copy(model):
  from flax import nnx

  from flax_resnet.folding import fold_batchnorm
  from flax_resnet.model import BatchNorm, FrozenBatchNorm

  if isinstance(model.bn1, (BatchNorm, FrozenBatchNorm)):
    return fold_batchnorm(model)
  model = nnx.clone(model)
  model.eval()
  return model


def read_images(
  transform: EvalTransform, paths: Sequence[str], on_error: Callable[[ValueError], object]
):
  """(NHWC batch of the readable images or None, their paths); each unreadable one's error
  goes to ``on_error`` as it is met."""
  images, readable = [], []
  for path in paths:
    try:
      images.append(transform.read(path))
      readable.append(path)
    except ValueError as e:
      on_error(e)
  return (np.stack(images) if images else None), readable
