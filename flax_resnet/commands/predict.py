"""Top-5 predictions of a converted checkpoint: ``flax-resnet-predict``.

    flax-resnet-predict --checkpoint DIR IMAGE [IMAGE ...]
    flax-resnet-predict --backend onnxruntime --checkpoint FILE.onnx IMAGE [IMAGE ...]

With ``--backend onnxruntime`` the model is an ONNX file from ``flax-resnet-export``, run on
ONNX Runtime's CPU provider with the preprocessing and class names recorded in it (no JAX).

Every readable image is predicted; each unreadable one gets a line ``error: ...`` on
stderr, and the exit code is then 2.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Sequence
from pathlib import Path

from flax_resnet.cli import EXIT_BAD_INPUT, EXIT_OK, ArgumentParser, positive_int, report
from flax_resnet.predict import read_images, top_k

# JAX, Flax and orbax (2-3 s to import) are imported where they are used: --help and usage
# errors answer at once.


def main(argv: Sequence[str] | None = None) -> int:
  """Prints the top classes of every readable image; exit 2 if any image or the checkpoint
  could not be read (the readable images are still predicted)."""
  parser = ArgumentParser(description=__doc__)
  parser.add_argument(
    "--checkpoint",
    required=True,
    help="directory written by flax-resnet-convert (or flax-resnet-train-export); with "
    "--backend onnxruntime, a .onnx file written by flax-resnet-export",
  )
  parser.add_argument(
    "--backend",
    choices=("jax", "onnxruntime"),
    default="jax",
    help="what runs the model: JAX (a checkpoint directory) or ONNX Runtime (an exported "
    ".onnx file); default: jax",
  )
  parser.add_argument("--batch-size", type=positive_int, default=32)
  parser.add_argument("--top", type=positive_int, default=5, help="how many classes to print")
  parser.add_argument("images", nargs="+")
  args = parser.parse_args(argv)
  try:
    predictor, transform, names, classes = _load(args)
  except (ValueError, OSError) as e:
    return report(e)
  images, paths = read_images(transform, args.images, report)
  if paths:
    k = min(args.top, classes)
    indices, probs = predictor(images, k, max(1, min(args.batch_size, len(images))))
    _print_top(names or [], indices, probs, paths)
  return EXIT_OK if len(paths) == len(args.images) else EXIT_BAD_INPUT


def _load(args):
  """(predict(images, k, batch size), transform, class names, class count) of --checkpoint
  on --backend."""
  if args.backend == "onnxruntime":
    return _load_onnx(args.checkpoint)
  if str(args.checkpoint).endswith(".onnx"):
    raise ValueError(f"--checkpoint {args.checkpoint} is an ONNX file: pass --backend onnxruntime")
  from flax_resnet.caches import enable_compilation_cache
  from flax_resnet.saved_model import load

  enable_compilation_cache()
  model, meta = load(args.checkpoint)
  classes = meta.options.get("num_classes", 1000)
  return functools.partial(top_k, model), meta.transform, meta.categories, classes


def _load_onnx(path: str):
  from flax_resnet.deploy import load_onnx
  from flax_resnet.predict import top_k_onnx
  from flax_resnet.preprocess import EvalTransform

  if Path(path).is_dir():
    raise ValueError(f"--checkpoint {path} is a directory; --backend onnxruntime runs a .onnx file")
  session, record = load_onnx(path)
  try:
    transform = EvalTransform.from_json(record["preprocessing"])
  except (TypeError, ValueError) as e:
    raise ValueError(f"{path}: its recorded preprocessing: {e}") from None
  predictor = functools.partial(top_k_onnx, session, record)
  return predictor, transform, record.get("categories"), record.get("num_classes", 1000)


def _print_top(names, indices, probs, paths) -> None:
  for path, idx, prob in zip(paths, indices, probs):
    print(path)
    for i, p in zip(idx, prob):
      name = names[i] if i < len(names) else f"class {i}"
      print(f"  {p:7.2%}  {i:4d}  {name}")


if __name__ == "__main__":
  sys.exit(main())
