"""A training config's recipe in PyTorch, written from the config alone: the reference that
flax-resnet's trainer is held to.

torchvision's model (any stage count and width, the CIFAR stem, frozen BatchNorm),
``torch.optim.SGD`` (coupled weight decay, momentum, Nesterov) or ``AdamW`` with
parameter groups for the decay mask, a per-step linear warm-up and cosine decay over
``epochs``, and cross-entropy with label smoothing. Nothing here calls JAX or optax:
the schedule is the formula, not optax's function.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from flax_resnet.model import DEFAULT_CHANNELS
from flax_resnet.port.twin import torch_resnet
from flax_resnet.registry import architecture


def model(cfg) -> nn.Module:
  """The torch model a ``Config`` describes (``port.twin``'s torchvision twin), in train mode."""
  arch = architecture(cfg.arch)
  layers = tuple(cfg.layers) or arch.layers
  options = {**arch._asdict(), "layers": layers, "num_classes": cfg.num_classes,
             "channels": tuple(cfg.channels) or DEFAULT_CHANNELS[:len(layers)], "stem": cfg.stem,
             "norm": "frozen_batch" if cfg.freeze_bn else "batch"}
  return torch_resnet(None, options).train()


def decays(name: str, param: torch.Tensor, decay_all: bool) -> bool:
  """Weight decay on conv and linear weights only, unless ``decay_all``."""
  return decay_all or (name.endswith("weight") and param.ndim > 1)


def optimizer(cfg, net: nn.Module, steps_per_epoch: int):
  """(``torch.optim`` optimizer with the decay mask as parameter groups, its per-step
  ``LambdaLR`` schedule)."""
  params = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
  groups = [{"params": [p for n, p in params if decays(n, p, cfg.decay_all)],
             "weight_decay": cfg.weight_decay},
            {"params": [p for n, p in params if not decays(n, p, cfg.decay_all)],
             "weight_decay": 0.0}]
  peak = cfg.lr * cfg.global_batch / 256
  if cfg.optimizer == "sgd":
    opt = torch.optim.SGD(groups, lr=peak, momentum=cfg.momentum, nesterov=cfg.nesterov)
  else:
    opt = torch.optim.AdamW(groups, lr=peak)
  return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda k: lr_factor(cfg, steps_per_epoch, k))


def lr_factor(cfg, steps_per_epoch: int, step: int) -> float:
  """The learning rate of optimizer step ``step`` (from 0) over the peak: linear from 0 over
  ``warmup_epochs``, then cosine to 0 at the end of ``epochs``."""
  warmup = int(cfg.warmup_epochs * steps_per_epoch)
  if step < warmup:
    return step / warmup
  start = warmup or 1  # without warm-up, step 0 runs at the peak and the decay starts after it
  if step < start:
    return 1.0
  length = max(cfg.epochs * steps_per_epoch, warmup + 1, 2) - start
  return 0.5 * (1 + math.cos(math.pi * min(step - start, length) / length))


def loss_fn(cfg) -> nn.Module:
  """Mean cross-entropy with the config's label smoothing."""
  return nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)


def normalize(cfg, images_uint8_nhwc: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
  """uint8 NHWC batches as the trainer feeds them: (x / 255 - mean) / std, NCHW."""
  mean = torch.tensor(cfg.mean, dtype=dtype)
  std = torch.tensor(cfg.std, dtype=dtype)
  x = (images_uint8_nhwc.to(dtype) / 255.0 - mean) / std
  return x.permute(0, 3, 1, 2).contiguous()


def train_step(net, opt, scheduler, criterion, images: torch.Tensor, labels: torch.Tensor,
               clip_grad_norm: float = 0.0, accumulate_steps: int = 1):
  """One optimizer step on a normalised NCHW batch; the loss before it.

  ``clip_grad_norm`` > 0 clips the gradient's global norm first, as torchvision's
  reference trainer does (torch divides by the norm plus 1e-6, optax by the norm: a
  relative 1e-6 / norm apart). ``accumulate_steps`` = k is torch's gradient
  accumulation: k forward and backward passes of a micro-batch each, the loss divided
  by k, then the step; micro-batch j holds rows j, j + k... as flax-resnet's do.
  """
  opt.zero_grad(set_to_none=True)
  total = 0.0
  for j in range(accumulate_steps):
    x, y = images[j::accumulate_steps], labels[j::accumulate_steps]
    loss = criterion(net(x), y) / accumulate_steps
    loss.backward()
    total += float(loss.detach())
  if clip_grad_norm:
    nn.utils.clip_grad_norm_(net.parameters(), clip_grad_norm)
  opt.step()
  scheduler.step()
  return total
