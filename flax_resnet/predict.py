"""Top-5 predictions of a converted checkpoint.

    python -m flax_resnet.predict --checkpoint DIR IMAGE [IMAGE ...]
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

import jax
import numpy as np
from flax import nnx

from flax_resnet.checkpoint import load
from flax_resnet.preprocess import EvalTransform
from flax_resnet.xla_cache import enable_compilation_cache


def top_k(model, images: np.ndarray, k: int = 5, batch_size: int = 32):
  """(indices, probabilities), each (N, k), from a jitted eval forward in batches.

  The last batch is padded to ``batch_size`` so that one compiled program serves all.
  """
  model.eval()
  graphdef, state = nnx.split(model)

  @jax.jit
  def probs(state, x):
    logits = nnx.merge(graphdef, state)(x)
    return jax.lax.top_k(jax.nn.softmax(logits.astype(np.float32)), k)

  idx, p = [], []
  for start in range(0, len(images), batch_size):
    chunk = images[start:start + batch_size]
    pad = batch_size - len(chunk)
    padded = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
    top_p, top_i = probs(state, padded)
    p.append(np.asarray(top_p)[:len(chunk)])
    idx.append(np.asarray(top_i)[:len(chunk)])
  return np.concatenate(idx), np.concatenate(p)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--checkpoint", required=True, help="directory written by torch2flax")
  parser.add_argument("--batch-size", type=int, default=32)
  parser.add_argument("--top", type=int, default=5, help="how many classes to print")
  parser.add_argument("images", nargs="+")
  args = parser.parse_args(argv)
  enable_compilation_cache()
  try:
    model, meta = load(args.checkpoint)
    transform = EvalTransform.from_json(meta.get("preprocessing") or {})
    images = transform.load(args.images)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  names = meta.get("categories") or []
  batch = max(1, min(args.batch_size, len(images)))
  indices, probs = top_k(model, images, min(args.top, meta["options"].get("num_classes", 1000)),
                         batch)
  for path, idx, prob in zip(args.images, indices, probs):
    print(path)
    for i, p in zip(idx, prob):
      name = names[i] if i < len(names) else f"class {i}"
      print(f"  {p:7.2%}  {i:4d}  {name}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
