"""The training configuration: one dataclass, Python preset files, ``key=value`` overrides."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import re
from pathlib import Path
from typing import Any, Sequence

from flax_resnet.files import write_atomic


@dataclasses.dataclass
class Config:
  """Every knob of a run. The defaults train a ResNet-18 on an ImageFolder."""
  # Model
  arch: str = "resnet18"  # a flax_resnet.list_models() name
  num_classes: int = 1000
  stem: str = "imagenet"  # "cifar": 3x3/1 conv, no max-pool, for 32x32 images
  layers: tuple[int, ...] = ()  # blocks per stage instead of the architecture's (tiny test nets)
  channels: tuple[int, ...] = ()  # base channels per stage, with layers
  dtype: str = "bfloat16"  # compute dtype; parameters, BN statistics and loss stay float32
  bn_stats: str = "global"  # BatchNorm batch statistics over the "global" batch or "per_device"
  bn_moments: str = "two_pass"  # or "one_pass": faster, inexact when |mean| >> std (BatchNorm)
  bn_backward: str = "autodiff"  # or "fused": BatchNorm's gradient by hand, the same function
  # Activation checkpointing: "block" or "stage" recomputes each residual block's (stage's)
  # activations in the backward pass instead of keeping them: less memory, more compute;
  # the same function (changeable on resume)
  remat: str = "none"
  # Data
  data_dir: str = ""  # holds <train_split>/<class>/*.jpg and <eval_split>/<class>/*.jpg
  train_split: str = "train"
  eval_split: str = "val"
  synthetic: bool = False  # random images of image_size, for benchmarks; data_dir unused
  image_size: int = 224  # train crop; 32 switches to pad-and-crop augmentation
  eval_resize: int = 256  # eval: shorter side resized to this, centre crop of image_size
  mean: tuple[float, ...] = (0.485, 0.456, 0.406)
  std: tuple[float, ...] = (0.229, 0.224, 0.225)
  workers: int = 0  # decoding processes per host; 0 decodes in the main process
  prefetch: int = 2  # batches read ahead by each reader (the main process or each worker)
  # Optimisation
  global_batch: int = 256
  epochs: int = 90
  max_steps: int = 0  # stop after this many steps (0: run all epochs); the schedule spans epochs
  optimizer: str = "sgd"  # or "adamw"
  lr: float = 0.1  # per 256 images: scaled by global_batch / 256
  momentum: float = 0.9
  nesterov: bool = False
  weight_decay: float = 1e-4
  decay_all: bool = False  # also decay BatchNorm parameters and biases
  warmup_epochs: float = 0.0
  label_smoothing: float = 0.0
  ema_decay: float = 0.0  # > 0 keeps an exponential moving average of the weights (e.g. 0.9998)
  clip_grad_norm: float = 0.0  # > 0: gradient scaled down to this global L2 norm (0: off)
  # k > 1: each step's global_batch images go through the network in k micro-batches of
  # global_batch / k (one at a time: less memory), one optimiser step on their mean gradient;
  # BatchNorm normalises each micro-batch with its own statistics, as torch's accumulation
  accumulate_steps: int = 1
  seed: int = 0
  # What trains (fine-tuning). Frozen parts keep every bit of their parameters (no update, no
  # weight decay, no optimiser state) and run their BatchNorm in eval mode (running statistics
  # used and kept).
  freeze: str = ""  # comma-separated parts: any of stem, layer1..layer4 (e.g. "stem,layer1")
  linear_probe: bool = False  # train fc only: every other part frozen
  backbone_lr_mult: float = 1.0  # learning rate of everything but fc, relative to fc's
  # Checkpoints and logs
  # Start from a converted checkpoint folder (convert/torch2flax.py, train/export.py), or from
  # torchvision's weights for arch by name: "torchvision:IMAGENET1K_V2" (or a bare
  # IMAGENET1K_V2, DEFAULT, ResNet50_Weights.IMAGENET1K_V2 when no such path exists),
  # converted once into the cache of create_model(weights=...). A fresh head when
  # num_classes differs from theirs.
  init_from: str = ""
  freeze_bn: bool = False  # with init_from: BatchNorm uses and keeps its running statistics
  keep_checkpoints: int = 3  # the last N, plus the best by eval top-1
  checkpoint_every: int = 0  # steps between checkpoints (0: at each epoch end)
  eval_every_epochs: int = 1
  log_every: int = 50
  step_cache: bool = True  # keep the compiled train step on disk for the next start (one process)

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def load_preset(path: str | Path) -> Config:
  """Runs a preset file and returns its ``get_config()``; ``ValueError`` naming the file
  and line where running it raises (a preset is the user's code: its error is input)."""
  path = Path(path)
  if not path.is_file():
    raise ValueError(f"--config {path}: no such file")
  spec = importlib.util.spec_from_file_location(f"preset_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
      raise ValueError(f"--config {path}: defines no get_config()")
    config = module.get_config()
  except ValueError as e:
    if str(e).startswith(f"--config {path}:"):
      raise
    raise ValueError(_preset_error(path, e)) from e
  except Exception as e:  # SyntaxError, ImportError, NameError...: the preset's own bug
    raise ValueError(_preset_error(path, e)) from e
  return config


def _preset_error(path: Path, error: BaseException) -> str:
  """``--config PATH line N: Type: message``, N the preset's deepest line in the traceback."""
  import traceback
  line = getattr(error, "lineno", None) if isinstance(error, SyntaxError) else None
  for frame in traceback.extract_tb(error.__traceback__):
    if Path(frame.filename).resolve() == path.resolve():
      line = frame.lineno
  message = "; ".join(s.strip() for s in str(error).splitlines() if s.strip())
  return (f"--config {path}{f' line {line}' if line else ''}: {type(error).__name__}: "
          f"{message[:300]}")


def override(config: Config, assignments: Sequence[str]) -> Config:
  """Applies ``key=value`` strings, each parsed as its field's type, and ``validate``s."""
  fields = {f.name: f for f in dataclasses.fields(config)}
  changes = {}
  for item in assignments:
    key, sep, raw = item.partition("=")
    if not sep or key not in fields:
      raise ValueError(f"--set {item!r}: expected key=value with key one of {sorted(fields)}")
    changes[key] = _parse(key, raw, type(getattr(config, key)))
  config = dataclasses.replace(config, **changes)
  validate(config)
  return config


CHOICES = {"dtype": ("float32", "bfloat16", "float16"), "optimizer": ("sgd", "adamw"),
           "bn_stats": ("global", "per_device"), "stem": ("imagenet", "cifar"),
           "bn_moments": ("two_pass", "one_pass"), "bn_backward": ("autodiff", "fused"),
           "remat": ("none", "block", "stage")}
AT_LEAST = {"num_classes": 1, "image_size": 1, "eval_resize": 1, "global_batch": 1, "epochs": 1,
            "max_steps": 0, "workers": 0, "prefetch": 1, "keep_checkpoints": 1,
            "checkpoint_every": 0, "eval_every_epochs": 1, "log_every": 1, "lr": 0,
            "momentum": 0, "weight_decay": 0, "warmup_epochs": 0, "label_smoothing": 0,
            "ema_decay": 0, "clip_grad_norm": 0, "backbone_lr_mult": 0,
            "accumulate_steps": 1}
BELOW = {"label_smoothing": 1, "ema_decay": 1, "momentum": 1}


def validate(config: Config) -> None:
  """Raises ``ValueError`` naming the first field whose value no run can use: not finite,
  out of range, or not one of the choices."""
  for name, value in config.to_json().items():
    problem = _problem(name, value)
    if problem:
      raise ValueError(f"config {name}={value!r}: {problem}")


def _problem(name: str, value: Any) -> str | None:
  numbers = value if isinstance(value, (list, tuple)) else [value]
  if any(isinstance(v, float) and not math.isfinite(v) for v in numbers):
    return "not a finite number"
  if name in CHOICES and value not in CHOICES[name]:
    return f"must be one of {', '.join(CHOICES[name])}"
  if name in AT_LEAST and value < AT_LEAST[name]:
    return f"must be at least {AT_LEAST[name]}"
  if name in BELOW and value >= BELOW[name]:
    return f"must be below {BELOW[name]}"
  if name == "freeze":
    bad = [part for part in frozen_parts(value) if not PART.fullmatch(part)]
    if bad:
      return f"{bad[0]!r} is not a part: name stem, layer1, layer2... separated by commas"
  return None


PART = re.compile(r"stem|layer[1-9][0-9]*")


def frozen_parts(freeze: str) -> tuple[str, ...]:
  """The parts ``freeze`` names: ``"stem, layer1"`` is ("stem", "layer1")."""
  return tuple(part.strip() for part in freeze.split(",") if part.strip())


def _parse(key: str, raw: str, kind: type) -> Any:
  try:
    if kind is bool:
      if raw.lower() not in ("true", "false", "1", "0"):
        raise ValueError(raw)
      return raw.lower() in ("true", "1")
    if kind is tuple:
      return tuple(int(v) if v.strip().lstrip("-").isdigit() else float(v)
                   for v in raw.split(",") if v.strip())
    return kind(raw)
  except ValueError:
    raise ValueError(f"--set {key}={raw}: not a valid {kind.__name__}") from None


def save(config: Config, path: Path) -> None:
  """Writes the resolved config as JSON (atomically)."""
  write_atomic(path, json.dumps(config.to_json(), indent=2, allow_nan=False) + "\n")
