"""The shard record format, shared by the writer (``shards.py``) and the reader
(``sources.Shards``): one record per image, ``index.json`` per split, ``classes.json``."""

from __future__ import annotations

import struct

from flax_resnet.errors import one_line

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
    raise ValueError(f"record does not start with {_MAGIC!r}: not written by flax-resnet-shards")
  start = _HEADER.size + length
  return label, record[_HEADER.size : start].decode(errors="replace"), record[start:]


def array_record_error(error: Exception) -> str:
  """array_record's error in one line; its error for a file cut short (its footer gone)
  has no message."""
  return one_line(error)[:200] if str(error).strip() else "array_record cannot open it"
