"""torchvision state dicts <-> flax-resnet models: a strict rename plus two transposes.

A model leaf at path ``("layer1", 0, "downsample", 1, "scale")`` is torchvision's
``layer1.0.downsample.1.weight``. Conv kernels are HWIO here and OIHW in torch,
linear kernels (in, out) here and (out, in) in torch. torch is imported only inside
the functions that produce torch tensors.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np
from flax import nnx

from flax_resnet.errors import one_line
from flax_resnet.files import sha256
from flax_resnet.model import DEFAULT_CHANNELS, ResNet, make_head
from flax_resnet.registry import ARCHITECTURES, Arch, architecture, model_to_fill
from flax_resnet.torchvision_weights import hash_prefix

log = logging.getLogger(__name__)

# NNX leaf name -> torch parameter or buffer name.
LEAF_TO_TORCH = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
                 "var": "running_var"}
CONTAINERS = ("state_dict", "model", "state_dict_ema", "model_ema")
PREFIXES = ("module.", "_orig_mod.")


class ConversionError(ValueError):
  """A state dict that does not fit the model; the message lists every problem."""


def torch_key(path: tuple) -> str:
  """The torchvision state-dict key of an NNX state path."""
  return ".".join(str(p) for p in path[:-1]) + "." + LEAF_TO_TORCH[path[-1]]


def to_torch_layout(value: np.ndarray) -> np.ndarray:
  """HWIO conv / (in, out) linear kernels to torch's OIHW / (out, in)."""
  if value.ndim == 4:
    return value.transpose(3, 2, 0, 1)
  return value.T if value.ndim == 2 else value


def from_torch_layout(value: np.ndarray) -> np.ndarray:
  """Inverse of ``to_torch_layout``."""
  if value.ndim == 4:
    return value.transpose(2, 3, 1, 0)
  return value.T if value.ndim == 2 else value


def unwrap_state_dict(obj: Any) -> tuple[dict[str, Any], list[str]]:
  """Unwraps training-checkpoint containers and strips wrapper prefixes.

  Returns the bare state dict and notes saying what was done. A prefix
  (``module.`` from DDP, ``_orig_mod.`` from torch.compile, repeated) is stripped
  only when every key has it.
  """
  notes = []
  while isinstance(obj, Mapping):
    container = next((c for c in CONTAINERS if isinstance(obj.get(c), Mapping)), None)
    if container is None or _looks_like_state_dict(obj):
      break
    notes.append(f"unwrapped container {container!r}")
    obj = obj[container]
  if not isinstance(obj, Mapping) or not _looks_like_state_dict(obj):
    raise ConversionError(f"not a state dict of tensors (found {type(obj).__name__}"
                          + (f" with keys {sorted(obj)[:8]}" if isinstance(obj, Mapping) else "")
                          + ")")
  state = dict(obj)
  stripped = True
  while stripped:
    stripped = False
    for prefix in PREFIXES:
      if state and all(k.startswith(prefix) for k in state):
        state = {k[len(prefix):]: v for k, v in state.items()}
        notes.append(f"stripped prefix {prefix!r}")
        stripped = True
  return state, notes


def _looks_like_state_dict(obj: Mapping) -> bool:
  return bool(obj) and all(isinstance(k, str) and hasattr(v, "shape") for k, v in obj.items())


def _numpy(value: Any) -> np.ndarray:
  if hasattr(value, "detach"):  # a torch tensor; bfloat16 has no numpy dtype
    value = value.detach().cpu()
    if value.dtype.is_floating_point and value.element_size() < 4:
      value = value.float()
    return value.numpy()
  return np.asarray(value)


def dtype_name(value: Any) -> str:
  """A tensor's or array's dtype as numpy spells it (torch's ``torch.`` prefix dropped)."""
  return str(value.dtype).removeprefix("torch.")


def _is_real_float(value: Any) -> bool:
  dtype = value.dtype
  if hasattr(dtype, "is_floating_point"):  # torch
    return dtype.is_floating_point
  return np.issubdtype(dtype, np.floating)


def infer_architecture(state_dict: Mapping[str, Any]) -> tuple[str | None, dict[str, Any]]:
  """Architecture name (None for a custom config) and ResNet options read off a state dict.

  Depth comes from block counts, the block type from the presence of ``conv3``,
  groups and width from the 3x3 conv shapes, ``num_classes`` from ``fc``. Keys of a
  last stage without a complete first block (``layer5.*`` in a four-stage net) are not
  counted, so that matching reports them as unexpected; a key the inference needs is named.
  """
  shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
  if "conv1.weight" not in shapes or len(shapes["conv1.weight"]) != 4:
    raise ConversionError("cannot infer the architecture: no 4-d 'conv1.weight' in the file")
  bottleneck = any(re.match(r"layer\d+\.\d+\.conv3\.", k) for k in shapes)
  last = "conv3" if bottleneck else "conv2"
  stages = _blocks_per_stage(shapes, last)
  if not stages:
    raise ConversionError(f"cannot infer the architecture: no 'layer1.0.conv1.weight' and "
                          f"'layer1.0.{last}.weight' in the file")
  out, in_channels, k, _ = shapes["conv1.weight"]
  head = shapes.get("fc.weight", shapes.get("fc.bias"))
  options: dict[str, Any] = {"in_channels": in_channels, "stem": "imagenet" if k == 7 else "cifar",
                             "num_classes": head[0] if head else 0}
  if not any(key.endswith("running_mean") for key in shapes):
    options["norm"] = "group"
  exp = 4 if bottleneck else 1
  channels = tuple(_shape(shapes, f"layer{i + 1}.0.{last}.weight")[0] // exp
                   for i in range(len(stages)))
  groups, width = 1, 64
  if bottleneck:
    conv2 = _shape(shapes, "layer1.0.conv2.weight")
    groups = conv2[0] // conv2[1]
    width = conv2[1] * 64 // channels[0]
  arch = Arch("bottleneck" if bottleneck else "basic", tuple(stages), groups, width)
  name = next((n for n, a in ARCHITECTURES.items() if a == arch), None)
  if name is None or channels != DEFAULT_CHANNELS or out != 64:
    return None, {**arch._asdict(), "channels": channels, **options}
  return name, options


def _shape(shapes: Mapping[str, tuple], key: str) -> tuple:
  if key not in shapes:
    raise ConversionError(f"cannot infer the architecture: missing key {key}")
  return shapes[key]


def _blocks_per_stage(shapes: Mapping[str, tuple], last: str) -> list[int]:
  """Blocks of stages 1, 2, ...; a last stage whose first block lacks ``conv1`` or its
  ``last`` conv is left out (its keys are unexpected ones, such as a stray ``layer5.*``)."""
  counts: dict[int, int] = {}
  for key in shapes:
    m = re.match(r"layer(\d+)\.(\d+)\.", key)
    if m:
      stage, block = int(m[1]), int(m[2])
      counts[stage] = max(counts.get(stage, 0), block + 1)
  n = 0
  while n + 1 in counts:
    n += 1
  if n and not all(f"layer{n}.0.{conv}.weight" in shapes for conv in ("conv1", last)):
    n -= 1
  return [counts[s] for s in range(1, n + 1)]


@dataclass
class Conversion:
  """What ``convert_state_dict`` made: the model, the architecture and options it resolved
  (``arch`` None for a custom ResNet), notes on every unwrap, prefix and cast, and the
  unwrapped state dict it read."""
  model: ResNet
  arch: str | None
  options: dict[str, Any]
  notes: list[str]
  state_dict: dict[str, Any]


def convert_state_dict(state_dict: Mapping[str, Any], arch: str | None = None, *,
                       reset_head: bool = False, **model_options: Any) -> Conversion:
  """A flax-resnet model holding a torchvision state dict's weights, with what was resolved.

  Strict: every tensor is used exactly once and every model leaf is filled, with
  shapes checked; ``num_batches_tracked`` is dropped on purpose. All problems
  (missing, unexpected, misshapen, non-floating-point or non-finite tensors) are raised
  together in one ``ConversionError``. ``arch`` defaults to what the keys and shapes
  say; an ``arch`` the file contradicts is an error naming what the file looks like.
  ``reset_head`` drops the file's ``fc`` so that a head of another ``num_classes``
  starts fresh. ``model_options`` go to the constructor.
  """
  state_dict, notes = unwrap_state_dict(state_dict)
  if reset_head:
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
  arch, options = _resolve_architecture(state_dict, arch, reset_head, model_options)
  model = model_to_fill(arch, options)
  flat = nnx.to_flat_state(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat)))
  values, problems, casts = _match(flat, state_dict, ("fc",) if reset_head else ())
  if problems:
    raise ConversionError("state dict does not fit " + (arch or "the custom ResNet") + ":\n  "
                          + "\n  ".join(problems))
  if reset_head and model.num_classes:
    fresh = make_head(model.num_features, model.num_classes, rngs=nnx.Rngs(0))
    values[("fc", "kernel")], values[("fc", "bias")] = fresh.kernel[...], fresh.bias[...]
  nnx.update(model, nnx.from_flat_state(
      {path: jax.numpy.asarray(values[path], dtype=var.get_value().dtype)
       for path, var in flat}))
  return Conversion(model, arch, options, notes + casts, state_dict)


def from_torch_state_dict(state_dict: Mapping[str, Any], arch: str | None = None, *,
                          reset_head: bool = False, **model_options: Any) -> ResNet:
  """The model of ``convert_state_dict``, in eval mode (``model.train()`` to train); its
  notes (unwraps, casts) are logged as warnings."""
  conversion = convert_state_dict(state_dict, arch, reset_head=reset_head, **model_options)
  for note in conversion.notes:
    log.warning("%s", note)
  conversion.model.eval()
  return conversion.model


def _resolve_architecture(state_dict, arch, reset_head, model_options):
  inferred, options = infer_architecture(state_dict)
  if reset_head:
    options.pop("num_classes")
  elif model_options.get("num_classes", options["num_classes"]) != options["num_classes"]:
    raise ConversionError(f"the file's head (fc) has {options['num_classes']} classes but "
                          f"num_classes is {model_options['num_classes']}; pass --reset-head "
                          "(reset_head=True) to start a fresh head")
  if arch is not None:
    architecture(arch)  # unknown names fail here, listing the known ones
    if inferred != arch:
      looks = inferred or f"a custom ResNet {options}"
      raise ConversionError(f"file looks like {looks}, not {arch} (--arch)")
  return inferred, {**options, **model_options}


def _match(flat, state_dict, skip) -> tuple[dict, list[str], list[str]]:
  """(values by model path, problems, notes on casts) for filling ``flat`` from ``state_dict``."""
  values, used, missing, shapes, bad, cast = {}, set(), [], [], [], {}
  for path, var in flat:
    key = torch_key(path)
    if path[:1] == skip:
      continue
    if key not in state_dict:
      missing.append(key)
      continue
    used.add(key)
    tensor, expected = state_dict[key], tuple(var.get_value().shape)
    if not _is_real_float(tensor):
      bad.append(f"{key}: dtype {dtype_name(tensor)} is not a real floating-point type")
      continue
    if dtype_name(tensor) != "float32":
      cast.setdefault(dtype_name(tensor), []).append(key)
    value = from_torch_layout(_numpy(tensor))
    if value.shape != expected:
      shapes.append(f"{key}: expected {to_torch_layout(np.empty(expected)).shape}, "
                    f"found {tuple(tensor.shape)}")
    elif not np.all(np.isfinite(value)):
      bad.append(f"{key}: contains NaN or Inf")
    values[path] = value
  unexpected = sorted(k for k in state_dict
                      if k not in used and not k.endswith("num_batches_tracked"))
  problems = ([f"missing key: {k}" for k in missing] + [f"unexpected key: {k}" for k in unexpected]
              + [f"shape mismatch: {s}" for s in shapes] + bad)
  notes = [f"cast {len(keys)} {dtype} tensor{'s' * (len(keys) > 1)} to float32: "
           + ", ".join(keys[:4]) + (", ..." if len(keys) > 4 else "")
           for dtype, keys in cast.items()]
  return values, problems, notes


def to_torch_state_dict(model: ResNet,
                        num_batches_tracked: int | Mapping[str, int] = 0) -> dict[str, Any]:
  """The model's weights as a torchvision state dict, strict-loadable, with exactly the keys
  of torchvision's own: each BatchNorm's ``num_batches_tracked`` too, an int64 scalar
  holding ``num_batches_tracked`` (one count, or counts by BatchNorm name such as
  ``"layer1.0.bn1"``, a missing name 0)."""
  import torch

  out = {}
  for path, var in nnx.to_flat_state(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))):
    value = np.asarray(jax.device_get(var.get_value()))
    key = torch_key(path)
    out[key] = torch.from_numpy(np.array(to_torch_layout(value), order="C"))
    if key.endswith(".running_var"):
      norm = key.removesuffix(".running_var")
      count = (num_batches_tracked.get(norm, 0) if isinstance(num_batches_tracked, Mapping)
               else num_batches_tracked)
      out[f"{norm}.num_batches_tracked"] = torch.tensor(int(count), dtype=torch.int64)
  return out


def batches_tracked(state_dict: Mapping[str, Any]) -> int | dict[str, int] | None:
  """The ``num_batches_tracked`` of a state dict's BatchNorms: one count if they all agree,
  else counts by BatchNorm name; None if it has none."""
  counts = {}
  for key, value in state_dict.items():
    if key.endswith(".num_batches_tracked") and np.size(_numpy(value)) == 1:
      counts[key.removesuffix(".num_batches_tracked")] = int(_numpy(value).reshape(()))
  if not counts:
    return None
  return next(iter(counts.values())) if len(set(counts.values())) == 1 else counts


def load_file(path: Path) -> Any:
  """A .pth/.pt (weights_only, never an unsafe fallback) or .safetensors file; a
  ``ConversionError`` naming the file and what is wrong with it otherwise."""
  if not path.is_file():
    raise ConversionError(f"{path}: no such file")
  if path.stat().st_size == 0:
    raise ConversionError(f"{path}: empty file")
  if path.suffix == ".safetensors":
    return _load_safetensors(path)
  import pickle
  import torch

  try:
    return torch.load(path, map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as e:
    if "weights only load failed" in str(e).lower() and "unsupported global" in str(e).lower():
      raise ConversionError(f"{path}: refused: the file holds Python objects other than tensors, "
                     "which could run code when loaded; only plain state dicts are accepted")
    raise ConversionError(f"{path}: not a PyTorch checkpoint ({one_line(e)})")
  except (RuntimeError, EOFError, OSError) as e:
    raise ConversionError(f"{path}: truncated or corrupt ({one_line(e)})")
  except Exception as e:  # the weights-only unpickler fails on junk with assorted errors
    raise ConversionError(f"{path}: not a PyTorch checkpoint ({type(e).__name__}: {one_line(e)})")


def _load_safetensors(path: Path) -> dict:
  from safetensors import SafetensorError
  from safetensors.torch import load_file as load_st

  try:
    return load_st(path)
  except (SafetensorError, OSError, ValueError) as e:
    raise ConversionError(f"{path}: truncated or corrupt safetensors file ({e})")


def check_hash(file: Path, name: str | None = None) -> str:
  """The SHA-256 of ``file``; a ``ConversionError`` naming the file and both hashes unless
  it starts with the prefix in ``name`` (a URL or file name; default the file's own name)."""
  digest = sha256(file)
  prefix = hash_prefix(name or file.name)
  if prefix and not digest.startswith(prefix):
    raise ConversionError(f"{file}: SHA-256 {digest} does not start with {prefix}, the hash in "
                          "torchvision's file name: not torchvision's file (another model, or a "
                          "damaged download); remove it and fetch it again")
  return digest


def fetch_weights(name: str, arch: str | None):
  """(torchvision weights entry, its state dict, the source for ``checkpoint_metadata``:
  name, URL, the file in torch.hub's cache and its SHA-256), through torch.hub's cache."""
  import torch
  from torchvision.models import get_model_weights, get_weight

  try:
    weights = get_weight(name) if "." in name else get_model_weights(_need_arch(arch))[name]
  except (KeyError, ValueError, AttributeError) as e:
    raise ConversionError(f"--weights {name}: not a torchvision weights entry ({e})")
  file = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
  # torch.hub checks the hash only of what it downloads; a file placed by hand is checked here.
  digest = check_hash(file, weights.url) if file.is_file() else None
  try:
    state = torch.hub.load_state_dict_from_url(weights.url, progress=True, check_hash=True,
                                               weights_only=True, map_location="cpu")
  except OSError as e:  # URLError is an OSError
    raise ConversionError(f"--weights {name}: could not download {weights.url} ({e}). Offline, fetch "
                   f"that file elsewhere and pass --state-dict PATH, or place it at {file}")
  if digest is None and file.is_file():
    digest = check_hash(file, weights.url)
  source = {"kind": "torchvision_weights", "name": str(weights), "url": weights.url,
            "file": str(file), "sha256": digest}
  return weights, state, source


def _need_arch(arch: str | None) -> str:
  if not arch:
    raise ConversionError("--weights without a 'ModelName_Weights.' prefix needs --arch")
  return arch


def check_roundtrip(model, bare: dict, skip_head: bool) -> None:
  """Every source tensor must come back bit-exact (as float32) from the converted model."""
  back = to_torch_state_dict(model)
  for key, value in back.items():
    if (skip_head and key.startswith("fc.")) or key.endswith("num_batches_tracked"):
      continue
    if not np.array_equal(value.numpy(), bare[key].float().numpy()):
      raise ConversionError(f"round trip changed tensor {key}")


def torchvision_model(arch: str | None, options: Mapping[str, Any]):
  """The torchvision model equal to ``build_model(arch, options)``, or None if torchvision
  has no such model (CIFAR stem, other stage widths, other norms)."""
  import torch
  import torchvision
  from torchvision.models import resnet as tv

  opts = dict(options)
  if opts.pop("stem", "imagenet") != "imagenet" or opts.pop("norm", "batch") != "batch":
    return None
  if opts.pop("channels", DEFAULT_CHANNELS) != DEFAULT_CHANNELS:
    return None
  in_channels = opts.pop("in_channels", 3)
  for unused in ("dtype", "param_dtype", "dropout", "norm_groups", "rngs"):
    opts.pop(unused, None)
  if opts.get("num_classes", 1000) == 0:
    return None
  if arch:
    model = getattr(torchvision.models, arch)(**opts)
  else:
    block = {"basic": tv.BasicBlock, "bottleneck": tv.Bottleneck}[opts.pop("block")]
    model = tv.ResNet(block, list(opts.pop("layers")), **opts)
  if in_channels != 3:
    model.conv1 = torch.nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
  return model


def checkpoint_metadata(conversion: Conversion, *, source: dict[str, Any], transform,
                        categories: list[str] | None, parity: dict | None,
                        head: str = "from source"):
  """The ``Metadata`` of a converted checkpoint: what it came from (with the source's
  ``num_batches_tracked``, if it has them), its eval preprocessing (an ``EvalTransform``),
  class names, the verification's figures, and every version that made it."""
  import datetime

  from flax_resnet.saved_model import Metadata
  from flax_resnet.versions import versions
  counts = batches_tracked(conversion.state_dict)
  if counts is not None:  # flax2torch writes them back
    source = {**source, "num_batches_tracked": counts}
  return Metadata(
      arch=conversion.arch, options=conversion.options, source=source, notes=conversion.notes,
      head=head, preprocessing=transform.to_json(), categories=categories, parity=parity,
      versions=versions(),
      created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
