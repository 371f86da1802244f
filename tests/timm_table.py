"""Writes ``flax_resnet/timm_weights.py``'s ``TABLE`` from timm and timm's results table.

    python tests/timm_table.py tests/data/timm-results-imagenet.csv

Every tag with weights of timm's ``resnet.py`` and ``resnest.py``, in timm's order (each
architecture's default tag first), as ``timm.models.get_pretrained_cfg`` describes it, with
the rows of ``results-imagenet.csv`` (timm's ``results/`` folder; the full file or
``tests/data``'s copy of these architectures' rows) that name it. The table stays plain
data in the package; ``tests/test_timm_table.py`` checks that this writes it as committed.
A developer's tool beside the tests that use it: it needs timm, which the package does not.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TABLE_FILE = ROOT / "flax_resnet" / "timm_weights.py"
RESULTS_FILE = ROOT / "tests" / "data" / "timm-results-imagenet.csv"
MODULES = ("resnet", "resnest")
BEGIN, END = "# BEGIN TABLE:", "# END TABLE"
CONSTANTS = {
  (0.485, 0.456, 0.406): "IM",
  (0.229, 0.224, 0.225): "IS",
  (0.5, 0.5, 0.5): "HALF",
}


def timm_cfgs() -> list:
  """timm's pretrained cfgs with weights of ``MODULES``' architectures, in timm's order
  (the order of each module's ``default_cfgs``; those of archs it no longer registers, as
  ``resnext101_32x48d``, left out as ``timm.list_pretrained`` leaves them)."""
  import importlib

  import timm
  from timm.models import get_pretrained_cfg

  found = []
  for module in MODULES:
    default_cfgs = importlib.import_module(f"timm.models.{module}").default_cfgs
    registered = set(timm.list_models(module=module))
    for arch, default in default_cfgs.items():
      if arch not in registered:
        continue
      tags = [t for t in default.tags if default.cfgs[t].has_weights]
      found += [get_pretrained_cfg(f"{arch}.{tag}") for tag in tags]
  return found


def read_results(path: Path) -> dict[str, list[tuple[int, float, float, float]]]:
  """{name: [(img_size, top1, top5, crop_pct), ...]} from a results csv, in its row order."""
  rows: dict[str, list[tuple[int, float, float, float]]] = {}
  with open(path, newline="") as file:
    for row in csv.DictReader(file):
      result = (int(row["img_size"]), float(row["top1"]), float(row["top5"]))
      rows.setdefault(row["model"], []).append((*result, float(row["crop_pct"])))
  return rows


def literal(value) -> str:
  """``repr`` with the project's double quotes (names and tags hold no quote)."""
  return f'"{value}"' if isinstance(value, str) else repr(value)


def entry_line(cfg, results: list) -> str:
  """One ``TABLE`` line: ``_T(arch, tag, ...)`` in ``TimmWeights``' field order."""
  name = f"{cfg.architecture}.{cfg.tag}"
  if cfg.hf_hub_id != f"timm/{name}":
    raise ValueError(f"{name}: hub repository {cfg.hf_hub_id}, not timm/{name} (hf_hub_id)")
  ordered = sorted(results, key=lambda r: -r[1])  # best first, the first row of a tie kept first
  fields = [
    literal(cfg.architecture),
    literal(cfg.tag),
    literal(cfg.num_classes),
    literal(tuple(cfg.input_size)),
    literal(tuple(cfg.test_input_size) if cfg.test_input_size else None),
    literal(cfg.crop_pct),
    literal(cfg.test_crop_pct),
    literal(cfg.crop_mode),
    literal(cfg.interpolation),
    CONSTANTS.get(tuple(cfg.mean), literal(tuple(cfg.mean))),
    CONSTANTS.get(tuple(cfg.std), literal(tuple(cfg.std))),
    literal(cfg.license),
  ]
  if ordered:
    fields.append(f"_r({', '.join(repr(r) for r in ordered)})")
  return f"  _T({', '.join(fields)}),"


def table_block(results: dict[str, list]) -> str:
  """The generated block of ``timm_weights.py``, its markers included."""
  lines = [
    f"{BEGIN} written by tests/timm_table.py; do not edit by hand",
    "# fmt: off",
    "TABLE: tuple[TimmWeights, ...] = (",
    *(entry_line(cfg, results.get(f"{cfg.architecture}.{cfg.tag}", [])) for cfg in timm_cfgs()),
    ")",
    "# fmt: on",
    END,
  ]
  return "\n".join(lines)


def with_table(text: str, block: str) -> str:
  """``text`` (``timm_weights.py``) with the block between its markers replaced."""
  start, end = text.index(BEGIN), text.index(END) + len(END)
  return text[:start] + block + text[end:]


def main(argv: list[str]) -> int:
  if len(argv) != 1:
    print("usage: python tests/timm_table.py RESULTS_CSV", file=sys.stderr)
    return 2
  from flax_resnet.files import write_atomic

  block = table_block(read_results(Path(argv[0])))
  write_atomic(TABLE_FILE, with_table(TABLE_FILE.read_text(), block))
  print(f"wrote {TABLE_FILE}", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
