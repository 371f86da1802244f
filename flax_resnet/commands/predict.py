"""Top-5 predictions of a converted checkpoint: ``flax-resnet-predict``.

    flax-resnet-predict --checkpoint DIR IMAGE [IMAGE ...]

Every readable image is predicted; each unreadable one gets a line ``error: ...`` on
stderr, and the exit code is then 2.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from flax_resnet.cli import EXIT_BAD_INPUT, EXIT_OK, ArgumentParser, positive_int, report
from flax_resnet.predict import read_images, top_k

# JAX, Flax and orbax (2-3 s to import) are imported where they are used: --help and usage
# errors answer at once.


def main(argv: Sequence[str] | None = None) -> int:
  """Prints the top classes of every readable image; exit 2 if any image or the checkpoint
  could not be read (the readable images are still predicted)."""
  parser = ArgumentParser(description=__doc__)
  parser.add_argument("--checkpoint", required=True, help="directory written by torch2flax")
  parser.add_argument("--batch-size", type=positive_int, default=32)
  parser.add_argument("--top", type=positive_int, default=5, help="how many classes to print")
  parser.add_argument("images", nargs="+")
  args = parser.parse_args(argv)
  from flax_resnet.caches import enable_compilation_cache
  from flax_resnet.saved_model import load

  enable_compilation_cache()
  try:
    model, meta = load(args.checkpoint)
    transform = meta.transform
  except (ValueError, OSError) as e:
    return report(e)
  images, paths = read_images(transform, args.images, report)
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
