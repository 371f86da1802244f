"""Images/s of the training input pipeline (``flax_resnet.training.data``) on real JPEGs.

    flax-resnet-bench pipeline --data imagenet-samples --workers 0,1,2 --batches 20 --out pipe.json
    flax-resnet-bench pipeline --data cifar10 --workers 0,1,2 --batches 40 --out pipe.json
    flax-resnet-bench pipeline --auto-augment ta_wide --random-erase 0.1 --workers 0,1,2 ...

``imagenet-samples``: the 102 ImageNet JPEGs of ../shared/data (about 500x375,
decoded in full, random-resized-cropped to 224, flipped, normalised), the work
of an ImageNet epoch per image; ``--auto-augment`` and ``--random-erase`` add
torchvision's per-image policy and the erasing box (``flax_resnet.training.augment``).
``cifar10``: CIFAR-10-JPEG train images (32x32, pad-and-crop + flip). Batches
arrive in waves: every reader (each worker, or the main process without
workers) decodes ``prefetch`` batches at once, and they come together; the
timed batches after ``--warmup`` untimed ones are rounded up to whole waves, so
that the rate counts each wave's wait once. Start-up is reported apart: the
first batch's arrival and when each worker process was ready. One JSON line per
worker count; each also holds ``stage_ms``, what an image costs a core in each
stage (decode, crop and flip, policy, erase box), timed in the main process
before the workers start (``stage_costs``).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from flax_resnet.bench.datasets import CIFAR_ARCHIVE, unpack_cifar
from flax_resnet.bench.results import DATA_ENV, data_root, emit
from flax_resnet.choices import AUTO_AUGMENTS
from flax_resnet.cli import ArgumentParser
from flax_resnet.training import augment, config as config_lib, data, shards
from flax_resnet.training.sources import open_split

# TrainSample's stages, in its order, as stage_costs times them
STAGES = ("decode", "crop_flip", "policy", "erase_box")
STAGE_IMAGES = 100


def parse_args(argv=None) -> argparse.Namespace:
  p = ArgumentParser(description=__doc__)
  p.add_argument("--data", choices=["imagenet-samples", "cifar10"], default="imagenet-samples")
  p.add_argument(
    "--data-root",
    type=Path,
    default=data_root(),
    help=f"the data folder (default: ${DATA_ENV}, else ../shared/data from the current directory)",
  )
  p.add_argument("--workers", default="0,1", help="comma-separated decoding process counts")
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--batches", type=int, default=20, help="timed batches per worker count")
  p.add_argument("--warmup", type=int, default=1, help="untimed batches first (at least 1)")
  p.add_argument("--cifar-images", type=int, default=5000, help="train images to unpack")
  p.add_argument(
    "--format",
    default="folder",
    choices=["folder", "shards", "both"],
    help="read the JPEG files, ArrayRecord shards of them (flax-resnet-shards), or both",
  )
  p.add_argument(
    "--auto-augment",
    default="none",
    choices=AUTO_AUGMENTS,
    help="the per-image policy after crop and flip (Config.auto_augment)",
  )
  p.add_argument(
    "--random-erase",
    type=float,
    default=0.0,
    help="probability of drawing a random erasing box (Config.random_erase)",
  )
  p.add_argument("--out", type=Path, help="append JSON lines here")
  args = p.parse_args(argv)
  try:
    args.workers = [int(w) for w in args.workers.split(",")]
  except ValueError:
    p.error(f"--workers {args.workers}: expected comma-separated integers")
  if min(args.workers) < 0 or args.batch < 1 or args.batches < 1:
    p.error("--workers must be >= 0, --batch and --batches >= 1")
  if not 0 <= args.random_erase <= 1:
    p.error(f"--random-erase {args.random_erase}: expected a probability in [0, 1]")
  return args


def pipeline_config(args: argparse.Namespace, where: Path, size: int, workers: int):
  """The trainer's Config the pipeline is measured under: the folder, crop size, batch,
  workers and augmentations of the command line."""
  return config_lib.Config(
    data_dir=str(where),
    image_size=size,
    global_batch=args.batch,
    workers=workers,
    auto_augment=args.auto_augment,
    random_erase=args.random_erase,
  )


def imagenet_folder(root: Path, dest: Path) -> Path:
  """An ImageFolder of links to the sample JPEGs, one class per synset."""
  labels = root / "imagenet-samples" / "labels.csv"
  if not labels.is_file():
    raise ValueError(f"{labels} not found: set --data-root or {DATA_ENV}")
  with open(labels) as f:
    for row in csv.DictReader(f):
      (dest / "train" / row["synset"]).mkdir(parents=True, exist_ok=True)
      (dest / "train" / row["synset"] / row["file"]).symlink_to(
        root / "imagenet-samples" / row["file"]
      )
  return dest


def cifar_folder(root: Path, dest: Path, limit: int) -> Path:
  """The first ``limit`` train JPEGs of the CIFAR-10-JPEG tarball, unpacked."""
  if not (root / CIFAR_ARCHIVE).is_file():
    raise ValueError(f"{root / CIFAR_ARCHIVE} not found: set --data-root or {DATA_ENV}")
  return unpack_cifar(root, dest, {"train": limit}, per_class=False)


class WorkerStart:
  """Run first in each worker process: writes when it got there and what it had imported.

  A spawned worker imports what unpickling the pipeline needs before this runs, so
  its time since the iterator was made is the worker's start-up.
  """

  HEAVY = ("jax", "flax", "orbax.checkpoint", "optax", "torch", "tensorflow")

  def __init__(self, folder: Path, start: float):
    self.folder, self.start = folder, start

  def __call__(self, index: int, count: int) -> None:
    record = {
      "worker": index,
      "ready_s": time.time() - self.start,
      "imported": [m for m in self.HEAVY if m in sys.modules],
    }
    (self.folder / f"worker-{index}.json").write_text(json.dumps(record))


def worker_starts(folder: Path) -> dict:
  """The slowest worker's start-up and the heavy modules the workers had imported."""
  records = [json.loads(p.read_text()) for p in sorted(folder.glob("worker-*.json"))]
  if not records:
    return {}
  return {
    "workers_ready_s_max": max(r["ready_s"] for r in records),
    "workers_ready_s_min": min(r["ready_s"] for r in records),
    "worker_imports": sorted({m for r in records for m in r["imported"]}),
  }


def measure(cfg, batches: int, warmup: int) -> dict:
  """Start-up times and the steady images/s over ``batches`` batches after ``warmup``,
  rounded up to whole waves of ``prefetch`` batches from each reader.

  On 2 cores, 16 workers at batch 256 delivered 32 batches within 0.5 s, then nothing
  for 8.5 s: a window of 20 batches inside a wave measured 5,800 img/s where the
  machine decodes about 900.
  """
  wave = max(cfg.workers, 1) * cfg.prefetch
  batches = -(-batches // wave) * wave
  start = time.perf_counter()
  # Beside the split folders, in the data folder that main() removes at the end.
  reports = Path(tempfile.mkdtemp(prefix="workers-", dir=cfg.data_dir))
  iterator, _ = data.train_batches(cfg.data, 0, 1, worker_init=WorkerStart(reports, time.time()))
  next(iterator)
  first = time.perf_counter() - start
  for _ in range(max(warmup, 1) - 1):
    next(iterator)
  stamps = [time.perf_counter()]
  for _ in range(batches):
    batch = next(iterator)
    stamps.append(time.perf_counter())
  if batch["image"].shape != (cfg.global_batch, cfg.image_size, cfg.image_size, 3):
    raise RuntimeError(f"the pipeline gave a batch of shape {batch['image'].shape}")
  seconds = stamps[-1] - stamps[0]
  return {
    "images_per_s": batches * cfg.global_batch / seconds,
    "timed_s": seconds,
    "timed_batches": batches,
    "warmup_batches": warmup,
    "startup_s": first,
    "dtype": str(batch["image"].dtype),
    **worker_starts(reports),
  }


def stage_costs(cfg, images: int = STAGE_IMAGES) -> dict[str, float]:
  """Milliseconds per image of each of ``data.TrainSample``'s stages, timed one after the
  other in this process over the split's first ``images`` images: reading and decoding,
  the crop and flip, the policy and the erase box. What each image costs a core, whatever
  the pipeline's workers and waves."""
  source = open_split(cfg.data_dir, cfg.train_split)
  sample = data.train_sample(cfg.data, source)
  rng, spent = np.random.default_rng(cfg.seed), dict.fromkeys(STAGES, 0.0)

  def timed(stage, run, *args):
    start = time.perf_counter()
    out = run(*args)
    spent[stage] += time.perf_counter() - start
    return out

  count = min(images, len(source))
  for i in range(count):
    image, _ = timed("decode", source.read, i)
    x = timed("crop_flip", sample.crop_and_flip, image, rng)
    if sample.policy is not None:  # as TrainSample applies it: PIL image in, array out
      timed("policy", lambda x: np.asarray(sample.policy(Image.fromarray(x), rng)), x)
    timed("erase_box", augment.erase_box, cfg.image_size, cfg.image_size, cfg.random_erase, rng)
  return {stage: 1e3 * seconds / count for stage, seconds in spent.items()}


def sources(layout: str, folder: Path, tmp: Path) -> list[tuple[str, Path]]:
  """(format, data_dir) to read: the folder, its shards (written here first), or both."""
  out = []
  if layout in ("folder", "both"):
    out.append(("folder", folder))
  if layout in ("shards", "both"):
    shards.convert(str(folder), str(tmp / "shards"), ["train"], 1024, log=lambda _: None)
    out.append(("shards", tmp / "shards"))
  return out


def main(argv=None) -> int:
  args = parse_args(argv)
  with tempfile.TemporaryDirectory() as tmp:
    try:
      if args.data == "imagenet-samples":
        root, size = imagenet_folder(args.data_root, Path(tmp)), 224
      else:
        root, size = cifar_folder(args.data_root, Path(tmp), args.cifar_images), 32
    except ValueError as e:
      print(f"error: {e}", file=sys.stderr)
      return 2
    for layout, where in sources(args.format, root, Path(tmp)):
      stages = stage_costs(pipeline_config(args, where, size, 0))
      for workers in args.workers:
        cfg = pipeline_config(args, where, size, workers)
        result = {
          "bench": "pipeline",
          "data": args.data,
          "format": layout,
          "image_size": size,
          "workers": workers,
          "batch": args.batch,
          "batches": args.batches,
          "auto_augment": args.auto_augment,
          "random_erase": args.random_erase,
          **measure(cfg, args.batches, args.warmup),
          "stage_ms": stages,
          "cpu_count": os.cpu_count(),
          "cpu": platform.processor() or platform.machine(),
        }
        emit([result], args.out)
    # grain's prefetch threads outlive the measurement; quiet them as the folder goes.
    logging.getLogger(data.__name__).setLevel(logging.ERROR)
  return 0


if __name__ == "__main__":
  sys.exit(main())
