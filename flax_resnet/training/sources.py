"""Image sources: what the input pipeline reads, declared once (``ImageSource``), and its two
readers, image files in class folders (``ImageFolder``) and ArrayRecord shards of them
(``Shards``, written by ``shards.py``). ``open_split`` picks the one a split holds."""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from etils import epath
from PIL import Image

from flax_resnet.errors import FieldError, literal, one_line
from flax_resnet.preprocess import open_image
from flax_resnet.training.shard_format import CLASSES, INDEX, SUFFIX, array_record_error, decode

EXTENSIONS = (".jpg", ".jpeg", ".png")


class ImageSource(Protocol):
  """``len(source)`` labelled images at positions 0 to len - 1, in a fixed order: the same
  images in the same order give the same batches, whatever reads them. Picklable: grain's
  worker processes each read their own copy."""

  @property
  def root(self) -> os.PathLike:
    """Where the images are, as messages name it."""
    ...

  @property
  def classes(self) -> tuple[str, ...]:
    """Label i is class name i."""
    ...

  def __len__(self) -> int: ...

  def read(self, i: int) -> tuple[Image.Image, int]:
    """(8-bit RGB image, label) of image ``i``; ``ValueError`` naming it if unreadable."""
    ...

  def verified_classes(self) -> tuple[str, ...]:
    """The class names, checked against the images' labels where the source records both
    (``ValueError`` if they disagree)."""
    ...

  def fingerprint(self) -> dict:
    """What identifies these images in a checkpoint (``data.check_same_images`` compares)."""
    ...


def open_split(data_dir: str, split: str, field: str = "train_split") -> ImageSource:
  """The images of ``data_dir/split``: ``Shards`` where it holds a complete set of shards
  (their index.json), else an ``ImageFolder``. ``field`` is the config field that named
  ``split``: a ``FieldError`` names it, or data_dir, when the folder does not exist (or
  data_dir is empty)."""
  if not data_dir:  # a FieldError: a command says each field as its --set flag
    raise FieldError(
      "{dir} is empty: give it the folder holding the train and eval splits, or pass "
      "{synthetic} for random images",
      dir=("data_dir", data_dir),
      synthetic=("synthetic", True),
    )
  where = f"{data_dir.rstrip('/')}/{split}"
  if not epath.Path(where).exists():
    _missing(data_dir, split, field)
  return Shards(where) if is_shards(where) else ImageFolder.scan(where)


def _missing(data_dir: str, split: str, field: str) -> None:
  """The ``FieldError`` for a split folder that does not exist: naming ``field`` and the
  splits ``data_dir`` holds, or ``data_dir`` when it does not exist either."""
  root = epath.Path(data_dir)
  if not root.is_dir():
    raise FieldError("{dir} does not exist", dir=("data_dir", data_dir))
  held = sorted(p.name for p in root.iterdir() if p.is_dir())
  raise FieldError(
    "{split}: data folder " + literal(f"{data_dir.rstrip('/')}/{split}") + " does not exist; "
    "data_dir holds " + literal(", ".join(held) or "no folders"),
    split=(field, split),
  )


@dataclass(frozen=True)
class ImageFolder:
  """Files under ``root/<class>/``; classes are the sorted sub-folder names."""

  root: Path
  classes: tuple[str, ...]
  files: tuple[str, ...]
  labels: tuple[int, ...]

  @classmethod
  def scan(cls, root: str | Path) -> ImageFolder:
    """The image files under ``root``; ``ValueError`` for no folder, no class folders, or
    a class folder without images."""
    root = Path(root)
    if not root.is_dir():
      raise ValueError(f"data folder {root} does not exist")
    classes = tuple(sorted(p.name for p in root.iterdir() if p.is_dir()))
    if not classes:
      raise ValueError(f"data folder {root} has no class sub-folders")
    files, labels = [], []
    for label, name in enumerate(classes):
      found = sorted(str(p) for p in (root / name).iterdir() if p.suffix.lower() in EXTENSIONS)
      if not found:
        raise ValueError(f"class folder {root / name} holds no {'/'.join(EXTENSIONS)} images")
      files += found
      labels += [label] * len(found)
    return cls(root, classes, tuple(files), tuple(labels))

  def __len__(self) -> int:
    return len(self.files)

  def read(self, i: int) -> tuple[Image.Image, int]:
    """(8-bit RGB image, label) of file ``i``; ``ValueError`` naming it if unreadable."""
    return open_image(self.files[i]), self.labels[i]

  def verified_classes(self) -> tuple[str, ...]:
    """The class folders' names: the labels are their positions, nothing to disagree."""
    return self.classes

  def fingerprint(self) -> dict:
    """Class names, image count and the SHA-256 of the sorted relative paths."""
    prefix = len(str(self.root)) + 1  # files are str(root / class / name): no Path per file
    paths = sorted(f[prefix:] for f in self.files)
    return {
      "classes": list(self.classes),
      "images": len(self),
      "paths_sha256": hashlib.sha256("\n".join(paths).encode()).hexdigest(),
    }


def is_shards(split_dir: str) -> bool:
  """Whether ``split_dir`` holds a complete split of shards (its index.json); a
  ``ValueError`` if it holds shards but no index: a conversion that did not finish."""
  root = epath.Path(split_dir)
  if (root / INDEX).exists():
    return True
  if root.is_dir() and any(root.glob(f"*{SUFFIX}")):
    raise ValueError(
      f"{root} holds shards but no {INDEX}: their conversion did not finish; "
      "run flax-resnet-shards again to complete it"
    )
  return False


class Shards:
  """One split of shards as a random-access image source, read as its ``ImageFolder`` is.

  Picklable: Grain's worker processes each open their own readers.
  """

  def __init__(self, split_dir: str):
    import grain

    self.root = epath.Path(split_dir)
    names, self.count = read_index(self.root)
    self.classes = read_classes(self.root.parent)
    self.shards = [str(self.root / name) for name in names]
    try:
      self.source = grain.sources.ArrayRecordDataSource(self.shards)
    except RuntimeError:  # array_record's, naming no file or only the first missing one
      raise ValueError(_first_damaged_shard(self.shards)) from None
    if len(self.source) != self.count:
      raise ValueError(
        f"{self.root}: the shards hold {len(self.source)} records, index.json says {self.count}"
      )

  def __len__(self) -> int:
    return self.count

  def read(self, i: int) -> tuple[Image.Image, int]:
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

  def verified_classes(self) -> tuple[str, ...]:
    """``classes.json``, checked against the records' labels and paths (``check_labels``)."""
    check_labels(self)
    return self.classes

  def fingerprint(self) -> dict:
    """Class names and record count: hashing the records' paths would read every record."""
    return {"classes": list(self.classes), "images": len(self)}


REWRITE = "write the shards again with flax-resnet-shards"


def read_json(path: epath.Path) -> object:
  """The JSON in file ``path``; a ``ValueError`` naming it where it is not UTF-8 JSON."""
  raw = path.read_bytes()
  try:
    return json.loads(raw.decode())
  except UnicodeDecodeError as e:
    raise ValueError(
      f"{path} is not UTF-8 text (byte {e.start} of {len(raw)}), so not the JSON "
      f"flax-resnet-shards writes: {REWRITE}"
    ) from None
  except json.JSONDecodeError as e:
    raise ValueError(
      f"{path} is not valid JSON ({e.msg}, line {e.lineno} column {e.colno}): {REWRITE}"
    ) from None


def read_index(root: epath.Path) -> tuple[list[str], int]:
  """(shard file names, record count) of ``root/index.json``; a ``ValueError`` naming the file
  and its key where it is not the index flax-resnet-shards writes: an object whose ``"shards"``
  names plain files in ``root`` (no path elsewhere, symbolic link or folder) and whose
  ``"records"`` is a count."""
  path = root / INDEX
  index = read_json(path)
  if not isinstance(index, dict):
    raise ValueError(
      f"{path} holds a JSON {_json_type(index)}, not the object flax-resnet-shards writes "
      f'(with "shards" and "records"): {REWRITE}'
    )
  names, count = index.get("shards"), index.get("records")
  if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
    raise ValueError(
      f'{path}: its "shards" {_shown(index, "shards")}, not a list of file names: {REWRITE}'
    )
  if type(count) is not int or count < 0:
    raise ValueError(f'{path}: its "records" {_shown(index, "records")}, not a count: {REWRITE}')
  for name in names:
    problem = _not_a_shard_file(root, name)
    if problem:
      raise ValueError(
        f"{path} names shard {name!r}, which {problem}: shards are plain files in their "
        f"split folder; {REWRITE}"
      )
  return names, count


def _not_a_shard_file(root: epath.Path, name: str) -> str | None:
  """Why ``name`` in ``root``'s index is not a plain file in ``root``, or None: it may be
  missing (``Shards`` says so, as of a shard that was deleted)."""
  if name in ("", ".", "..") or "/" in name or "\0" in name:
    return f"is not a file name in {root}"
  path = root / name
  if os.path.islink(path):  # local only: object stores (gs://) have no links
    return f"is a symbolic link (to {os.readlink(path)})"
  if path.is_dir():
    return "is a folder"
  return None


def read_classes(root: epath.Path) -> tuple[str, ...]:
  """The class names in ``root/classes.json``; a ``ValueError`` naming the file where it is
  not a JSON list of strings."""
  path = root / CLASSES
  classes = read_json(path)
  if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
    raise ValueError(f"{path} holds {_preview(classes)}, not a JSON list of class names: {REWRITE}")
  return tuple(classes)


def _shown(index: dict, key: str) -> str:
  """'is <the value of key>', or 'is missing'."""
  return f"is {_preview(index[key])}" if key in index else "is missing"


def _preview(value: object, at_most: int = 60) -> str:
  """``value`` as JSON, cut to ``at_most`` characters."""
  text = json.dumps(value)
  return text if len(text) <= at_most else text[: at_most - 3] + "..."


def _json_type(value: object) -> str:
  if isinstance(value, bool):
    return "boolean"
  names = {dict: "object", list: "array", str: "string", int: "number", float: "number"}
  return names.get(type(value), "null")


def check_labels(source: Shards) -> None:
  """Each label's name in ``classes.json`` against the class folder its records came from;
  a ``ValueError`` naming the file if they differ (it was edited, or is of other shards).

  flax-resnet-shards writes records in class order, so a bisection reads only about
  classes * log2(images per class) records to meet the first and last record of
  every label; unreadable records are passed over (the trainer skips them).
  """
  names = tuple(source.classes)
  seen: dict[int, int | None] = {}
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
        listed = (
          f"names label {label} {names[label]!r}"
          if label < len(names)
          else (f"lists {len(names)} classes, no label {label}")
        )
        raise ValueError(
          f"{where} {listed}, but record {i} of {source.root} is "
          f"{path!r} with label {label}: the file was edited or belongs to "
          f"other shards; {REWRITE}"
        )
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
    raise ValueError(
      f"{where} lists {len(names)} classes, but the records of {source.root} "
      f"have labels 0 to {max(labels)}: the file was edited or belongs to "
      f"other shards; {REWRITE}"
    )


def _first_damaged_shard(paths: list[str]) -> str:
  """Why the first unreadable shard of ``paths`` cannot be read, in one line naming it."""
  from array_record.python.array_record_module import ArrayRecordReader

  for path in paths:
    if not epath.Path(path).exists():
      return f"shard {path} is missing: run flax-resnet-shards again to write it"
    try:
      reader = ArrayRecordReader(str(path))
      try:
        reader.num_records()
      finally:
        reader.close()  # a truncated file's error comes here, with no message
    except RuntimeError as e:
      return (
        f"shard {path} is truncated or damaged ({array_record_error(e)}): run "
        "flax-resnet-shards again to rewrite it"
      )
  return f"the shards of {epath.Path(paths[0]).parent} cannot be opened"
