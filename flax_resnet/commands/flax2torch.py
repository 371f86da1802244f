"""Write a flax-resnet checkpoint back out as a torchvision (or timm) state dict.

    flax-resnet-flax2torch --checkpoint ckpt/resnet50 --out resnet50.pth
    flax-resnet-flax2torch --checkpoint ckpt/resnet50 --out resnet50.safetensors

The file loads with ``strict=True`` into ``torchvision.models.<arch>(num_classes=...)``, or
for timm's architectures into ``timm.create_model(arch, num_classes=...)``, bit for bit.
It is written under a temporary name and renamed into place once complete.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from flax_resnet.cli import ArgumentParser, report
from flax_resnet.files import atomic_path, chmod_as_new_file

if TYPE_CHECKING:
  from flax_resnet.saved_model import Metadata
# JAX, Flax and orbax (2-3 s to import) are imported after the arguments are parsed.


def parse_args(argv=None) -> argparse.Namespace:
  p = ArgumentParser(description=__doc__)
  p.add_argument("--checkpoint", type=Path, required=True, help="directory from torch2flax")
  p.add_argument(
    "--out", type=Path, required=True, help="FILE.pth, FILE.pt, FILE.bin or FILE.safetensors"
  )
  p.add_argument(
    "--force", action="store_true", help="replace an existing --out file (never a directory)"
  )
  return p.parse_args(argv)


def write(state: dict, out: Path) -> None:
  """torch.save or safetensors by suffix, through a temporary file in the same folder."""
  import torch
  from safetensors.torch import save_file

  out.parent.mkdir(parents=True, exist_ok=True)
  with atomic_path(out) as tmp:
    if out.suffix == ".safetensors":
      save_file(state, tmp)
      chmod_as_new_file(tmp)  # safetensors writes 0600; every other file follows the umask
    else:
      torch.save(state, tmp)


def batches_tracked(meta: Metadata, checkpoint: Path) -> int | dict[str, int]:
  """The ``num_batches_tracked`` the checkpoint's source had (recorded by the converter),
  else 0; a ``ValueError`` naming the file and key if it is not counts."""
  from flax_resnet.saved_model import METADATA

  value = (meta.source or {}).get("num_batches_tracked", 0)
  counts = value.values() if isinstance(value, dict) else [value]
  if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
    raise ValueError(
      f"{checkpoint / METADATA}: source.num_batches_tracked must be a count or "
      f"counts by BatchNorm name, not {value!r}"
    )
  return value


def check_out(out: Path, force: bool) -> None:
  """``ValueError`` naming --out when it may not be written: its suffix, a folder, or an
  existing file without --force (which replaces only a regular file)."""
  if out.suffix not in (".pth", ".pt", ".bin", ".safetensors"):
    raise ValueError(f"--out {out}: the suffix must be .pth, .pt, .bin or .safetensors")
  if out.is_dir():
    raise ValueError(f"--out {out} is a directory; name the file to write")
  if out.exists() and not out.is_file():  # --force replaces only a file
    raise ValueError(f"--out {out} is not a regular file; name the file to write")
  if out.exists() and not force:
    raise ValueError(f"--out {out} exists; pass --force to replace it")


def main(argv=None) -> int:
  args = parse_args(argv)
  try:
    check_out(args.out, args.force)
    from flax_resnet.port.torch_files import require_torch, to_torch_state_dict

    require_torch("writing a torch state dict")
    from flax_resnet.saved_model import load

    print(f"loading {args.checkpoint}", flush=True)
    model, meta = load(args.checkpoint)
    state = to_torch_state_dict(model, batches_tracked(meta, args.checkpoint))
    write(state, args.out)
  except (ValueError, OSError) as e:
    return report(e)
  print(f"done: {meta.arch or 'custom ResNet'} ({len(state)} tensors) -> {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
