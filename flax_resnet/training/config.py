"""The training configuration: one dataclass whose fields carry their rules, preset files
(shipped in ``flax_resnet.training.presets`` and named by name, or any path), ``key=value``
overrides, and the rule of what a resumed run may change."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flax_resnet.choices import (
  AUTO_AUGMENTS,
  BACKWARDS,
  EMA_STYLES,
  INTERPOLATIONS,
  LR_UPDATES,
  MOMENTS,
  OPTIMIZERS,
  REMATS,
  STEMS,
)
from flax_resnet.errors import ArgumentError, FieldError, literal
from flax_resnet.files import write_atomic

DTYPES = ("float32", "bfloat16", "float16")  # the compute dtype's names (model_spec maps them)
BN_STATS = ("global", "per_device")  # BatchNorm's batch statistics: over what (Trainer)
PART = re.compile(r"stem|layer[1-9][0-9]*")
PRESETS = Path(__file__).resolve().parent / "presets"


def frozen_parts(freeze: str) -> tuple[str, ...]:
  """The parts ``freeze`` names: ``"stem, layer1"`` is ("stem", "layer1")."""
  return tuple(part.strip() for part in freeze.split(",") if part.strip())


def _parts_problem(freeze: str) -> str | None:
  bad = [part for part in frozen_parts(freeze) if not PART.fullmatch(part)]
  if bad:
    return f"{bad[0]!r} is not a part: name stem, layer1, layer2... separated by commas"
  return None


def _probability(value: float) -> str | None:
  return "must be at most 1" if value > 1 else None


def rule(
  default: Any,
  *,
  doc: str,
  choices: Sequence[str] = (),
  at_least: float | None = None,
  below: float | None = None,
  check: Callable[[Any], str | None] | None = None,
  resumable: bool = False,
  nullable: bool = False,
  data: bool = False,
) -> Any:
  """A field's default with its rule beside it (``validate`` applies it): the ``choices``
  its value must be one of, its range ``[at_least, below)``, a ``check`` returning a
  problem or None, whether a resumed run may change it (``resumable``: it decides
  when to stop, log, save or evaluate, or where and how the same images are read, never
  what a step computes), whether it may be None (``nullable``; ``none`` in a
  ``key=value``), and whether the input pipeline reads it (``data``: it is a field of
  ``DataConfig``). ``doc``: what the field means, in one sentence: ``--list-fields``
  prints it."""
  return dataclasses.field(
    default=default,
    metadata={
      "doc": doc,
      "choices": tuple(choices),
      "at_least": at_least,
      "below": below,
      "check": check,
      "resumable": resumable,
      "nullable": nullable,
      "data": data,
    },
  )


@dataclasses.dataclass
class Config:
  """Every knob of a run. The defaults train a ResNet-18 on an ImageFolder. Each field's
  meaning is its ``rule``'s ``doc`` (``field_listing`` prints them)."""

  # Model
  arch: str = rule("resnet18", doc="the architecture: a flax_resnet.list_models() name")
  num_classes: int = rule(
    1000, at_least=1, doc="classes of the data: the head's outputs", data=True
  )
  stem: str = rule(
    "imagenet", choices=STEMS, doc='"cifar": a 3x3/1 conv and no max-pool, for 32x32 images'
  )
  layers: tuple[int, ...] = rule(
    (), doc="blocks per stage instead of the architecture's (tiny test nets); () keeps them"
  )
  channels: tuple[int, ...] = rule((), doc="base channels per stage, with layers")
  dtype: str = rule(
    "bfloat16",
    choices=DTYPES,
    doc="the compute dtype; parameters, BatchNorm statistics and the loss stay float32",
  )
  bn_stats: str = rule(
    "global",
    choices=BN_STATS,
    doc='BatchNorm\'s batch statistics over the "global" batch or "per_device" (as DDP)',
  )
  bn_moments: str = rule(
    "two_pass",
    choices=MOMENTS,
    doc='BatchNorm\'s moments; "one_pass": faster, inexact when |mean| >> std',
  )
  bn_backward: str = rule(
    "autodiff",
    choices=BACKWARDS,
    doc='BatchNorm\'s gradient; "fused": by hand, the same function',
  )
  drop_path_rate: float = rule(
    0.0,
    at_least=0,
    below=1,
    doc="stochastic depth, as timm's drop_path_rate: block i of n drops its residual branch "
    "per image with probability drop_path_rate * i / (n - 1), in training only; 0: off",
  )
  drop_block_rate: float = rule(
    0.0,
    at_least=0,
    below=1,
    doc="DropBlock, as timm's drop_block_rate: 5x5 blocks in the third stage, 3x3 in the "
    "fourth, dropped at this rate, in training only; 0: off",
  )
  remat: str = rule(
    "none",
    choices=REMATS,
    resumable=True,
    doc='activation checkpointing: "block" or "stage" recomputes each residual block\'s '
    "(stage's) activations in the backward pass instead of keeping them: less memory, "
    "more compute, the same function",
  )
  # Data
  data_dir: str = rule(
    "",
    resumable=True,
    doc="the folder holding <train_split>/<class>/*.jpg and <eval_split>/<class>/*.jpg "
    "(or shards of them)",
    data=True,
  )
  train_split: str = rule("train", doc="data_dir's sub-folder of training images", data=True)
  eval_split: str = rule("val", doc="data_dir's sub-folder of evaluation images", data=True)
  synthetic: bool = rule(
    False,
    doc="random images of image_size, for benchmarks; data_dir unused, no data workers",
    data=True,
  )
  image_size: int = rule(
    224, at_least=1, doc="the train crop's side; 32 or less switches to pad-and-crop", data=True
  )
  eval_resize: int = rule(
    256, at_least=1, doc="eval resizes the shorter side to this, then crops its centre", data=True
  )
  eval_crop: int = rule(
    0,
    at_least=0,
    doc="eval's centre crop, at most eval_resize (torchvision's --val-crop-size); 0: image_size",
    data=True,
  )
  mean: tuple[float, ...] = rule(
    (0.485, 0.456, 0.406), doc="per-channel mean, normalising", data=True
  )
  std: tuple[float, ...] = rule(
    (0.229, 0.224, 0.225), doc="per-channel std, normalising", data=True
  )
  interpolation: str = rule(
    "bilinear",
    choices=INTERPOLATIONS,
    doc="the resize filter of the random resized crop, the policies' geometric ops and eval",
    data=True,
  )
  auto_augment: str = rule(
    "none",
    choices=AUTO_AUGMENTS,
    doc="per-image policy after crop and flip, as torchvision's --auto-augment: "
    '"ta_wide" TrivialAugmentWide, "ra" RandAugment (ra_num_ops, ra_magnitude), '
    '"imagenet" AutoAugment\'s ImageNet policy, "augmix" AugMix (augmix_severity)',
    data=True,
  )
  ra_num_ops: int = rule(2, at_least=1, doc="RandAugment's operations per image", data=True)
  ra_magnitude: int = rule(
    9, at_least=0, below=31, doc="RandAugment's magnitude bin (of 31)", data=True
  )
  augmix_severity: int = rule(
    3, at_least=1, below=11, doc="AugMix's magnitude bin (1..10)", data=True
  )
  random_erase: float = rule(
    0.0,
    at_least=0,
    check=_probability,
    doc="probability of torchvision's RandomErasing (scale 0.02-0.33, ratio 0.3-3.3, value 0 "
    "after normalisation); the box is drawn on the host, the pixels erased on the device",
    data=True,
  )
  ra_reps: int = rule(
    1,
    at_least=1,
    doc="repeated augmentation (torchvision's RASampler, --ra-reps): each image of an "
    "epoch's share comes ra_reps times, on ra_reps devices, each augmented its own way; "
    "an epoch holds len(train) // 256 * 256 images; 1: off",
    data=True,
  )
  workers: int = rule(
    0,
    at_least=0,
    resumable=True,
    doc="decoding processes per host (at most the cores); 0 decodes in the main process",
    data=True,
  )
  prefetch: int = rule(
    2,
    at_least=1,
    resumable=True,
    doc="batches read ahead by each reader (the main process or each worker)",
    data=True,
  )
  # Optimisation
  global_batch: int = rule(
    256, at_least=1, doc="images per step, over every device and process", data=True
  )
  epochs: int = rule(90, at_least=1, doc="the schedule's length in epochs")
  max_steps: int = rule(
    0,
    at_least=0,
    resumable=True,
    doc="stop after this many steps (0: run all epochs); the schedule still spans epochs",
  )
  optimizer: str = rule("sgd", choices=OPTIMIZERS, doc='"sgd" (with momentum) or "adamw"')
  lr: float = rule(
    0.1, at_least=0, doc="the peak learning rate per 256 images: scaled by global_batch / 256"
  )
  momentum: float = rule(0.9, at_least=0, below=1, doc="SGD's momentum")
  nesterov: bool = rule(False, doc="SGD's Nesterov momentum")
  weight_decay: float = rule(1e-4, at_least=0, doc="L2 weight decay of conv and fc kernels")
  norm_weight_decay: float | None = rule(
    0.0,
    at_least=0,
    nullable=True,
    doc="weight decay of BatchNorm's weights and biases, as torchvision's "
    "--norm-weight-decay; none: weight_decay (torchvision's default)",
  )
  bias_weight_decay: float | None = rule(
    0.0,
    at_least=0,
    nullable=True,
    doc="weight decay of every bias, as torchvision's --bias-weight-decay (matched before "
    "norm_weight_decay); none: weight_decay",
  )
  decay_all: bool = rule(
    False, doc="every parameter decays by weight_decay (both fields above none)"
  )
  warmup_epochs: float = rule(
    0.0, at_least=0, doc="epochs of linear warm-up to the peak rate, before the cosine decay"
  )
  lr_warmup_decay: float = rule(
    0.0,
    at_least=0,
    below=1,
    doc="the warm-up's first rate over the peak (torchvision's --lr-warmup-decay, 0.01 there)",
  )
  lr_update: str = rule(
    "step",
    choices=LR_UPDATES,
    doc='when the rate changes: every "step", or every "epoch" as torchvision\'s schedulers',
  )
  label_smoothing: float = rule(
    0.0, at_least=0, below=1, doc="the targets' label smoothing, as torch's CrossEntropyLoss"
  )
  mixup_alpha: float = rule(
    0.0,
    at_least=0,
    doc="MixUp's Beta alpha (0: off); with cutmix_alpha, torchvision v2's RandomChoice of "
    "the two per device's share of the batch, on the device: soft targets",
  )
  cutmix_alpha: float = rule(0.0, at_least=0, doc="CutMix's Beta alpha (0: off), as mixup_alpha")
  ema_decay: float = rule(
    0.0,
    at_least=0,
    below=1,
    doc="> 0 keeps an exponential moving average of the weights (e.g. 0.9998)",
  )
  ema_steps: int = rule(
    1,
    at_least=1,
    doc="the average moves after every ema_steps-th step of an epoch (its first included)",
  )
  ema_style: str = rule(
    "warmup",
    choices=EMA_STYLES,
    doc='"warmup": decay min(ema_decay, (1 + t) / (10 + t)) at update t; "torchvision": '
    "the reference trainer's --model-ema (1 - ema_decay scaled by global_batch * ema_steps "
    "/ epochs, the first update and every update during warm-up a copy)",
  )
  clip_grad_norm: float = rule(
    0.0, at_least=0, doc="> 0: the gradient is scaled down to this global L2 norm (0: off)"
  )
  accumulate_steps: int = rule(
    1,
    at_least=1,
    doc="k > 1: each step's images go through the network in k micro-batches (less "
    "memory), one update on their mean gradient; BatchNorm normalises each micro-batch",
  )
  seed: int = rule(
    0, doc="the seed of the weights, the data order and the augmentations", data=True
  )
  # What trains (fine-tuning). Frozen parts keep every bit of their parameters (no update, no
  # weight decay, no optimiser state) and run their BatchNorm in eval mode.
  freeze: str = rule(
    "",
    check=_parts_problem,
    doc='comma-separated parts left as they are: any of stem, layer1..layer4 ("stem,layer1")',
  )
  linear_probe: bool = rule(False, doc="train fc only: every other part frozen")
  backbone_lr_mult: float = rule(
    1.0, at_least=0, doc="learning rate of everything but fc, relative to fc's"
  )
  # Checkpoints and logs
  init_from: str = rule(
    "",
    doc="start from a converted checkpoint folder, torchvision's weights for arch "
    '("torchvision:IMAGENET1K_V2", or a bare IMAGENET1K_V2 or DEFAULT where no such path '
    "exists), or timm's from the Hugging Face hub "
    '("timm:resnet50d.ra4_e3600_r224_in1k", "timm:resnet50d" for its default tag, '
    '"hf-hub:timm/..."); a fresh head when num_classes differs',
  )
  reset_head: bool = rule(
    False, doc="with init_from: a fresh fc even when num_classes equals the checkpoint's"
  )
  freeze_bn: bool = rule(
    False, doc="with init_from: BatchNorm uses and keeps its running statistics"
  )
  keep_checkpoints: int = rule(
    3, at_least=1, resumable=True, doc="checkpoints kept: the last N, plus the best by top-1"
  )
  checkpoint_every: int = rule(
    0, at_least=0, resumable=True, doc="steps between checkpoints (0: at each epoch's end)"
  )
  eval_every_epochs: int = rule(
    1, at_least=1, resumable=True, doc="evaluate at every N-th epoch's end, and at the last's"
  )
  log_every: int = rule(
    50,
    at_least=1,
    resumable=True,
    doc="steps between log lines and scalars (their loss and top-1 are the means since)",
  )
  step_cache: bool = rule(
    True, resumable=True, doc="keep the compiled train step on disk for the next start"
  )

  def to_json(self) -> dict[str, Any]:
    """The fields as a dict (tuples stay tuples; JSON writes them as lists)."""
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, values: Mapping[str, Any]) -> Config:
    """The config that ``to_json`` gave, as read back from JSON (lists become tuples);
    fields it lacks take their defaults (a run saved before they existed). ``ValueError``
    naming a field this version does not know."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
      raise ValueError(f"config field {unknown[0]!r} is not one of this version's")
    fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return cls(**fields)

  @property
  def data(self) -> DataConfig:
    """The section the input pipeline reads, and all it is handed."""
    return DataConfig(**{name: getattr(self, name) for name in DATA_FIELDS})


FIELDS = {f.name: f for f in dataclasses.fields(Config)}
RESUMABLE = tuple(name for name, f in FIELDS.items() if f.metadata["resumable"])
DATA_FIELDS = tuple(name for name, f in FIELDS.items() if f.metadata["data"])


def _section(name: str, fields: Sequence[str], doc: str) -> type:
  """A frozen dataclass named ``name`` of ``fields`` of ``Config``, each with its type
  there; no defaults: a section is read off a config (``Config.data``), never built alone."""
  section = dataclasses.make_dataclass(name, [(f, FIELDS[f].type) for f in fields], frozen=True)
  section.__module__, section.__doc__ = __name__, doc  # pickled and documented as declared here
  return section


if TYPE_CHECKING:
  # mypy cannot read the fields of a class built at run time: it checks the pipeline's reads
  # against Config, where each field is declared with the type the section gives it.
  DataConfig = Config
else:
  DataConfig = _section(
    "DataConfig",
    DATA_FIELDS,
    """The part of ``Config`` the input pipeline (``training/data.py``) reads, and all it is
    handed: the fields whose ``rule`` says ``data``, each ``Config``'s of that name,
    documented and checked there. Frozen.""",
  )


class SettingError(ValueError):
  """A preset or an assignment that no config comes from. ``parameter`` is the argument
  at fault (``preset`` of ``load_preset``, ``assignments`` of ``override``) and the
  message ``f"{parameter} {detail}"``: a command says ``detail`` after its own flag."""

  def __init__(self, parameter: str, detail: str):
    super().__init__(f"{parameter} {detail}")
    self.parameter, self.detail = parameter, detail


def preset_names() -> list[str]:
  """The presets shipped in the package, by the name ``load_preset`` takes."""
  return sorted(p.stem for p in PRESETS.glob("*.py") if not p.stem.startswith("_"))


def preset_file(preset: str | Path) -> Path:
  """The file ``preset`` names: a path, else the name of a shipped preset
  (``cifar10_tiny``); a path that exists wins over a name."""
  path = Path(preset)
  if path.is_file():
    return path
  name = str(preset)
  if re.fullmatch(r"[A-Za-z_]\w*", name):
    if (PRESETS / f"{name}.py").is_file():
      return PRESETS / f"{name}.py"
    raise SettingError(
      "preset", f"{path}: no such file, nor a preset name (one of {', '.join(preset_names())})"
    )
  raise SettingError("preset", f"{path}: no such file")


def load_preset(preset: str | Path) -> Config:
  """Runs a preset (a shipped one's name, or a file) and returns its ``get_config()``;
  ``SettingError`` naming the file and line where running it raises (a preset is the
  user's code: its error is input)."""
  path = preset_file(preset)
  spec = importlib.util.spec_from_file_location(f"preset_{path.stem}", path)
  assert spec is not None and spec.loader is not None  # a .py file: always a spec
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except Exception as e:  # SyntaxError, ImportError, NameError...: the preset's own bug
    raise SettingError("preset", _preset_error(path, e)) from e
  if not hasattr(module, "get_config"):
    raise SettingError("preset", f"{path}: defines no get_config()")
  try:
    return module.get_config()
  except Exception as e:
    raise SettingError("preset", _preset_error(path, e)) from e


def _preset_error(path: Path, error: BaseException) -> str:
  """``PATH line N: Type: message``, N the preset's deepest line in the traceback."""
  import traceback

  line = getattr(error, "lineno", None) if isinstance(error, SyntaxError) else None
  for frame in traceback.extract_tb(error.__traceback__):
    if Path(frame.filename).resolve() == path.resolve():
      line = frame.lineno
  message = "; ".join(s.strip() for s in str(error).splitlines() if s.strip())
  return f"{path}{f' line {line}' if line else ''}: {type(error).__name__}: {message[:300]}"


def override(config: Config, assignments: Sequence[str]) -> Config:
  """Applies ``key=value`` strings, each parsed as its field's type, and ``validate``s."""
  changes: dict[str, Any] = {}
  for item in assignments:
    key, sep, raw = item.partition("=")
    if not sep or key not in FIELDS:
      raise SettingError(
        "assignments", f"{item!r}: expected key=value with key one of {sorted(FIELDS)}"
      )
    nullable = FIELDS[key].metadata["nullable"]
    if nullable and raw.lower() in ("none", "null"):
      changes[key] = None
    else:
      kind = float if nullable else type(getattr(config, key))
      changes[key] = _parse(key, raw, kind)
  config = dataclasses.replace(config, **changes)
  validate(config)
  return config


def validate(config: Config) -> None:
  """Raises ``ValueError`` naming the first field whose value no run can use: not finite,
  or against its ``rule``; or two fields that no run can combine."""
  for name, value in config.to_json().items():
    problem = _problem(FIELDS[name].metadata, value)
    if problem:
      raise ValueError(f"config {name}={value!r}: {problem}")
  if config.lr_update == "epoch" and config.warmup_epochs >= config.epochs:
    raise ValueError(
      f"config warmup_epochs={config.warmup_epochs!r} with lr_update='epoch': the warm-up "
      f"must end before epochs={config.epochs}, where the cosine has a length to decay over"
    )
  _check_eval_crop(config)
  if config.drop_block_rate and config.layers and len(config.layers) < 3:
    raise FieldError(
      "{rate} acts on the third and fourth stages (timm's drop_blocks), and {layers} has "
      f"{len(config.layers)}: set drop_block_rate=0, or give layers 3 or more stages",
      rate=("drop_block_rate", config.drop_block_rate),
      layers=("layers", config.layers),
    )
  if config.auto_augment == "augmix" and config.interpolation == "bicubic":
    raise ValueError(
      "config auto_augment='augmix' with interpolation='bicubic': torchvision's AugMix "
      "warps uint8 tensors, bilinear (or nearest) only"
    )


def _check_eval_crop(config: Config) -> None:
  """Eval resizes the shorter side to ``eval_resize`` and crops the centre: a crop larger
  than the resize fails at the first evaluation, an epoch in, and the crop is not
  resumable. ``FieldError`` naming both fields."""
  if (config.eval_crop or config.image_size) <= config.eval_resize:
    return
  resize = ("eval_resize", config.eval_resize)
  if config.eval_crop:
    raise FieldError(
      "{crop} is larger than {resize}: eval crops the centre of images resized to "
      "eval_resize; lower eval_crop or raise eval_resize",
      crop=("eval_crop", config.eval_crop),
      resize=resize,
    )
  raise FieldError(
    "{size} is larger than {resize}, and {crop} crops eval images to image_size: set "
    "eval_crop to at most eval_resize, or raise eval_resize",
    size=("image_size", config.image_size),
    resize=resize,
    crop=("eval_crop", 0),
  )


def field_listing(width: int = 100) -> str:
  """Every field with its type, default and meaning (its ``rule``'s ``doc``), as
  ``--list-fields`` prints them: ``name: type = default``, the meaning indented below."""
  import textwrap

  lines = []
  for name, f in FIELDS.items():
    lines.append(f"{name}: {_type_name(f.type)} = {f.default!r}")
    meta = f.metadata
    extra = [f"one of {', '.join(meta['choices'])}"] if meta["choices"] else []
    extra += ["resumable"] if meta["resumable"] else []
    doc = meta["doc"] + (f" ({'; '.join(extra)})" if extra else "")
    lines += textwrap.wrap(doc, width, initial_indent="    ", subsequent_indent="    ")
  return "\n".join(lines)


def _type_name(annotation: Any) -> str:
  """A field's annotation as written (``from __future__ import annotations``: a string)."""
  return str(annotation).replace("tuple[int, ...]", "ints").replace("tuple[float, ...]", "floats")


def _problem(rules: Mapping[str, Any], value: Any) -> str | None:
  if value is None:
    return None if rules["nullable"] else "must be set"
  numbers = value if isinstance(value, (list, tuple)) else [value]
  if any(isinstance(v, float) and not math.isfinite(v) for v in numbers):
    return "not a finite number"
  if rules["choices"] and value not in rules["choices"]:
    return f"must be one of {', '.join(rules['choices'])}"
  if rules["at_least"] is not None and value < rules["at_least"]:
    return f"must be at least {rules['at_least']}"
  if rules["below"] is not None and value >= rules["below"]:
    return f"must be below {rules['below']}"
  return rules["check"](value) if rules["check"] else None


def _parse(key: str, raw: str, kind: type) -> Any:
  try:
    if kind is bool:
      if raw.lower() not in ("true", "false", "1", "0"):
        raise ValueError(raw)
      return raw.lower() in ("true", "1")
    if kind is tuple:
      return tuple(
        int(v) if v.strip().lstrip("-").isdigit() else float(v) for v in raw.split(",") if v.strip()
      )
    return kind(raw)
  except ValueError:
    raise SettingError("assignments", f"{key}={raw}: not a valid {kind.__name__}") from None


def resume_changes(saved: Mapping[str, Any], config: Config, workdir: Path) -> list[str]:
  """The resume rule: ``config``'s changes from the run ``saved`` in ``workdir`` (its
  fields as JSON holds them), each as ``"field old -> new"``. ``ValueError`` naming every
  changed field that is not ``resumable``: the resumed run would compute something else
  than the run it continues (an ``ArgumentError``: a command names its ``--workdir``)."""
  new = json.loads(json.dumps(config.to_json()))  # tuples as lists, as saved
  changed = sorted(k for k in new if k in saved and saved[k] != new[k])
  refused = [k for k in changed if not FIELDS[k].metadata["resumable"]]
  if refused:
    raise ArgumentError(
      f"{{workdir}} {literal(str(workdir))} holds a run with other settings: "
      + literal(", ".join(f"{k} {saved[k]!r} -> {new[k]!r}" for k in refused))
      + "; they change what the run computes: set them back, or use another {workdir}"
    )
  return [f"{k} {saved[k]!r} -> {new[k]!r}" for k in changed]


def save(config: Config, path: Path) -> None:
  """Writes the resolved config as JSON (atomically)."""
  write_atomic(path, json.dumps(config.to_json(), indent=2, allow_nan=False) + "\n")
