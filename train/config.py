"""The training configuration: one dataclass, Python preset files, ``key=value`` overrides."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path
from typing import Any, Sequence

from train.files import write_atomic


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
  # Optimisation
  global_batch: int = 256
  epochs: int = 90
  max_steps: int = 0  # stop after this many steps (0: run all epochs)
  optimizer: str = "sgd"  # or "adamw"
  lr: float = 0.1  # per 256 images: scaled by global_batch / 256
  momentum: float = 0.9
  nesterov: bool = False
  weight_decay: float = 1e-4
  decay_all: bool = False  # also decay BatchNorm parameters and biases
  warmup_epochs: float = 0.0
  label_smoothing: float = 0.0
  ema_decay: float = 0.0  # > 0 keeps an exponential moving average of the weights (e.g. 0.9998)
  seed: int = 0
  # Checkpoints and logs
  init_from: str = ""  # a converted checkpoint (convert/torch2flax.py) to start from
  freeze_bn: bool = False  # with init_from: BatchNorm uses and keeps its running statistics
  keep_checkpoints: int = 3  # the last N, plus the best by eval top-1
  checkpoint_every: int = 0  # steps between checkpoints (0: at each epoch end)
  eval_every_epochs: int = 1
  log_every: int = 50
  step_cache: bool = True  # keep the compiled train step on disk for the next start (one process)

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def load_preset(path: str | Path) -> Config:
  """Runs a preset file and returns its ``get_config()``."""
  path = Path(path)
  if not path.is_file():
    raise ValueError(f"--config {path}: no such file")
  spec = importlib.util.spec_from_file_location(f"preset_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ValueError(f"--config {path}: defines no get_config()")
  return module.get_config()


def override(config: Config, assignments: Sequence[str]) -> Config:
  """Applies ``key=value`` strings, each parsed as its field's type."""
  fields = {f.name: f for f in dataclasses.fields(config)}
  changes = {}
  for item in assignments:
    key, sep, raw = item.partition("=")
    if not sep or key not in fields:
      raise ValueError(f"--set {item!r}: expected key=value with key one of {sorted(fields)}")
    changes[key] = _parse(key, raw, type(getattr(config, key)))
  return dataclasses.replace(config, **changes)


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
  write_atomic(path, json.dumps(config.to_json(), indent=2) + "\n")
