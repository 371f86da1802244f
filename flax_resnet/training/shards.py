"""ImageFolder splits as ArrayRecord shards, the random-access format Grain reads at pod scale.

    flax-resnet-shards --folder DATA --out SHARDS --splits train,val

``SHARDS/classes.json`` holds the class names (the sorted folder names: label i is
name i). ``SHARDS/<split>/<split>-NNNNN-of-MMMMM.array_record`` hold one record per
image: its label, its path under the split, and the file's bytes as they are (JPEG
stays JPEG). Record k of the shards in order is image k of the folder's file order,
so a run on the shards reads the same images in the same batches as a run on the
folder. ``SHARDS/<split>/index.json`` lists the shards and marks the split complete.

Each shard is written under a temporary name and renamed when complete, so an
interrupted conversion resumes where it stopped. Paths go through ``etils.epath``:
``gs://`` works where its libraries are installed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from etils import epath

from flax_resnet.errors import ArgumentError, literal
from flax_resnet.training.shard_format import (
  CLASSES,
  INDEX,
  SUFFIX,
  array_record_error,
  decode,
  encode,
)
from flax_resnet.training.sources import ImageFolder, read_classes


def shard_plan(count: int, per_shard: int) -> list[tuple[int, int]]:
  """(first, end) record of each shard: consecutive runs of ``per_shard``."""
  return [(start, min(start + per_shard, count)) for start in range(0, count, per_shard)] or [
    (0, 0)
  ]


def write_split(
  folder: ImageFolder, out: epath.Path, per_shard: int, log: Callable[[str], None] = print
) -> int:
  """Writes ``folder`` (a ``sources.ImageFolder``) as shards in ``out``; returns how many
  shards were written now (the others were complete already)."""
  from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter

  out.mkdir(parents=True, exist_ok=True)
  plan = shard_plan(len(folder), per_shard)
  names = [f"{out.name}-{j:05d}-of-{len(plan):05d}{SUFFIX}" for j in range(len(plan))]
  stale = sorted(p.name for p in out.glob(f"*{SUFFIX}") if p.name not in names)
  if stale:
    raise ArgumentError(
      f"{literal(str(out))} holds shards of another layout ({literal(stale[0])}, ...): remove "
      "them, or convert with the {per_shard} that wrote them"
    )
  done, written, start = 0, 0, time.perf_counter()
  for name, (first, end) in zip(names, plan):
    final = out / name
    problem = _shard_problem(ArrayRecordReader, final, end - first)
    if problem is None:
      done += end - first
      continue
    if final.exists():
      log(f"{final}: {problem}: rewriting it")
    tmp = out / f".{name}.tmp"
    writer = ArrayRecordWriter(str(tmp), "group_size:1")
    for i in range(first, end):
      path = epath.Path(folder.files[i])
      writer.write(encode(folder.labels[i], f"{path.parent.name}/{path.name}", path.read_bytes()))
    writer.close()
    tmp.replace(final)
    done, written = done + end - first, written + 1
    _progress(log, out, done, len(folder), written, start)
  index = {
    "shards": names,
    "records": len(folder),
    "records_per_shard": per_shard,
    "source": str(folder.root),
  }
  _write_text(out / INDEX, json.dumps(index, indent=1) + "\n")
  return written


def _shard_problem(reader_class, path, count: int) -> str | None:
  """Why shard ``path`` must be (re)written, or None where it holds ``count`` sound records.

  Each record is read back: its chunk hash and our header are checked, which costs a
  read of the shard, far less than writing it from the image files.
  """
  if not path.exists():
    return "missing"
  try:
    reader = reader_class(str(path))
    try:
      if reader.num_records() != count:
        return f"holds {reader.num_records()} records, not {count}"
      for record in reader.read_all():
        decode(record)
    finally:
      reader.close()  # a truncated file's error comes here, with no message
  except (RuntimeError, ValueError) as e:
    return f"truncated or damaged ({array_record_error(e)})"
  return None


def _progress(log, out, done: int, total: int, written: int, start: float) -> None:
  rate = done / max(time.perf_counter() - start, 1e-9)
  log(
    f"{out.name}: {done}/{total} images ({written} shards written now), "
    f"{rate:.0f} images/s, ETA {(total - done) / max(rate, 1e-9):.0f} s"
  )


def _write_text(path, text: str) -> None:
  # files.write_atomic takes local paths only; this one also writes to gs://.
  tmp = path.parent / f".{path.name}.tmp"
  tmp.write_text(text)
  tmp.replace(path)


def write_classes(out, classes: tuple[str, ...]) -> None:
  """``classes.json``, or a check that the one there (from an earlier run) is the same."""
  path = out / CLASSES
  if path.exists():
    old = read_classes(out)
    if old != tuple(classes):
      raise ArgumentError(
        f"{literal(str(path))} lists other classes ({len(old)}) than the folder ("
        f"{len(classes)}): convert into an empty {{out}}"
      )
    return
  out.mkdir(parents=True, exist_ok=True)
  _write_text(path, json.dumps(list(classes)) + "\n")


def convert(
  folder: str, out: str, splits: list[str], per_shard: int, log: Callable[[str], None] = print
) -> None:
  """Every split of ImageFolder ``folder`` into shards under ``out``."""
  folders = {split: ImageFolder.scan(epath.Path(folder) / split) for split in splits}
  classes = {tuple(f.classes) for f in folders.values()}
  if len(classes) > 1:
    raise ValueError(f"the splits of {folder} have different class folders: {sorted(splits)}")
  root = epath.Path(out)
  write_classes(root, classes.pop())
  for split, source in folders.items():
    written = write_split(source, root / split, per_shard, log)
    log(f"{split}: {len(source)} images in {root / split} ({written} shards written now)")
