"""Export a model for serving, verified: ``flax-resnet-export``.

    flax-resnet-export --checkpoint ckpt/resnet50 --out resnet50.onnx
    flax-resnet-export --checkpoint runs/c10-model --out c10.stablehlo
    flax-resnet-export --weights ResNet50_Weights.IMAGENET1K_V2 --out resnet50.onnx
    flax-resnet-export --checkpoint ckpt/resnet50 --out resnet50.pth   (torchvision's state dict)

The format is --format's, or the one --out's suffix names: .onnx (ONNX, for ONNX Runtime,
OpenVINO...), .stablehlo (jax.export's serialization with a symbolic batch, loadable with
jax.export.deserialize alone, its record in FILE.stablehlo.json), .pth/.pt/.bin/.safetensors
(torchvision's or timm's state dict, as flax-resnet-flax2torch writes it). The artifact is run
on two batch sizes before it is written, and written only when its error against the model in
float64 is at most twice the model's own (plus 1e-6) and its top-5 is float64's; otherwise exit 2,
nothing written. The preprocessing and class names go with it (the documentation site's
Deployment guide); ``flax-resnet-predict --backend onnxruntime --checkpoint FILE.onnx`` uses
them. Exit codes: the site's Commands page.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# Only the light modules here: --help and usage errors answer before JAX, torch or onnx load.
from flax_resnet.cli import ArgumentParser, CliError, positive_int, report
from flax_resnet.commands import flax2torch
from flax_resnet.deploy import DEFAULT_OPSET, DTYPES

# The library's formats (flax_resnet.deploy) and torchvision's state dict (flax2torch's).
SUFFIXES = {
  "onnx": (".onnx",),
  "stablehlo": (".stablehlo",),
  "torch": (".pth", ".pt", ".bin", ".safetensors"),
}
FORMATS = tuple(SUFFIXES)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  """``flax-resnet-export``'s arguments; usage errors exit 2 in one line."""
  p = ArgumentParser(description=__doc__)
  src = p.add_mutually_exclusive_group(required=True)
  src.add_argument(
    "--checkpoint",
    type=Path,
    help="a model checkpoint directory (flax-resnet-convert's, flax-resnet-train-export's)",
  )
  src.add_argument(
    "--weights",
    help="torchvision weights, converted on first use: ResNet50_Weights.IMAGENET1K_V2, "
    "or IMAGENET1K_V1 / DEFAULT with --arch",
  )
  p.add_argument("--arch", help="the architecture of --weights (when the name does not say it)")
  p.add_argument("--out", type=Path, required=True, help=f"the file to write ({_suffixes()})")
  p.add_argument("--format", choices=FORMATS, help="default: the one --out's suffix names")
  p.add_argument("--opset", type=positive_int, default=DEFAULT_OPSET, help="ONNX's opset")
  p.add_argument(
    "--static-batch",
    type=positive_int,
    metavar="N",
    help="fix the batch size at N (default: a dynamic, symbolic batch dimension)",
  )
  p.add_argument(
    "--fold-bn",
    action=argparse.BooleanOptionalAction,
    default=True,
    help="BatchNorm folded into the convolutions (default: on)",
  )
  p.add_argument(
    "--dtype",
    choices=DTYPES,
    default="float32",
    help="the graph's float type; bfloat16: StableHLO only (ONNX Runtime's CPU provider has "
    "no bfloat16 convolution)",
  )
  p.add_argument(
    "--force", action="store_true", help="replace an existing --out that is an earlier export"
  )
  return p.parse_args(argv)


def _suffixes() -> str:
  return ", ".join(s for suffixes in SUFFIXES.values() for s in suffixes)


def check_arguments(args: argparse.Namespace) -> str:
  """The format, once what can be judged before anything loads is sound: names, the
  output's place, the options the format takes."""
  fmt = format_of(args)
  if args.weights and "." not in args.weights and args.arch is None:
    raise CliError(
      f"--weights {args.weights} needs --arch (or a full name such as "
      f"ResNet50_Weights.{args.weights})"
    )
  if args.checkpoint is not None and args.arch is not None:
    raise CliError("--arch goes with --weights; a --checkpoint names its own architecture")
  if fmt == "torch" and args.weights:
    raise CliError(
      "--format torch writes a --checkpoint's weights; for torchvision's --weights "
      "torchvision has the file already"
    )
  if fmt == "torch" and (args.static_batch or args.dtype != "float32" or not args.fold_bn):
    raise CliError(
      "--static-batch, --dtype and --no-fold-bn shape ONNX and StableHLO graphs; "
      "a torch state dict holds the weights as they are"
    )
  if fmt == "onnx" and args.dtype == "bfloat16":
    raise CliError(
      "--dtype bfloat16: ONNX Runtime's CPU provider has no bfloat16 convolution; "
      "--dtype float16, or --format stablehlo"
    )
  if fmt == "onnx" and not 13 <= args.opset <= 20:
    raise CliError(f"--opset {args.opset}: torch's exporter writes opsets 13 to 20")
  check_out(args.out, fmt, args.force)
  return fmt


def format_of(args: argparse.Namespace) -> str:
  """--format, or the one --out's suffix names; a ``CliError`` when they disagree."""
  by_suffix = next((f for f, s in SUFFIXES.items() if args.out.suffix in s), None)
  if args.format is not None and args.format != by_suffix:
    wanted = " or ".join(SUFFIXES[args.format])
    raise CliError(f"--out {args.out}: a --format {args.format} file ends in {wanted}")
  if by_suffix is None:
    raise CliError(f"--out {args.out}: name a suffix ({_suffixes()}) or pass --format")
  return by_suffix


def check_out(out: Path, fmt: str, force: bool) -> None:
  """That --out may be written: new, or with --force an earlier export (for torch's state
  dicts, which carry no mark, any regular file, as flax-resnet-flax2torch has it)."""
  if fmt == "torch":
    from flax_resnet.commands.flax2torch import check_out as check_state_dict_out

    check_state_dict_out(out, force)
    return
  from flax_resnet.deploy import check_out as check_export_out

  try:
    check_export_out(out, fmt, force)
  except FileExistsError as e:
    raise CliError(f"--out {e}".replace("force=True", "--force")) from None


def source(args: argparse.Namespace):
  """The checkpoint directory, or the (model, metadata) of torchvision's --weights entry."""
  if args.checkpoint is not None:
    return args.checkpoint
  from flax_resnet.pretrained import load_pretrained

  enum, _, entry = args.weights.rpartition(".")
  # ResNet50_Weights.IMAGENET1K_V2: torchvision's enum names the architecture (resnet50)
  arch = args.arch or enum.removesuffix("_Weights").lower()
  try:
    return load_pretrained(arch, entry)
  except ValueError as e:
    raise ValueError(f"--weights {args.weights}: {e}") from None


def main(argv: list[str] | None = None) -> int:
  """``flax-resnet-export``: prints the record written with the file (without the
  versions) as JSON; exit 2 on bad input or a failed verification, nothing written."""
  args = parse_args(argv)
  try:
    fmt = check_arguments(args)
    if fmt == "torch":
      return flax2torch.main(
        ["--checkpoint", str(args.checkpoint), "--out", str(args.out)] + ["--force"] * args.force
      )
    from flax_resnet.deploy import export

    print(f"exporting to {args.out} ({fmt}, verified before it is written)", flush=True)
    record = export(
      source(args),
      args.out,
      format=fmt,
      opset=args.opset,
      static_batch=args.static_batch,
      fold_bn=args.fold_bn,
      dtype=args.dtype,
      force=args.force,
    )
  except (ValueError, OSError, CliError) as e:
    return report(e)
  shown = {k: record[k] for k in record if k not in ("versions", "categories", "options")}
  print(json.dumps({"out": str(args.out), **shown}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
