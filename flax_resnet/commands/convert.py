"""Convert torchvision's or timm's ResNet-family weights into a flax-resnet checkpoint.

    flax-resnet-convert --weights ResNet50_Weights.IMAGENET1K_V2 --out ckpt/resnet50
    flax-resnet-convert --weights DEFAULT --arch resnet18 --out ckpt/resnet18
    flax-resnet-convert --state-dict model.pth --out ckpt/mine [--arch resnet50]
    flax-resnet-convert --state-dict model.safetensors --arch resnet50d --out ckpt/r50d
    flax-resnet-convert --state-dict model.pth --num-classes 10 --reset-head --out ckpt/ft

The output directory is written under a temporary name and renamed into place only
when complete. By default the converted model is verified against torchvision (timm, for
timm's architectures) on a fixed batch, and once more in float64: the conversion is
accepted when its error against float64 is at most twice the reference's own float32
error (plus 1e-6) and its top-5 is float64's; otherwise it exits 2 with nothing written.
Exit codes: the documentation site's Commands page ("Exit codes").
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

# Only the light modules here: arguments are checked before JAX, orbax or torch load.
from flax_resnet.cli import (
  ArgumentParser,
  CliError,
  check_replaceable,
  check_writable_dir,
  positive_float,
  positive_int,
  report,
)
from flax_resnet.errors import MissingExtra
from flax_resnet.preprocess import EvalTransform

if TYPE_CHECKING:
  from flax_resnet.port.state_dict import ConversionError


def parse_args(argv=None) -> argparse.Namespace:
  p = ArgumentParser(description=__doc__)
  src = p.add_mutually_exclusive_group(required=True)
  src.add_argument(
    "--weights",
    help="torchvision weights: ResNet50_Weights.IMAGENET1K_V2, or "
    "IMAGENET1K_V1 / DEFAULT with --arch",
  )
  src.add_argument(
    "--state-dict", type=Path, help="a .pth/.pt/.bin or .safetensors file (torchvision's or timm's)"
  )
  p.add_argument("--arch", help="architecture name (inferred from the file when omitted)")
  p.add_argument("--num-classes", type=int, help="classes of the head (default: the file's)")
  p.add_argument(
    "--reset-head",
    action="store_true",
    help="drop the file's classifier and start a fresh one of --num-classes",
  )
  p.add_argument("--out", type=Path, required=True, help="checkpoint directory to write")
  p.add_argument(
    "--force",
    action="store_true",
    help="replace an existing --out that is a flax-resnet checkpoint (or empty)",
  )
  p.add_argument(
    "--verify",
    action=argparse.BooleanOptionalAction,
    default=True,
    help="compare logits with torchvision (timm, for timm's architectures) on a fixed batch "
    "(default: on)",
  )
  p.add_argument(
    "--tolerance",
    type=positive_float,
    help="a fixed bound on max|dlogit| / max|logit| against the reference's float32 "
    "logits, instead of the default: at most twice its own float32 error against "
    "float64, plus 1e-6",
  )
  p.add_argument(
    "--resize-size", type=positive_int, help="eval resize for --state-dict (default 256)"
  )
  p.add_argument("--crop-size", type=positive_int, help="eval crop for --state-dict (default 224)")
  return p.parse_args(argv)


class Steps:
  """``port``'s progress as the command's numbered steps, each with the time since the last."""

  def __init__(self):
    self.t = time.perf_counter()

  def say(self, message: str) -> None:
    print(message, flush=True)
    self.t = time.perf_counter()

  def since(self) -> str:
    return f"{time.perf_counter() - self.t:.1f}s"

  def __call__(self, stage: str, **details: Any) -> None:
    if stage == "load":
      self.say(f"[1/4] loading {details['source']}")
    elif stage == "convert":
      self.say(f"      loaded in {self.since()}\n[2/4] mapping tensors onto the flax model")
    elif stage == "note":
      self.say(f"      note: {details['note']}")
    elif stage == "unverified":
      self.say(f"[3/4] verification skipped (--no-verify); mapped in {self.since()}")
    elif stage == "verify":
      self.say(
        f"[3/4] verifying against {details['reference']} in float32 and float64 (mapped in "
        f"{self.since()}; runs the models on a fixed batch, compiling first)"
      )
    elif stage == "verified":
      self.verified(details["parity"])
    elif stage == "save":
      self.say(f"[4/4] writing {details['path']}")

  def verified(self, parity: dict | None) -> None:
    if parity is None:
      self.say(
        "      neither torchvision nor timm has a model for this configuration: "
        "verification skipped"
      )
    else:
      self.say(f"      {describe(parity)}, in {self.since()}")


def check_arguments(args) -> None:
  """What can be judged before anything is loaded: names, numbers and the output's place."""
  if args.weights and "." not in args.weights and args.arch is None:
    raise CliError(
      f"--weights {args.weights} needs --arch (or a full name such as "
      f"ResNet50_Weights.{args.weights})"
    )
  if args.arch is not None:
    from flax_resnet.registry import architecture

    try:
      architecture(args.arch)
    except ValueError as e:
      raise CliError(f"--arch {args.arch}: {e}") from None
  if args.num_classes is not None and args.num_classes < 0:
    raise CliError(f"--num-classes {args.num_classes}: must be 0 (headless) or more")
  if args.state_dict is not None and not args.state_dict.is_file():
    raise CliError(f"--state-dict {args.state_dict}: no such file")
  check_writable_dir(args.out, args.force)
  check_replaceable(args.out)


def run(args) -> tuple[Any, int]:
  """Loads, converts, verifies and writes as ``args`` (already checked) say; the ``Metadata``
  written and the parameter count."""
  from flax_resnet.port.pipeline import port

  transform = EvalTransform(
    **{
      k: v
      for k, v in [("resize_size", args.resize_size), ("crop_size", args.crop_size)]
      if v is not None
    }
  )
  ported = port(
    weights=args.weights,
    state_dict=args.state_dict,
    arch=args.arch,
    num_classes=args.num_classes,
    reset_head=args.reset_head,
    verify=args.verify,
    tolerance=args.tolerance,
    transform=transform,
    out=args.out,
    overwrite=args.force,
    progress=Steps(),
  )
  return ported.metadata, _count(ported.conversion.model)


def describe(parity: dict) -> str:
  """The verification's figures in one line."""
  reference = parity.get("reference", "torchvision")  # checkpoints before timm's say none
  if parity["rule"] == "fixed":
    measured = (
      f"relative logit difference from {reference} float32 {parity['max_rel']:.3g} "
      f"(--tolerance {parity['bound']:g})"
    )
  else:
    measured = (
      f"relative logit error vs float64 {parity['ours_vs_float64']:.3g} "
      f"(bound {parity['bound']:.3g}: twice {reference}'s own, plus 1e-6)"
    )
  return (
    f"{measured}; {reference} float32 vs float64 {parity['torch_vs_float64']:.3g}, "
    f"ours vs {reference} float32 {parity['max_rel']:.3g}; top-5 as float64: "
    f"{'yes' if parity['top5_as_float64'] else 'NO'}"
  )


def _count(model) -> int:
  import jax
  from flax import nnx

  return int(sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))))


# The library's arguments, as this command's flags.
FLAGS = {
  "weights": "--weights",
  "arch": "--arch",
  "num_classes": "--num-classes",
  "reset_head": "--reset-head",
}


def flag_spelling(parameter: str, value: Any) -> str:
  """An argument as this command's flag: ``--reset-head``, ``--arch resnet50``."""
  return FLAGS[parameter] if value is True else f"{FLAGS[parameter]} {value}"


def in_flags(error: ConversionError, args) -> CliError:
  """The library's error as this command says it: naming flags, not Python parameters."""
  from flax_resnet.port.pipeline import VerificationError
  from flax_resnet.port.torch_files import DownloadError

  if isinstance(error, VerificationError):
    return CliError(f"verification failed: {describe(error.parity)}; nothing written")
  if isinstance(error, DownloadError):
    return CliError(
      f"--weights {args.weights}: could not download {error.url} ({error.reason})"
      f". Offline, fetch that file elsewhere and pass --state-dict PATH, or place "
      f"it at {error.file}"
    )
  return CliError(error.spelled(flag_spelling))


def main(argv=None) -> int:
  args = parse_args(argv)
  try:
    check_arguments(args)
  except CliError as e:
    return report(e)
  from flax_resnet.caches import enable_compilation_cache
  from flax_resnet.port.state_dict import ConversionError

  enable_compilation_cache()
  try:
    meta, parameters = run(args)
  except ConversionError as e:
    return report(in_flags(e, args))
  except (CliError, OSError, MissingExtra) as e:
    return report(e)
  print(
    f"done: {meta.arch or 'custom ResNet'} ({parameters:,} parameters, {meta.options}) from "
    f"{meta.source.get('name') or meta.source['file']} -> {args.out}"
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
