"""A run's model from its config: ``model_spec`` (what ``registry.build_model`` takes),
``run_model`` (fresh, or started from ``init_from``), ``training_model`` (that model as the
run trains it: its training options set, its ``frozen`` parts' norms frozen), the model's
parts, and the checks that a checkpoint started from is the same network as the run's."""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx

import flax_resnet
from flax_resnet.choices import DEFAULT_CHANNELS
from flax_resnet.errors import FieldError
from flax_resnet.model import BLOCKS, ResNet
from flax_resnet.saved_model import Metadata
from flax_resnet.training import config as config_lib
from flax_resnet.training.config import Config


def model_spec(cfg: Config) -> tuple[str | None, dict]:
  """(arch, options) for ``flax_resnet.registry.build_model``; arch None for custom depths."""
  options = dict(
    num_classes=cfg.num_classes,
    stem=cfg.stem,
    dtype=None if cfg.dtype == "float32" else cfg.dtype,
  )
  own_norm = flax_resnet.registry.architecture(cfg.arch).norm  # resnet50_gn's GroupNorm
  if own_norm is None:
    options["norm"] = "frozen_batch" if cfg.freeze_bn else "batch"
  elif cfg.freeze_bn:
    raise FieldError(
      "{freeze}: {arch} has " + f"norm={own_norm!r}, no BatchNorm to freeze",
      freeze=("freeze_bn", True),
      arch=("arch", cfg.arch),
    )
  # Stochastic depth and DropBlock where asked: they change no tensor, only training.
  for rate in ("drop_path_rate", "drop_block_rate"):
    if getattr(cfg, rate):
      options[rate] = getattr(cfg, rate)
  if not cfg.layers:
    return cfg.arch, options
  # The architecture's own block, groups and width per group, at the run's depths and widths.
  table = flax_resnet.registry.architecture(cfg.arch).options()
  channels = tuple(cfg.channels) or DEFAULT_CHANNELS[: len(cfg.layers)]
  return None, {**options, **table, "layers": tuple(cfg.layers), "channels": channels}


def run_model(cfg: Config) -> ResNet:
  """A fresh model, or one started from ``init_from``: a converted checkpoint, torchvision's
  weights by name (``weights_name``) or timm's from the Hugging Face hub (``hub_repo``)."""
  arch, options = model_spec(cfg)
  model = flax_resnet.registry.build_model(arch, dict(options, rngs=nnx.Rngs(cfg.seed)))
  if cfg.init_from:
    source, meta, what = load_init(cfg, arch, options)
    keep_head = not cfg.reset_head and meta.options.get("num_classes") == cfg.num_classes
    check_same_network(cfg.init_from, (arch, options), (meta.arch, meta.options))
    state = nnx.state(source)
    if not keep_head and "fc" in state:  # a headless checkpoint (num_classes=0) has none
      del state["fc"]  # a fresh head, drawn from the run's seed
    check_same_shapes(cfg.init_from, nnx.state(model), state, skip=() if keep_head else ("fc",))
    nnx.update(model, state)
    print(f"initialised from {what} ({'its' if keep_head else 'a fresh'} head)", flush=True)
  return model


def parts(model: ResNet) -> tuple[str, ...]:
  """The parts of a ResNet that can be frozen: ``stem``, ``layer1``, ``layer2``..."""
  return tuple(info.name for info in model.feature_info)


STEM_MODULES = ("conv1", "bn1", "maxpool")  # the stem part's modules (maxpool: timm's conv pool)


def part_of(path: tuple) -> str:
  """The part a parameter at state ``path`` belongs to: ``stem`` (``conv1``, ``bn1``, timm's
  conv ``maxpool``), ``layerN`` or ``fc``."""
  first = str(getattr(path[0], "key", getattr(path[0], "name", path[0])))
  return "stem" if first in STEM_MODULES else first


def freeze_norms(model: ResNet, frozen: Sequence[str]) -> None:
  """BatchNorm of the ``frozen`` parts in eval mode: it normalises with its running
  statistics and leaves them as they are. Call it after ``model.train()``, which undoes it."""
  for part in frozen:
    if part == "stem":  # timm's deep stem and conv pool hold norms too
      for name in STEM_MODULES:
        if hasattr(model, name):
          getattr(model, name).set_attributes(use_running_average=True, raise_if_not_found=False)
    else:
      getattr(model, part).set_attributes(use_running_average=True, raise_if_not_found=False)


def frozen(cfg: Config, model: ResNet) -> tuple[str, ...]:
  """The parts of ``model`` that the run keeps as they are: every part but ``fc`` for a
  linear probe, else those ``freeze`` names; ``ValueError`` for one the model lacks."""
  have = parts(model)
  if cfg.linear_probe:
    return have
  names = config_lib.frozen_parts(cfg.freeze)
  missing = [name for name in names if name not in have]
  if missing:
    raise ValueError(
      f"config freeze={cfg.freeze!r}: this model has no {missing[0]}; its "
      f"parts are {', '.join(have)}"
    )
  return names


def training_model(cfg: Config, devices: int) -> ResNet:
  """``run_model`` as the run trains it, in train mode: BatchNorm's statistics by device
  (``bn_stats``), their moments and backward pass, activation checkpointing (``remat``),
  and the BatchNorm of the ``frozen`` parts in eval mode."""
  model = run_model(cfg)
  if cfg.bn_stats == "per_device":  # each device's shard is one BatchNorm group
    model.set_attributes(batch_groups=devices, raise_if_not_found=False)
  model.set_attributes(moments=cfg.bn_moments, backward=cfg.bn_backward, raise_if_not_found=False)
  model.remat = cfg.remat
  model.train()
  freeze_norms(model, frozen(cfg, model))
  return model


TORCHVISION_PREFIX = "torchvision:"
TIMM_PREFIX = "timm:"


def hub_repo(init_from: str) -> str | None:
  """The Hugging Face hub repository of timm's weights that ``init_from`` names, or None:
  ``timm:resnet50d.ra4_e3600_r224_in1k`` (timm's name: ``timm/`` on the hub; ``timm:resnet50d``
  its default tag) or
  ``hf-hub:OWNER/NAME`` (timm's spelling of any repository)."""
  from flax_resnet.timm_hub import HUB_PREFIX

  if init_from.startswith(TIMM_PREFIX):
    from flax_resnet.timm_weights import get_pretrained_cfg

    try:  # a tag-less name means the arch's default tag, as timm's
      return get_pretrained_cfg(init_from[len(TIMM_PREFIX) :]).hf_hub_id
    except ValueError as e:
      raise ValueError(f"config init_from={init_from!r}: {e}") from None
  return init_from if init_from.startswith(HUB_PREFIX) else None


def weights_name(init_from: str) -> str | None:
  """The torchvision weights name ``init_from`` gives, or None for a checkpoint folder:
  ``torchvision:NAME`` always names weights; a bare ``IMAGENET1K_V2``, ``DEFAULT`` or
  ``ResNet50_Weights.IMAGENET1K_V2`` does unless a path of that name exists."""
  if init_from.startswith(TORCHVISION_PREFIX):
    return init_from[len(TORCHVISION_PREFIX) :]
  from flax_resnet.pretrained import entry_name

  try:
    entry_name(init_from)  # the spelling weights= accepts
  except ValueError:
    return None
  return None if os.path.exists(init_from) else init_from


def load_init(cfg: Config, arch: str | None, options: dict) -> tuple[ResNet, Metadata, str]:
  """(model, metadata, a description) that ``init_from`` names, in the run's norm and
  dtype: a converted folder read, or torchvision's weights for ``arch`` converted once
  through the cache that ``create_model(weights=...)`` uses."""
  common = {k: options[k] for k in ("norm", "dtype") if k in options}
  repo = hub_repo(cfg.init_from)
  if repo is not None:
    return load_hub_init(cfg, repo, arch, common)
  weights = weights_name(cfg.init_from)
  if weights is None:
    return (*flax_resnet.load(cfg.init_from, **common), cfg.init_from)
  if arch is None:
    raise ValueError(
      f"config init_from={cfg.init_from!r}: torchvision's weights are for "
      f"{cfg.arch}'s own depths and widths; set layers= and channels= empty"
    )
  from flax_resnet.pretrained import load_pretrained, resolve_entry

  try:
    source, meta = load_pretrained(arch, weights, **common)
  except ValueError as e:
    raise ValueError(f"config init_from={cfg.init_from!r}: {e}") from e
  return source, meta, f"torchvision's {arch} {resolve_entry(arch, weights)}"


def load_hub_init(
  cfg: Config, repo: str, arch: str | None, common: dict
) -> tuple[ResNet, Metadata, str]:
  """``load_init`` for timm's weights in hub repository ``repo`` (``hub_repo``), converted
  once through the cache that ``load_pretrained_timm`` uses; the run's arch is checked
  against theirs by ``check_same_network``."""
  if arch is None:
    raise ValueError(
      f"config init_from={cfg.init_from!r}: timm's weights are for {cfg.arch}'s own depths "
      "and widths; set layers= and channels= empty"
    )
  from flax_resnet.timm_hub import load_pretrained_timm, split_repo

  try:
    source, meta = load_pretrained_timm(repo, **common)
  except ValueError as e:
    raise ValueError(f"config init_from={cfg.init_from!r}: {e}") from e
  return source, meta, f"timm's {split_repo(repo)[0]} from the Hugging Face hub"


# Constructor options that make another network, whether or not its tensors' shapes
# differ (a dilation or a stem keeps some); num_classes decides whether the head is kept,
# dtype and norm are the run's own.
NETWORK_OPTIONS = (
  "block",
  "layers",
  "channels",
  "groups",
  "width_per_group",
  "stem",
  "replace_stride_with_dilation",
  "in_channels",
  "expansion",
  "norm_groups",
  "stem_type",
  "stem_width",
  "replace_stem_pool",
  "avg_down",
  "down_kernel_size",
  "block_reduce_first",
  "attn_layer",
  "radix",
  "avd",
  "avd_first",
  "is_first",
  "aa_layer",
  "se_rd_ratio",
  "block_widths",
)


def network_options(arch: str | None, options: dict) -> dict:
  """``NETWORK_OPTIONS`` as (arch, options) build them, defaults and the table included."""
  parameters = inspect.signature(flax_resnet.ResNet.__init__).parameters.values()
  defaults = {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}
  table = flax_resnet.registry.architecture(arch).options() if arch else {}
  merged = {**defaults, **table, **options}
  plain = {k: _as_lists(v) for k, v in merged.items() if k in NETWORK_OPTIONS}
  block = merged["block"]  # a class or its name, or one per stage
  one = isinstance(block, (str, type))
  names = {cls: name for name, cls in BLOCKS.items()}
  per_stage = [
    b if isinstance(b, str) else names.get(b, b.__name__) for b in ([block] if one else block)
  ]
  plain["block"] = per_stage[0] if one else per_stage
  if not any(plain["replace_stride_with_dilation"] or ()):
    plain["replace_stride_with_dilation"] = None  # None and all False are the same network
  return plain


def _as_lists(value):
  """``value`` with every tuple a list, at any depth (``block_widths``), as JSON reads it."""
  return [_as_lists(v) for v in value] if isinstance(value, (list, tuple)) else value


def check_same_network(path: str, ours: tuple, theirs: tuple) -> None:
  """``ValueError`` naming the first ``NETWORK_OPTIONS`` entry in which checkpoint ``path``
  (``theirs``: its arch and options) differs from the run's model (``ours``)."""
  if ours[0] and theirs[0] and ours[0] != theirs[0]:
    raise FieldError(
      f"{{init}} holds {theirs[0]}, this run builds {ours[0]}: set {{arch}}, or start from "
      f"a {ours[0]} checkpoint",
      init=("init_from", path),
      arch=("arch", theirs[0]),
    )
  mine, saved = network_options(*ours), network_options(*theirs)
  for k in NETWORK_OPTIONS:
    if mine[k] != saved[k]:
      raise ValueError(
        f"init_from {path} is a network with {k}={saved[k]!r}, this run builds "
        f"{k}={mine[k]!r}: set the run's {k} to match, or start from another "
        "checkpoint"
      )


def check_same_shapes(path: str, ours: nnx.State, theirs: nnx.State, skip=()) -> None:
  """``ValueError`` naming the first tensor whose key or shape differs between checkpoint
  ``path`` (``theirs``) and the run's model (``ours``), ``skip``ped top-level keys apart:
  ``nnx.update`` would otherwise put a tensor of another shape in the model silently."""

  def shapes(state):
    return {
      ".".join(str(getattr(k, "key", k)) for k in key): tuple(np.shape(x))
      for key, x in jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(state))[0]
      if str(getattr(key[0], "key", key[0])) not in skip
    }

  mine, saved = shapes(ours), shapes(theirs)
  for key in [*mine, *saved]:
    if mine.get(key) != saved.get(key):
      there = saved[key] if key in saved else "absent"
      here = mine[key] if key in mine else "absent"
      raise ValueError(
        f"init_from {path}: {key} has shape {there} there and {here} in this "
        "run's model: start from a checkpoint of the same network"
      )
