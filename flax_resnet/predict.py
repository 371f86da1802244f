"""Top-5 predictions of a converted checkpoint.

    python -m flax_resnet.predict --checkpoint DIR IMAGE [IMAGE ...]

Every readable image is predicted; each unreadable one gets a line ``error: ...`` on
stderr, and the exit code is then 2.
"""

from __future__ import annotations

import sys
from typing import Sequence

import numpy as np

from flax_resnet.cli import EXIT_BAD_INPUT, EXIT_OK, ArgumentParser, positive_int, report
from flax_resnet.preprocess import EvalTransform, open_image

# JAX, Flax and orbax (2-3 s to import) are imported where they are used: --help and usage
# errors answer at once.


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
    chunk = images[start:start + batch_size]
    pad = batch_size - len(chunk)
    padded = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
    top_p, top_i = probs(state, padded)
    p.append(np.asarray(top_p)[:len(chunk)])
    idx.append(np.asarray(top_i)[:len(chunk)])
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


def read_images(transform: EvalTransform, paths: Sequence[str]):
  """(NHWC batch of the readable images, their paths); each unreadable one is reported on
  stderr in one line as it is met."""
  images, readable = [], []
  for path in paths:
    try:
      images.append(transform(open_image(path)))
      readable.append(path)
    except ValueError as e:
      report(e)
  return (np.stack(images) if images else None), readable


def main(argv: Sequence[str] | None = None) -> int:
  """Prints the top classes of every readable image; exit 2 if any image or the checkpoint
  could not be read (the readable images are still predicted)."""
  parser = ArgumentParser(description=__doc__)
  parser.add_argument("--checkpoint", required=True, help="directory written by torch2flax")
  parser.add_argument("--batch-size", type=positive_int, default=32)
  parser.add_argument("--top", type=positive_int, default=5, help="how many classes to print")
  parser.add_argument("images", nargs="+")
  args = parser.parse_args(argv)
  from flax_resnet.saved_model import load
  from flax_resnet.caches import enable_compilation_cache
  enable_compilation_cache()
  try:
    model, meta = load(args.checkpoint)
    transform = meta.transform
  except (ValueError, OSError) as e:
    return report(e)
  images, paths = read_images(transform, args.images)
  if paths:
    _print_top(model, meta, images, paths, args)
  return EXIT_OK if len(paths) == len(args.images) else EXIT_BAD_INPUT


def _print_top(model, meta, images, paths, args) -> None:
  names = meta.categories or []
  k = min(args.top, meta.options.get("num_classes", 1000))
  indices, probs = top_k(model, images, k, max(1, min(args.batch_size, len(images))))
  for path, idx, prob in zip(paths, indices, probs):
    print(path)
    for i, p in zip(idx, prob):
      name = names[i] if i < len(names) else f"class {i}"
      print(f"  {p:7.2%}  {i:4d}  {name}")


if __name__ == "__main__":
  sys.exit(main())
