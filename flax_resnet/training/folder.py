"""Image files under ``root/<class>/``: the folder reader the input pipeline and the shard
writer share."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from flax_resnet.preprocess import open_image

EXTENSIONS = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class ImageFolder:
  """Files under ``root/<class>/``; classes are the sorted sub-folder names."""
  root: Path
  classes: tuple[str, ...]
  files: tuple[str, ...]
  labels: tuple[int, ...]

  @classmethod
  def scan(cls, root: str | Path) -> "ImageFolder":
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

  def name(self, i: int) -> str:
    return self.files[i]
