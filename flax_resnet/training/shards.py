"""ImageFolder splits as ArrayRecord shards, the random-access format Grain reads at pod scale.

    python train/shards.py --folder DATA --out SHARDS --splits train,val

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

import io
import json
import struct
import sys
import time

from etils import epath

from flax_resnet.cli import ArgumentParser, positive_int, report
from flax_resnet.errors import one_line
from flax_resnet.preprocess import open_image
from flax_resnet.training.folder import ImageFolder

INDEX, CLASSES, SUFFIX = "index.json", "classes.json", ".array_record"
_HEADER = struct.Struct("<4sIH")  # magic, label, length of the path that follows
_MAGIC = b"FRS1"


def encode(label: int, name: str, data: bytes) -> bytes:
  """One record: header, the image's path under its split, the file's bytes."""
  path = name.encode()
  return _HEADER.pack(_MAGIC, label, len(path)) + path + data


def decode(record: bytes) -> tuple[int, str, bytes]:
  """(label, path, file bytes) of a record; ``ValueError`` if it is not one of ours."""
  if len(record) < _HEADER.size:
    raise ValueError(f"record of {len(record)} bytes is shorter than its header")
  magic, label, length = _HEADER.unpack_from(record)
  if magic != _MAGIC:
    raise ValueError(f"record does not start with {_MAGIC!r}: not written by train/shards.py")
  start = _HEADER.size + length
  return label, record[_HEADER.size:start].decode(errors="replace"), record[start:]


def is_shards(split_dir: str) -> bool:
  """Whether ``split_dir`` holds a complete split of shards (its index.json); a
  ``ValueError`` if it holds shards but no index: a conversion that did not finish."""
  root = epath.Path(split_dir)
  if (root / INDEX).exists():
    return True
  if root.is_dir() and any(root.glob(f"*{SUFFIX}")):
    raise ValueError(f"{root} holds shards but no {INDEX}: their conversion did not finish; "
                     "run train/shards.py again to complete it")
  return False


class Shards:
  """One split of shards as a random-access image source, like ``data.ImageFolder``.

  Picklable: Grain's worker processes each open their own readers.
  """

  def __init__(self, split_dir: str):
    import grain
    self.root = epath.Path(split_dir)
    index = json.loads((self.root / INDEX).read_text())
    self.classes = tuple(json.loads((self.root.parent / CLASSES).read_text()))
    self.shards = [str(self.root / name) for name in index["shards"]]
    self.count = index["records"]
    try:
      self.source = grain.sources.ArrayRecordDataSource(self.shards)
    except RuntimeError:  # array_record's, naming no file or only the first missing one
      raise ValueError(_first_damaged_shard(self.shards)) from None
    if len(self.source) != self.count:
      raise ValueError(f"{self.root}: the shards hold {len(self.source)} records, index.json "
                       f"says {self.count}")

  def __len__(self) -> int:
    return self.count

  def read(self, i: int):
    """(8-bit RGB image, label) of record ``i``; ``ValueError`` naming it if unreadable."""
    label, name, data = decode(self._record(i))
    return open_image(io.BytesIO(data), name=f"{self.root}/{name} (record {i})"), label

  def _record(self, i: int) -> bytes:
    """Record ``i``'s bytes, a ``ValueError`` naming it where they are damaged: array_record
    raises ``RuntimeError`` for a chunk whose hash does not match, and the trainer skips
    only ``ValueError``s, as it does unreadable images."""
    try:
      record = self.source[i]
      decode(record)
    except (RuntimeError, ValueError) as e:
      raise ValueError(f"cannot read record {i} of {self.root}: {one_line(e)[:300]}") from None
    return record

  def name(self, i: int) -> str:
    """What the record is called in messages: its image's path and record number."""
    try:
      return f"{self.root}/{decode(self._record(i))[1]} (record {i})"
    except ValueError:
      return f"record {i} of {self.root}"


def check_classes(source: Shards) -> None:
  """Each label's name in ``classes.json`` against the class folder its records came from;
  a ``ValueError`` naming the file if they differ (it was edited, or is of other shards).

  train/shards.py writes records in class order, so a bisection reads only about
  classes * log2(images per class) records to meet the first and last record of
  every label; unreadable records are passed over (the trainer skips them).
  """
  names, seen = tuple(source.classes), {}
  where = f"{source.root.parent / CLASSES}"

  def label_at(i: int) -> int | None:
    if i not in seen:
      try:
        label, path, _ = decode(source.source[i])
      except (ValueError, RuntimeError):
        seen[i] = None
        return None
      folder = path.split("/")[0]
      if label >= len(names) or names[label] != folder:
        listed = f"names label {label} {names[label]!r}" if label < len(names) else (
            f"lists {len(names)} classes, no label {label}")
        raise ValueError(f"{where} {listed}, but record {i} of {source.root} is "
                         f"{path!r} with label {label}: the file was edited or belongs to "
                         "other shards; write the shards again with train/shards.py")
      seen[i] = label
    return seen[i]

  spans = [(0, len(source) - 1)] if len(source) else []
  while spans:
    lo, hi = spans.pop()
    first, last = label_at(lo), label_at(hi)
    if hi - lo > 1 and (first is None or first != last):
      spans += [(lo, (lo + hi) // 2), ((lo + hi) // 2, hi)]
  labels = {label for label in seen.values() if label is not None}
  if labels and max(labels) + 1 != len(names):
    raise ValueError(f"{where} lists {len(names)} classes, but the records of {source.root} "
                     f"have labels 0 to {max(labels)}: the file was edited or belongs to "
                     "other shards; write the shards again with train/shards.py")


def _first_damaged_shard(paths: list[str]) -> str:
  """Why the first unreadable shard of ``paths`` cannot be read, in one line naming it."""
  from array_record.python.array_record_module import ArrayRecordReader
  for path in paths:
    if not epath.Path(path).exists():
      return f"shard {path} is missing: run train/shards.py again to write it"
    try:
      _records(ArrayRecordReader, path)
    except RuntimeError as e:
      return (f"shard {path} is truncated or damaged ({_why(e)}): run "
              "train/shards.py again to rewrite it")
  return f"the shards of {epath.Path(paths[0]).parent} cannot be opened"


def shard_plan(count: int, per_shard: int) -> list[tuple[int, int]]:
  """(first, end) record of each shard: consecutive runs of ``per_shard``."""
  return [(start, min(start + per_shard, count)) for start in range(0, count, per_shard)] or \
      [(0, 0)]


def write_split(folder, out, per_shard: int, log=print) -> int:
  """Writes ``folder`` (a ``data.ImageFolder``) as shards in ``out``; returns how many
  shards were written now (the others were complete already)."""
  from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter
  out.mkdir(parents=True, exist_ok=True)
  plan = shard_plan(len(folder), per_shard)
  names = [f"{out.name}-{j:05d}-of-{len(plan):05d}{SUFFIX}" for j in range(len(plan))]
  stale = sorted(p.name for p in out.glob(f"*{SUFFIX}") if p.name not in names)
  if stale:
    raise ValueError(f"{out} holds shards of another layout ({stale[0]}, ...): remove them, "
                     "or convert with the --records-per-shard that wrote them")
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
  index = {"shards": names, "records": len(folder), "records_per_shard": per_shard,
           "source": str(folder.root)}
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
    return f"truncated or damaged ({_why(e)})"
  return None


def _why(error: RuntimeError) -> str:
  # array_record's error for a file cut short (its footer gone) has no message.
  return one_line(error)[:200] if str(error).strip() else "array_record cannot open it"


def _records(reader_class, path) -> int:
  reader = reader_class(str(path))
  try:
    return reader.num_records()
  finally:
    reader.close()


def _progress(log, out, done: int, total: int, written: int, start: float) -> None:
  rate = done / max(time.perf_counter() - start, 1e-9)
  log(f"{out.name}: {done}/{total} images ({written} shards written now), "
      f"{rate:.0f} images/s, ETA {(total - done) / max(rate, 1e-9):.0f} s")


def _write_text(path, text: str) -> None:
  # files.write_atomic takes local paths only; this one also writes to gs://.
  tmp = path.parent / f".{path.name}.tmp"
  tmp.write_text(text)
  tmp.replace(path)


def write_classes(out, classes: tuple[str, ...]) -> None:
  """``classes.json``, or a check that the one there (from an earlier run) is the same."""
  path = out / CLASSES
  if path.exists():
    old = tuple(json.loads(path.read_text()))
    if old != tuple(classes):
      raise ValueError(f"{path} lists other classes ({len(old)}) than the folder ("
                       f"{len(classes)}): convert into an empty --out")
    return
  out.mkdir(parents=True, exist_ok=True)
  _write_text(path, json.dumps(list(classes)) + "\n")


def convert(folder: str, out: str, splits: list[str], per_shard: int, log=print) -> None:
  """Every split of ImageFolder ``folder`` into shards under ``out``."""
  folders = {split: ImageFolder.scan(epath.Path(folder) / split) for split in splits}
  classes = {tuple(f.classes) for f in folders.values()}
  if len(classes) > 1:
    raise ValueError(f"the splits of {folder} have different class folders: {sorted(splits)}")
  out = epath.Path(out)
  write_classes(out, classes.pop())
  for split, source in folders.items():
    written = write_split(source, out / split, per_shard, log)
    log(f"{split}: {len(source)} images in {out / split} ({written} shards written now)")


def main(argv=None) -> int:
  p = ArgumentParser(description=__doc__)
  p.add_argument("--folder", required=True, help="holds <split>/<class>/<image> files")
  p.add_argument("--out", required=True, help="where the shards go (a path or gs://...)")
  p.add_argument("--splits", default="train,val", help="comma-separated split folders")
  p.add_argument("--records-per-shard", type=positive_int, default=1024)
  args = p.parse_args(argv)
  try:
    convert(args.folder, args.out, args.splits.split(","), args.records_per_shard,
            log=lambda line: print(line, flush=True))
  except (ValueError, OSError) as e:
    return report(e)
  return 0


if __name__ == "__main__":
  sys.exit(main())
