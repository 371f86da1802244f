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
from typing import Any

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
  choices: Sequence[str] = (),
  at_least: float | None = None,
  below: float | None = None,
  check: Callable[[Any], str | None] | None = None,
  resumable: bool = False,
  nullable: bool = False,
) -> Any:
  """A field's default with its rule beside it (``validate`` applies it): the ``choices``
  its value must be one of, its range ``[at_least, below)``, a ``check`` returning a
  problem or None, whether a resumed run may change it (``resumable``: it decides
  when to stop, log, save or evaluate, or where and how the same images are read, never
  what a step computes), and whether it may be None (``nullable``; ``none`` in a
  ``key=value``)."""
  return dataclasses.field(
    default=default,
    metadata={
      "choices": tuple(choices),
      "at_least": at_least,
      "below": below,
      "check": check,
      "resumable": resumable,
      "nullable": nullable,
    },
  )


@dataclasses.dataclass
class Config:
  """Every knob of a run. The defaults train a ResNet-18 on an ImageFolder."""

  # Model
  arch: str = rule("resnet18")  # a flax_resnet.list_models() name
  num_classes: int = rule(1000, at_least=1)
  stem: str = rule("imagenet", choices=STEMS)  # "cifar": 3x3/1 conv, no max-pool, for 32x32 images
  # blocks per stage instead of the architecture's (tiny test nets)
  layers: tuple[int, ...] = rule(())
  channels: tuple[int, ...] = rule(())  # base channels per stage, with layers
  # compute dtype; parameters, BN statistics and loss stay float32
  dtype: str = rule("bfloat16", choices=DTYPES)
  # BatchNorm batch statistics over the "global" batch or "per_device"
  bn_stats: str = rule("global", choices=BN_STATS)
  # or "one_pass": faster, inexact when |mean| >> std (BatchNorm)
  bn_moments: str = rule("two_pass", choices=MOMENTS)
  # or "fused": BatchNorm's gradient by hand, the same function
  bn_backward: str = rule("autodiff", choices=BACKWARDS)
  # Activation checkpointing: "block" or "stage" recomputes each residual block's (stage's)
  # activations in the backward pass instead of keeping them: less memory, more compute;
  # the same function (changeable on resume)
  remat: str = rule("none", choices=REMATS, resumable=True)
  # Data
  # holds <train_split>/<class>/*.jpg and <eval_split>/<class>/*.jpg
  data_dir: str = rule("", resumable=True)
  train_split: str = rule("train")
  eval_split: str = rule("val")
  synthetic: bool = rule(False)  # random images of image_size, for benchmarks; data_dir unused
  image_size: int = rule(224, at_least=1)  # train crop; 32 switches to pad-and-crop augmentation
  # eval: shorter side resized to this, centre crop of eval_crop
  eval_resize: int = rule(256, at_least=1)
  # eval's centre crop (torchvision's --val-crop-size); 0: image_size
  eval_crop: int = rule(0, at_least=0)
  mean: tuple[float, ...] = rule((0.485, 0.456, 0.406))
  std: tuple[float, ...] = rule((0.229, 0.224, 0.225))
  # the random resized crop's, the policies' geometric ops' and eval's resize filter
  interpolation: str = rule("bilinear", choices=INTERPOLATIONS)
  # per-image augmentation policy after crop and flip, as torchvision's reference trainer's
  # --auto-augment: "ta_wide" TrivialAugmentWide, "ra" RandAugment (ra_num_ops,
  # ra_magnitude), "imagenet" AutoAugment's ImageNet policy, "augmix" AugMix
  # (augmix_severity); "none" for none
  auto_augment: str = rule("none", choices=AUTO_AUGMENTS)
  ra_num_ops: int = rule(2, at_least=1)  # RandAugment's operations per image
  ra_magnitude: int = rule(9, at_least=0, below=31)  # RandAugment's magnitude bin (of 31)
  augmix_severity: int = rule(3, at_least=1, below=11)  # AugMix's magnitude bin (1..10)
  # probability of torchvision's RandomErasing (scale 0.02-0.33, ratio 0.3-3.3, value 0 after
  # normalisation); the box is drawn on the host, the pixels erased on the device
  random_erase: float = rule(0.0, at_least=0, check=_probability)
  # repeated augmentation (torchvision's RASampler, --ra-reps): each image of an epoch's
  # share comes ra_reps times, on ra_reps different devices, each with its own augmentation;
  # an epoch holds len(train) // 256 * 256 images as the sampler's; 1: off
  ra_reps: int = rule(1, at_least=1)
  # decoding processes per host; 0 decodes in the main process
  workers: int = rule(0, at_least=0, resumable=True)
  # batches read ahead by each reader (the main process or each worker)
  prefetch: int = rule(2, at_least=1, resumable=True)
  # Optimisation
  global_batch: int = rule(256, at_least=1)
  epochs: int = rule(90, at_least=1)
  # stop after this many steps (0: run all epochs); the schedule spans epochs
  max_steps: int = rule(0, at_least=0, resumable=True)
  optimizer: str = rule("sgd", choices=OPTIMIZERS)  # or "adamw"
  lr: float = rule(0.1, at_least=0)  # per 256 images: scaled by global_batch / 256
  momentum: float = rule(0.9, at_least=0, below=1)
  nesterov: bool = rule(False)
  weight_decay: float = rule(1e-4, at_least=0)
  # weight decay of BatchNorm's weights and biases, and of every bias, as torchvision's
  # --norm-weight-decay and --bias-weight-decay (set_weight_decay: "bias" is matched first);
  # None: weight_decay (torchvision's default). The defaults decay conv and fc kernels only.
  norm_weight_decay: float | None = rule(0.0, at_least=0, nullable=True)
  bias_weight_decay: float | None = rule(0.0, at_least=0, nullable=True)
  decay_all: bool = rule(False)  # every parameter decays by weight_decay (both above None)
  warmup_epochs: float = rule(0.0, at_least=0)
  # the warm-up's first rate over the peak (torchvision's --lr-warmup-decay, 0.01 there)
  lr_warmup_decay: float = rule(0.0, at_least=0, below=1)
  # "epoch": warm-up and cosine change the rate once per epoch, as torchvision's schedulers
  lr_update: str = rule("step", choices=LR_UPDATES)
  label_smoothing: float = rule(0.0, at_least=0, below=1)
  # MixUp and CutMix on the device, as torchvision v2's under a RandomChoice of the two (one
  # when only its alpha > 0), per device's share of the batch: soft targets, then smoothing
  mixup_alpha: float = rule(0.0, at_least=0)
  cutmix_alpha: float = rule(0.0, at_least=0)
  # > 0 keeps an exponential moving average of the weights (e.g. 0.9998)
  ema_decay: float = rule(0.0, at_least=0, below=1)
  # the average moves after every ema_steps-th step of an epoch (its first included)
  ema_steps: int = rule(1, at_least=1)
  # "warmup": decay min(ema_decay, (1 + t) / (10 + t)) at update t; "torchvision": the
  # reference trainer's --model-ema: 1 - ema_decay scaled by global_batch * ema_steps /
  # epochs (at most 1), the first update a copy, and a copy at every update during warm-up
  ema_style: str = rule("warmup", choices=EMA_STYLES)
  # > 0: gradient scaled down to this global L2 norm (0: off)
  clip_grad_norm: float = rule(0.0, at_least=0)
  # k > 1: each step's global_batch images go through the network in k micro-batches of
  # global_batch / k (one at a time: less memory), one optimiser step on their mean gradient;
  # BatchNorm normalises each micro-batch with its own statistics, as torch's accumulation
  accumulate_steps: int = rule(1, at_least=1)
  seed: int = rule(0)
  # What trains (fine-tuning). Frozen parts keep every bit of their parameters (no update, no
  # weight decay, no optimiser state) and run their BatchNorm in eval mode (running statistics
  # used and kept).
  # comma-separated parts: any of stem, layer1..layer4 (e.g. "stem,layer1")
  freeze: str = rule("", check=_parts_problem)
  linear_probe: bool = rule(False)  # train fc only: every other part frozen
  # learning rate of everything but fc, relative to fc's
  backbone_lr_mult: float = rule(1.0, at_least=0)
  # Checkpoints and logs
  # Start from a converted checkpoint folder (convert/torch2flax.py, train/export.py), or from
  # torchvision's weights for arch by name: "torchvision:IMAGENET1K_V2" (or a bare
  # IMAGENET1K_V2, DEFAULT, ResNet50_Weights.IMAGENET1K_V2 when no such path exists),
  # converted once into the cache of create_model(weights=...). A fresh head when
  # num_classes differs from theirs.
  init_from: str = rule("")
  # with init_from: a fresh fc even when num_classes equals the checkpoint's (a transfer
  # between two class sets of one size); a fresh one is drawn anyway when they differ
  reset_head: bool = rule(False)
  freeze_bn: bool = rule(False)  # with init_from: BatchNorm uses and keeps its running statistics
  # the last N, plus the best by eval top-1
  keep_checkpoints: int = rule(3, at_least=1, resumable=True)
  # steps between checkpoints (0: at each epoch end)
  checkpoint_every: int = rule(0, at_least=0, resumable=True)
  # evaluate at every N-th epoch's end, and at the last epoch's
  eval_every_epochs: int = rule(1, at_least=1, resumable=True)
  log_every: int = rule(50, at_least=1, resumable=True)
  # keep the compiled train step on disk for the next start (one process)
  step_cache: bool = rule(True, resumable=True)

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
    return DataConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(DataConfig)})


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """The part of ``Config`` the input pipeline (``training/data.py``) reads; each field is
  ``Config``'s of that name, documented and checked there."""

  data_dir: str
  train_split: str
  eval_split: str
  synthetic: bool
  num_classes: int
  image_size: int
  eval_resize: int
  eval_crop: int
  mean: tuple[float, ...]
  std: tuple[float, ...]
  interpolation: str
  auto_augment: str
  ra_num_ops: int
  ra_magnitude: int
  augmix_severity: int
  random_erase: float
  ra_reps: int
  workers: int
  prefetch: int
  global_batch: int
  seed: int


FIELDS = {f.name: f for f in dataclasses.fields(Config)}
RESUMABLE = tuple(name for name, f in FIELDS.items() if f.metadata["resumable"])


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
  if config.auto_augment == "augmix" and config.interpolation == "bicubic":
    raise ValueError(
      "config auto_augment='augmix' with interpolation='bicubic': torchvision's AugMix "
      "warps uint8 tensors, bilinear (or nearest) only"
    )


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
  than the run it continues."""
  new = json.loads(json.dumps(config.to_json()))  # tuples as lists, as saved
  changed = sorted(k for k in new if k in saved and saved[k] != new[k])
  refused = [k for k in changed if not FIELDS[k].metadata["resumable"]]
  if refused:
    raise ValueError(
      f"workdir {workdir} holds a run with other settings: "
      + ", ".join(f"{k} {saved[k]!r} -> {new[k]!r}" for k in refused)
      + "; they change what the run "
      "computes: set them back, or use another --workdir"
    )
  return [f"{k} {saved[k]!r} -> {new[k]!r}" for k in changed]


def save(config: Config, path: Path) -> None:
  """Writes the resolved config as JSON (atomically)."""
  write_atomic(path, json.dumps(config.to_json(), indent=2, allow_nan=False) + "\n")
