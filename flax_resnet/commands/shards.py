"""``flax-resnet-shards``: ImageFolder splits as ArrayRecord shards (``training/shards.py``)."""

from __future__ import annotations

import sys

from flax_resnet.cli import ArgumentParser, positive_int, report, with_flags
from flax_resnet.training import shards


def main(argv=None) -> int:
  """Parses the arguments, writes the shards, and answers 0, or 2 in one line."""
  p = ArgumentParser(description=shards.__doc__)
  p.add_argument("--folder", required=True, help="holds <split>/<class>/<image> files")
  p.add_argument("--out", required=True, help="where the shards go (a path or gs://...)")
  p.add_argument("--splits", default="train,val", help="comma-separated split folders")
  p.add_argument("--records-per-shard", type=positive_int, default=1024)
  args = p.parse_args(argv)
  try:
    shards.convert(
      args.folder,
      args.out,
      args.splits.split(","),
      args.records_per_shard,
      log=lambda line: print(line, flush=True),
    )
  except (ValueError, OSError) as e:  # the library names its parameters, this its flags
    return report(with_flags(e, {"per_shard": "--records-per-shard", "out": "--out"}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
