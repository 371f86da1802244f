"""torchvision state dicts <-> flax-resnet models: a strict rename plus two transposes.

A model leaf at path ``("layer1", 0, "downsample", 1, "scale")`` is torchvision's
``layer1.0.downsample.1.weight``. Conv kernels are HWIO here and OIHW in torch,
linear kernels (in, out) here and (out, in) in torch. numpy only: torch is never
imported here (its tensors are read through their own methods); ``torch_files`` makes torch
tensors.
"""

from __future__ import annotations

import logging
import re
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
from flax import nnx

from flax_resnet.choices import DEFAULT_CHANNELS
from flax_resnet.model import ResNet, make_divisible
from flax_resnet.registry import ALL_ARCHITECTURES, Arch, architecture, model_to_fill

log = logging.getLogger(__name__)

# NNX leaf name -> torch parameter or buffer name.
LEAF_TO_TORCH = {
  "kernel": "weight",
  "scale": "weight",
  "bias": "bias",
  "mean": "running_mean",
  "var": "running_var",
}
CONTAINERS = ("state_dict", "model", "state_dict_ema", "model_ema")
PREFIXES = ("module.", "_orig_mod.")


def python_spelling(parameter: str, value: Any) -> str:
  """How a Python caller writes an argument: ``reset_head=True``."""
  return f"{parameter}={value!r}"


class ConversionError(ValueError):
  """A source that cannot be converted as asked; the message lists every problem.

  A message may name the caller's arguments as ``$parameter`` (``arguments`` holds their
  values): ``str()`` spells them as Python does (``reset_head=True``), ``spelled`` as the
  caller says, so that a command can name its flags instead.
  """

  def __init__(self, message: str, **arguments: Any):
    self.template, self.arguments = message, arguments
    super().__init__(self.spelled(python_spelling))

  def spelled(self, spell: Callable[[str, Any], str]) -> str:
    """The message with each named argument written as ``spell(parameter, value)``."""
    if not self.arguments:
      return self.template
    return string.Template(self.template).safe_substitute(
      {name: spell(name, value) for name, value in self.arguments.items()}
    )


def torch_key(path: tuple) -> str:
  """The torchvision state-dict key of an NNX state path."""
  return ".".join(str(p) for p in path[:-1]) + "." + LEAF_TO_TORCH[path[-1]]


def to_torch_layout(value: np.ndarray) -> np.ndarray:
  """HWIO conv / WIO 1-d conv (timm's ECA) / (in, out) linear kernels to torch's OIHW / OIW /
  (out, in)."""
  if value.ndim == 4:
    return value.transpose(3, 2, 0, 1)
  if value.ndim == 3:
    return value.transpose(2, 1, 0)
  return value.T if value.ndim == 2 else value


def from_torch_layout(value: np.ndarray) -> np.ndarray:
  """Inverse of ``to_torch_layout``."""
  if value.ndim == 4:
    return value.transpose(2, 3, 1, 0)
  if value.ndim == 3:
    return value.transpose(2, 1, 0)
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
    raise ConversionError(
      f"not a state dict of tensors (found {type(obj).__name__}"
      + (f" with keys {sorted(obj)[:8]}" if isinstance(obj, Mapping) else "")
      + ")"
    )
  state = dict(obj)
  stripped = True
  while stripped:
    stripped = False
    for prefix in PREFIXES:
      if state and all(k.startswith(prefix) for k in state):
        state = {k[len(prefix) :]: v for k, v in state.items()}
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

  Depth comes from block counts, each stage's block type from the presence of ``conv3``,
  groups and width from the 3x3 conv shapes, ``num_classes`` from ``fc``; timm's knobs from
  their keys and shapes (``stem``); ResNeSt's (``block="resnest"``) from its split
  attention (``_conv2``), its tensor-less avd pools as the table's entry with the same
  tensors has them, or for a custom net as every timm ResNeSt (``avd=True``). Keys of a last
  stage without a complete first block
  (``layer5.*`` in a four-stage net) are not counted, so that matching reports them as
  unexpected; a key the inference needs is named. A file without running statistics is
  timm's GroupNorm architecture where the table has one (``resnet50_gn``), else the
  BatchNorm one with ``norm="group"``. Anti-aliasing holds no tensors and is never inferred:
  ``resnetaa50``'s file reads as ``resnet50``, and converts as ``resnetaa50`` when named.
  """
  arch, channels, options, standard = _read_architecture(state_dict)
  name = _table_name(arch, options) if standard else None
  if name is None:
    return None, {**arch.options(), "channels": channels, **options}
  return name, options


def _read_architecture(state_dict: Mapping[str, Any]) -> tuple[Arch, tuple, dict[str, Any], bool]:
  """(the ``Arch`` that the keys and shapes show, the stage widths, the other options, whether
  the widths and stem are a named architecture's)."""
  shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
  stem, out, in_channels = _stem(shapes)
  bottleneck = any(re.match(r"layer\d+\.\d+\.conv3\.", k) for k in shapes)
  last = "conv3" if bottleneck else "conv2"
  stages = _blocks_per_stage(shapes)
  if not stages:
    raise ConversionError(
      f"cannot infer the architecture: no 'layer1.0.conv1.weight' and "
      f"'layer1.0.{last}.weight' in the file"
    )
  head = shapes.get("fc.weight", shapes.get("fc.bias"))
  options: dict[str, Any] = {"in_channels": in_channels, "num_classes": head[0] if head else 0}
  options["stem"] = stem.pop("stem")
  if not any(key.endswith("running_mean") for key in shapes):
    options["norm"] = "group"
  kinds = _stage_kinds(shapes, len(stages))
  channels = tuple(
    _shape(shapes, f"layer{i + 1}.0.{_LAST_CONV[k]}.weight")[0] // _EXPANSION[k]
    for i, k in enumerate(kinds)
  )
  first = _shape(shapes, "layer1.0.conv1.weight")
  conv2, split = _conv2(shapes, first[0])
  groups, width = 1, 64
  if split:  # ResNeSt: every stage's block is one
    groups = first[0] // conv2[1]
    width = conv2[0] // groups * 64 // channels[0]
    kinds = ["resnest"] * len(kinds)
  elif bottleneck:  # from the first bottleneck stage
    j = kinds.index("bottleneck")
    b1, b2 = (_shape(shapes, f"layer{j + 1}.0.conv{n}.weight") for n in (1, 2))
    groups = b1[0] // b2[1]
    width = b2[0] // groups * 64 // channels[j]
  knobs = {**stem, **_block_knobs(shapes, first[0], conv2[0]), **split}
  knobs.pop("block", None)
  if channels != DEFAULT_CHANNELS:
    knobs["channels"] = channels
  block = kinds[0] if len(set(kinds)) == 1 else tuple(kinds)
  arch = Arch(block, tuple(stages), groups, width, **knobs)
  pruned = _pruned_widths(shapes, arch, channels)
  if pruned is not None:  # nominal widths: timm's pruned nets start from the default ones
    channels = DEFAULT_CHANNELS[: len(stages)]
    arch = arch._replace(
      groups=1, width_per_group=64, block_reduce_first=1, block_widths=pruned, channels=None
    )
  plain_stem = not arch.stem_type and out != 64  # torchvision's conv1 is 64 wide
  return arch, channels, options, not plain_stem


_LAST_CONV = {"basic": "conv2", "bottleneck": "conv3", "resnest": "conv3"}
_EXPANSION = {"basic": 1, "bottleneck": 4, "resnest": 4}


def _stage_kinds(shapes: Mapping[str, tuple], stages: int) -> list[str]:
  """Each stage's block kind: bottleneck where its blocks have a ``conv3`` or ``bn3`` (a file
  missing one of them still reads as bottleneck, and the missing key is named)."""
  return [
    "bottleneck"
    if any(re.match(rf"layer{i + 1}\.\d+\.(conv3|bn3)\.", k) for k in shapes)
    else "basic"
    for i in range(stages)
  ]


def _table_name(arch: Arch, options: dict[str, Any]) -> str | None:
  """The table's name for ``arch``; a group-norm file's ``norm`` moves from ``options`` into
  the architecture where the table has it so (timm's GroupNorm nets)."""
  if options.get("norm") == "group":
    name = _table_name(arch._replace(norm="group"), {})
    if name is not None:
      del options["norm"]
      return name
  return next((n for n, a in ALL_ARCHITECTURES.items() if _keyed(a) == _keyed(arch)), None)


def _keyed(arch: Arch) -> Arch:
  """``arch`` up to what its keys cannot show: ResNeSt's avd pools (options without tensors;
  a named ResNeSt takes them from the table)."""
  return arch._replace(avd=False, avd_first=False, is_first=False)


def _anti_aliased_twins(arch: str) -> list[str]:
  """A note naming the anti-aliased architectures with exactly ``arch``'s keys (an aa module
  holds no tensors), which a file read as ``arch`` may also be; none if there are none."""
  table = architecture(arch)
  twins = [
    n for n, a in ALL_ARCHITECTURES.items() if a.aa_layer and a._replace(aa_layer=None) == table
  ]
  if not twins:
    return []
  return [
    f"read as {arch}; its keys also fit {', '.join(twins)} (anti-aliasing holds no tensors): "
    "name the architecture (arch=, --arch) if the file is one of those"
  ]


def _as_anti_aliased(state_dict: Mapping[str, Any], arch: str) -> tuple[str, dict] | None:
  """(``arch``, the file's options) where ``arch`` is anti-aliased and the file has its keys
  and shapes (which an aa module, holding no tensors, leaves as without it); else None."""
  table = architecture(arch)
  if table.aa_layer is None:
    return None
  found, _, options, standard = _read_architecture(state_dict)
  return (arch, options) if standard and found == table._replace(aa_layer=None) else None


def _conv2(shapes: Mapping[str, tuple], width: int) -> tuple[tuple, dict[str, Any]]:
  """The first block's 3x3 conv shape (out, in per group), and ResNeSt's knobs ({} for other
  blocks): timm's split attention ``conv2.conv`` has ``radix`` times the block's width, and
  its ``conv2.fc1`` the 3x3 conv's groups. A ResNeSt of ``radix=0`` has a Bottleneck's keys,
  and is read as one."""
  if "layer1.0.conv2.conv.weight" not in shapes:
    return _shape(shapes, "layer1.0.conv2.weight"), {}
  radix = _shape(shapes, "layer1.0.conv2.conv.weight")[0] // width
  per_group = _shape(shapes, "layer1.0.conv2.fc1.weight")[1]
  return (width, per_group), {"block": "resnest", "radix": radix, "avd": True}


def _stem(shapes: Mapping[str, tuple]) -> tuple[dict[str, Any], int, int]:
  """({"stem": ..., and timm's stem knobs}, the stem's width, the input channels)."""
  pool = {"replace_stem_pool": True} if "maxpool.0.weight" in shapes else {}
  if len(shapes.get("conv1.weight", ())) == 4:
    out, cin, k, _ = shapes["conv1.weight"]
    return {"stem": "imagenet" if k == 7 else "cifar", **pool}, out, cin
  if all(len(shapes.get(f"conv1.{i}.weight", ())) == 4 for i in (0, 3, 6)):
    first, second = shapes["conv1.0.weight"], shapes["conv1.3.weight"]
    tiered = first[0] != second[0]  # deep_tiered: 3 * (stem_width // 4), then stem_width
    deep = {"stem_type": "deep_tiered" if tiered else "deep", "stem_width": second[0]}
    return {"stem": "imagenet", **deep, **pool}, shapes["conv1.6.weight"][0], first[1]
  raise ConversionError(
    "cannot infer the architecture: no 4-d 'conv1.weight' (a 7x7 or 3x3 stem) nor "
    "'conv1.0.weight', 'conv1.3.weight', 'conv1.6.weight' (timm's deep stem) in the file"
  )


def _block_knobs(shapes: Mapping[str, tuple], first: int, width: int) -> dict[str, Any]:
  """timm's block knobs: avg_down, down_kernel_size, block_reduce_first, attn_layer."""
  knobs: dict[str, Any] = {}
  if any(re.match(r"layer\d+\.\d+\.downsample\.2\.", k) for k in shapes):
    knobs["avg_down"] = True
  kernels = [s[-1] for k, s in shapes.items() if re.match(r"layer\d+\.0\.downsample\.0\.w", k)]
  if max(kernels, default=1) > 1:
    knobs["down_kernel_size"] = max(kernels)
  if first and width // first > 1:
    knobs["block_reduce_first"] = width // first
  if "layer1.0.se.fc1.weight" in shapes:
    knobs["attn_layer"] = "se"
    knobs.update(_se_rd_ratio(shapes))
  elif "layer1.0.se.conv.weight" in shapes:
    knobs["attn_layer"] = "eca"
  return knobs


def _se_rd_ratio(shapes: Mapping[str, tuple]) -> dict[str, float]:
  """SE's reduction: timm's default 1/16 (no option) or ResNet-RS's 1/4 where it gives every
  block's ``fc1`` width, else the widest block's own ratio."""
  se = [
    (s[1], s[0]) for k, s in shapes.items() if re.fullmatch(r"layer\d+\.\d+\.se\.fc1\.weight", k)
  ]
  for ratio in (1 / 16, 1 / 4):
    if all(make_divisible(c * ratio) == r for c, r in se):
      return {} if ratio == 1 / 16 else {"se_rd_ratio": ratio}
  channels, reduced = max(se)
  return {"se_rd_ratio": reduced / channels}


def _pruned_widths(shapes: Mapping[str, tuple], arch: Arch, channels: tuple) -> tuple | None:
  """Every block's conv widths (``block_widths``) where some block's differ from what the
  stage's first block says the net is (a pruned net), else None (ResNeSt's and mixed
  blocks are not pruned)."""
  if arch.block not in ("basic", "bottleneck"):
    return None
  convs = ("conv1", "conv2", "conv3") if arch.block == "bottleneck" else ("conv1", "conv2")
  exp = 4 if arch.block == "bottleneck" else 1
  found, nominal = [], True
  for i, depth in enumerate(arch.layers):
    width = int(channels[i] * arch.width_per_group / 64) * arch.groups
    expected: tuple[int, ...]
    if exp == 4:
      expected = (width // arch.block_reduce_first, width, channels[i] * exp)
    else:
      expected = (channels[i] // arch.block_reduce_first, channels[i])
    keys = [[f"layer{i + 1}.{j}.{c}.weight" for c in convs] for j in range(depth)]
    if not all(k in shapes for block in keys for k in block):
      return None  # matching names what is missing
    stage = tuple(tuple(shapes[k][0] for k in block) for block in keys)
    nominal = nominal and all(w == expected for w in stage)
    found.append(stage)
  return None if nominal else tuple(found)


def _shape(shapes: Mapping[str, tuple], key: str) -> tuple:
  if key not in shapes:
    raise ConversionError(f"cannot infer the architecture: missing key {key}")
  return shapes[key]


def _blocks_per_stage(shapes: Mapping[str, tuple]) -> list[int]:
  """Blocks of stages 1, 2, ...; a last stage whose first block lacks ``conv1`` or its last
  conv (its kind's) is left out (its keys are unexpected ones, such as a stray ``layer5.*``)."""
  counts: dict[int, int] = {}
  for key in shapes:
    m = re.match(r"layer(\d+)\.(\d+)\.", key)
    if m:
      stage, block = int(m[1]), int(m[2])
      counts[stage] = max(counts.get(stage, 0), block + 1)
  n = 0
  while n + 1 in counts:
    n += 1
  last = _LAST_CONV[_stage_kinds(shapes, n)[-1]] if n else ""
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


def convert_state_dict(
  state_dict: Mapping[str, Any],
  arch: str | None = None,
  *,
  reset_head: bool = False,
  **model_options: Any,
) -> Conversion:
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
  named = arch is not None
  arch, options = _resolve_architecture(state_dict, arch, reset_head, model_options)
  if not named and arch is not None:
    notes += _anti_aliased_twins(arch)
  model = model_to_fill(arch, options)
  flat = nnx.to_flat_state(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat)))
  values, problems, casts = _match(flat, state_dict, ("fc",) if reset_head else ())
  if problems:
    raise ConversionError(
      "state dict does not fit " + (arch or "the custom ResNet") + ":\n  " + "\n  ".join(problems)
    )
  filled = {  # every leaf but a reset head's
    # a copy: on a CPU, asarray would alias the caller's tensors, which torch may change in place
    path: jax.numpy.array(values[path], dtype=var.get_value().dtype, copy=True)
    for path, var in flat
    if path in values
  }
  nnx.update(model, nnx.from_flat_state(filled))
  if reset_head:
    model.reset_classifier(model.num_classes, rngs=nnx.Rngs(0))  # torchvision's fresh fc
  return Conversion(model, arch, options, notes + casts, state_dict)


def from_torch_state_dict(
  state_dict: Mapping[str, Any],
  arch: str | None = None,
  *,
  reset_head: bool = False,
  **model_options: Any,
) -> ResNet:
  """The model of ``convert_state_dict``, in eval mode (``model.train()`` to train); its
  notes (unwraps, casts) are logged as warnings."""
  conversion = convert_state_dict(state_dict, arch, reset_head=reset_head, **model_options)
  for note in conversion.notes:
    log.warning("%s", note)
  conversion.model.eval()
  return conversion.model


def _resolve_architecture(state_dict, arch, reset_head, model_options):
  inferred, options = infer_architecture(state_dict)
  if arch is not None and inferred != arch:
    inferred, options = _as_anti_aliased(state_dict, arch) or (inferred, options)
  if reset_head:
    options.pop("num_classes")
  elif model_options.get("num_classes", options["num_classes"]) != options["num_classes"]:
    raise ConversionError(
      f"the file's head (fc) has {options['num_classes']} classes but "
      "$num_classes; pass $reset_head to start a fresh head",
      num_classes=model_options["num_classes"],
      reset_head=True,
    )
  if arch is not None:
    architecture(arch)  # unknown names fail here, listing the known ones
    if inferred != arch:
      looks = inferred or f"a custom ResNet {options}"
      raise ConversionError(f"file looks like {looks}, not $arch", arch=arch)
  return inferred, {**options, **model_options}


def _match(flat, state_dict, skip) -> tuple[dict, list[str], list[str]]:
  """(values by model path, problems, notes on casts) for filling ``flat`` from ``state_dict``."""
  values, used, missing, shapes, bad = {}, set(), [], [], []
  cast: dict[tuple[str, str], list[str]] = {}  # (from, to): keys
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
    target = np.dtype(var.get_value().dtype).name
    if dtype_name(tensor) != target:
      cast.setdefault((dtype_name(tensor), target), []).append(key)
    value = from_torch_layout(_numpy(tensor))
    if value.shape != expected:
      shapes.append(
        f"{key}: expected {to_torch_layout(np.empty(expected)).shape}, found {tuple(tensor.shape)}"
      )
    elif not np.all(np.isfinite(value)):
      bad.append(f"{key}: contains NaN or Inf")
    values[path] = value
  unexpected = sorted(
    k for k in state_dict if k not in used and not k.endswith("num_batches_tracked")
  )
  problems = (
    [f"missing key: {k}" for k in missing]
    + [f"unexpected key: {k}" for k in unexpected]
    + [f"shape mismatch: {s}" for s in shapes]
    + bad
  )
  notes = [
    f"cast {len(keys)} {source} tensor{'s' * (len(keys) > 1)} to {target}: "
    + ", ".join(keys[:4])
    + (", ..." if len(keys) > 4 else "")
    for (source, target), keys in cast.items()
  ]
  return values, problems, notes


def to_state_dict(
  model: ResNet, num_batches_tracked: int | Mapping[str, int] = 0
) -> dict[str, np.ndarray]:
  """The model's weights as a torchvision state dict of numpy arrays in torch's layouts, with
  exactly the keys of torchvision's own: each BatchNorm's ``num_batches_tracked`` too, an
  int64 scalar holding ``num_batches_tracked`` (one count, or counts by BatchNorm name such
  as ``"layer1.0.bn1"``, a missing name 0)."""
  out = {}
  for path, var in nnx.to_flat_state(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))):
    key = torch_key(path)
    out[key] = np.array(to_torch_layout(np.asarray(jax.device_get(var.get_value()))), order="C")
    if key.endswith(".running_var"):
      norm = key.removesuffix(".running_var")
      count = (
        num_batches_tracked.get(norm, 0)
        if isinstance(num_batches_tracked, Mapping)
        else num_batches_tracked
      )
      out[f"{norm}.num_batches_tracked"] = np.array(int(count), dtype=np.int64)
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


def check_roundtrip(model, bare: dict, skip_head: bool) -> None:
  """Every source tensor must come back bit-exact (as float32) from the converted model."""
  for key, value in to_state_dict(model).items():
    if (skip_head and key.startswith("fc.")) or key.endswith("num_batches_tracked"):
      continue
    if not np.array_equal(value, _numpy(bare[key]).astype(np.float32)):
      raise ConversionError(f"round trip changed tensor {key}")
