"""Convert torchvision ResNet-family weights into a flax-resnet checkpoint.

    python convert/torch2flax.py --weights ResNet50_Weights.IMAGENET1K_V2 --out ckpt/resnet50
    python convert/torch2flax.py --weights DEFAULT --arch resnet18 --out ckpt/resnet18
    python convert/torch2flax.py --state-dict model.pth --out ckpt/mine [--arch resnet50]
    python convert/torch2flax.py --state-dict model.pth --num-classes 10 --reset-head --out ckpt/ft

The output directory is written under a temporary name and renamed into place only
when complete. By default the converted model is verified against torchvision on a
fixed batch, and once more in float64: the conversion is accepted when its error
against float64 is at most twice torchvision's own float32 error (plus 1e-6) and its
top-5 is float64's; otherwise it exits 2 with nothing written. Exit codes: README.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

# Only the light modules here: arguments are checked before JAX, orbax or torch load.
from flax_resnet.cli import (ArgumentParser, CliError, check_replaceable, check_writable_dir,
                             positive_float, positive_int, report)
from flax_resnet.files import sha256
from flax_resnet.preprocess import EvalTransform


def parse_args(argv=None) -> argparse.Namespace:
  p = ArgumentParser(description=__doc__)
  src = p.add_mutually_exclusive_group(required=True)
  src.add_argument("--weights", help="torchvision weights: ResNet50_Weights.IMAGENET1K_V2, or "
                   "IMAGENET1K_V1 / DEFAULT with --arch")
  src.add_argument("--state-dict", type=Path, help="a .pth/.pt or .safetensors file")
  p.add_argument("--arch", help="architecture name (inferred from the file when omitted)")
  p.add_argument("--num-classes", type=int, help="classes of the head (default: the file's)")
  p.add_argument("--reset-head", action="store_true",
                 help="drop the file's classifier and start a fresh one of --num-classes")
  p.add_argument("--out", type=Path, required=True, help="checkpoint directory to write")
  p.add_argument("--force", action="store_true",
                 help="replace an existing --out that is a flax-resnet checkpoint (or empty)")
  p.add_argument("--verify", action=argparse.BooleanOptionalAction, default=True,
                 help="compare logits with torchvision on a fixed batch (default: on)")
  p.add_argument("--tolerance", type=positive_float,
                 help="a fixed bound on max|dlogit| / max|logit| against torchvision's float32 "
                 "logits, instead of the default: at most twice torchvision's own float32 error "
                 "against float64, plus 1e-6")
  p.add_argument("--resize-size", type=positive_int,
                 help="eval resize for --state-dict (default 256)")
  p.add_argument("--crop-size", type=positive_int, help="eval crop for --state-dict (default 224)")
  return p.parse_args(argv)


def step(message: str) -> float:
  print(message, flush=True)
  return time.perf_counter()


def load_source(args) -> tuple[dict, dict, Any]:
  """(state dict, source description, torchvision weights entry or None)."""
  from flax_resnet.torch_port import fetch_weights, load_file
  if args.weights:
    weights, state, source = fetch_weights(args.weights, args.arch)
    return state, source, weights
  state = load_file(args.state_dict)
  source = {"kind": "file", "file": str(args.state_dict.absolute()),
            "sha256": sha256(args.state_dict)}
  return state, source, None


def check_arguments(args) -> None:
  """What can be judged before anything is loaded: names, numbers and the output's place."""
  if args.weights and "." not in args.weights and args.arch is None:
    raise CliError(f"--weights {args.weights} needs --arch (or a full name such as "
                   f"ResNet50_Weights.{args.weights})")
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


def metadata(args, conversion, source, weights, parity):
  """The checkpoint's ``Metadata``."""
  from flax_resnet.preprocess import from_torchvision_weights
  from flax_resnet.torch_port import checkpoint_metadata
  transform = from_torchvision_weights(weights) if weights else EvalTransform(
      **{k: v for k, v in [("resize_size", args.resize_size), ("crop_size", args.crop_size)]
         if v is not None})
  # Only weights that name their classes get names: a --state-dict's 1000 outputs may be anything.
  categories = weights.meta.get("categories") if weights and not args.reset_head else None
  return checkpoint_metadata(
      conversion, source=source, transform=transform, categories=categories, parity=parity,
      head="reset: fresh classifier" if args.reset_head else "from source")


def run(args) -> tuple[Any, int]:
  """Loads, converts, verifies and writes as ``args`` say; the ``Metadata`` written and the
  parameter count."""
  check_arguments(args)
  from flax_resnet.saved_model import save
  from flax_resnet.torch_port import check_roundtrip, convert_state_dict
  t = step(f"[1/4] loading {args.weights or args.state_dict}")
  state, source, weights = load_source(args)
  t = step(f"      loaded in {time.perf_counter() - t:.1f}s\n"
           "[2/4] mapping tensors onto the flax model")
  options = {} if args.num_classes is None else {"num_classes": args.num_classes}
  conversion = convert_state_dict(state, args.arch, reset_head=args.reset_head, **options)
  for note in conversion.notes:
    step(f"      note: {note}")
  check_roundtrip(conversion.model, conversion.state_dict, args.reset_head)
  parity = _verify(conversion, args, t)
  step(f"[4/4] writing {args.out}")
  meta = metadata(args, conversion, source, weights, parity)
  save(conversion.model, args.out, meta, overwrite=args.force)
  return meta, _count(conversion.model)


def _verify(conversion, args, t) -> dict | None:
  from flax_resnet.parity import verify

  if not args.verify:
    step(f"[3/4] verification skipped (--no-verify); mapped in {time.perf_counter() - t:.1f}s")
    return None
  t = step(f"[3/4] verifying against torchvision in float32 and float64 (mapped in "
           f"{time.perf_counter() - t:.1f}s; runs the models on a fixed batch, compiling first)")
  parity = verify(conversion.model, conversion.arch, conversion.options, tolerance=args.tolerance)
  if parity is None:
    step("      torchvision has no model for this configuration: verification skipped")
    return None
  step(f"      {describe(parity)}, in {time.perf_counter() - t:.1f}s")
  if not parity["passed"]:
    raise CliError(f"verification failed: {describe(parity)}; nothing written")
  return parity


def describe(parity: dict) -> str:
  """The verification's figures in one line."""
  if parity["rule"] == "fixed":
    measured = (f"relative logit difference from torchvision float32 {parity['max_rel']:.3g} "
                f"(--tolerance {parity['bound']:g})")
  else:
    measured = (f"relative logit error vs float64 {parity['ours_vs_float64']:.3g} "
                f"(bound {parity['bound']:.3g}: twice torchvision's own, plus 1e-6)")
  return (f"{measured}; torchvision float32 vs float64 {parity['torch_vs_float64']:.3g}, "
          f"ours vs torchvision float32 {parity['max_rel']:.3g}; top-5 as float64: "
          f"{'yes' if parity['top5_as_float64'] else 'NO'}")


def _count(model) -> int:
  import jax
  from flax import nnx
  return int(sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))))


def main(argv=None) -> int:
  args = parse_args(argv)
  try:
    check_arguments(args)
  except CliError as e:
    return report(e)
  from flax_resnet.torch_port import ConversionError
  from flax_resnet.caches import enable_compilation_cache
  enable_compilation_cache()
  try:
    meta, parameters = run(args)
  except (CliError, ConversionError, OSError) as e:
    return report(e)
  print(f"done: {meta.arch or 'custom ResNet'} ({parameters:,} parameters, {meta.options}) from "
        f"{meta.source.get('name') or meta.source['file']} -> {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
