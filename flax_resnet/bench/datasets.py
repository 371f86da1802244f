"""CIFAR-10-JPEG's tarball (``cifar10-jpeg.tar.gz`` in the shared data folder) unpacked as
ImageFolder splits, whole or in part: for the benchmarks and the tests alike."""

from __future__ import annotations

import collections
import tarfile
from collections.abc import Collection
from pathlib import Path

CIFAR_ARCHIVE = "cifar10-jpeg.tar.gz"


def unpack_cifar(
  data: Path,
  dest: Path,
  limits: dict[str, int] | None = None,
  classes: Collection[str] | None = None,
  per_class: bool = True,
) -> Path:
  """The images of ``data/cifar10-jpeg.tar.gz`` as ``dest/<split>/<class>/<file>``, taken in
  the tarball's order; returns ``dest``.

  ``limits`` maps each split to unpack to how many images to take from it: of each class
  (``per_class``) or in all; None takes every split whole. ``classes``: only those classes.
  The tarball's images come grouped by class: its first 300 are all birds.
  """
  taken: collections.Counter = collections.Counter()
  with tarfile.open(data / CIFAR_ARCHIVE) as tar:
    for member in tar:
      parts = member.name.split("/")  # cifar10-jpeg/<split>/<class>/<file>
      if len(parts) != 4 or not member.isfile() or (classes and parts[2] not in classes):
        continue
      split, name, file = parts[1:]
      key = (split, name) if per_class else split
      if limits is None or taken[key] < limits.get(split, 0):
        taken[key] += 1
        (dest / split / name).mkdir(parents=True, exist_ok=True)
        image = tar.extractfile(member)
        assert image is not None  # a regular file: isfile() above
        (dest / split / name / file).write_bytes(image.read())
  return dest
