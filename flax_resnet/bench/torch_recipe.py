"""A training config's recipe in PyTorch, written from the config alone: the reference that
flax-resnet's trainer is held to.

torchvision's model (any stage count and width, the CIFAR stem, frozen BatchNorm),
``torch.optim.SGD`` (coupled weight decay, momentum, Nesterov) or ``AdamW`` with
parameter groups for the decay mask, a per-step linear warm-up and cosine decay over
``epochs``, and cross-entropy with label smoothing; ``Recipe.step`` is the step that the
reference trainer (``train_torch``) runs and that tests/test_recipe_parity.py proves equal to
flax-resnet's. Nothing here calls JAX or optax: the schedule is the formula, not optax's
function.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from flax_resnet.port.twin import torch_resnet
from flax_resnet.training.config import Config
from flax_resnet.training.models import model_spec


def model(cfg: Config) -> nn.Module:
  """The torch model a ``Config`` describes (``port.twin``'s torchvision twin of what
  ``training.models.model_spec`` builds), in train mode."""
  net = torch_resnet(*model_spec(cfg))
  assert net is not None  # None only for group norm, headless nets or torchvision_only
  return net.train()


def decays(name: str, param: torch.Tensor, decay_all: bool) -> bool:
  """Weight decay on conv and linear weights only, unless ``decay_all``."""
  return decay_all or (name.endswith("weight") and param.ndim > 1)


def optimizer(cfg, net: nn.Module, steps_per_epoch: int):
  """(``torch.optim`` optimizer with the decay mask as parameter groups, its per-step
  ``LambdaLR`` schedule)."""
  params = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
  groups = [
    {
      "params": [p for n, p in params if decays(n, p, cfg.decay_all)],
      "weight_decay": cfg.weight_decay,
    },
    {"params": [p for n, p in params if not decays(n, p, cfg.decay_all)], "weight_decay": 0.0},
  ]
  peak = cfg.lr * cfg.global_batch / 256
  if cfg.optimizer == "sgd":
    opt: torch.optim.Optimizer = torch.optim.SGD(
      groups, lr=peak, momentum=cfg.momentum, nesterov=cfg.nesterov
    )
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


# The reference's compute dtypes: torch's autocast of the forward pass, as the trainer computes
# in them; parameters, BatchNorm statistics and the loss stay in the parameters' dtype.
AUTOCAST = {"bfloat16": torch.bfloat16, "float16": torch.float16}


class Ema:
  """The trainer's EMA of weights and BN statistics: update t (from 0) decays by
  min(decay, (1 + t) / (10 + t)), as ``flax_resnet.training.steps.ema_update``."""

  def __init__(self, net: nn.Module, decay: float):
    self.decay, self.updates = decay, 0
    self.state = {k: v.detach().clone() for k, v in net.state_dict().items()}

  @torch.no_grad()
  def update(self, net: nn.Module) -> None:
    """Moves the average towards ``net``'s state; integer buffers are copied."""
    d = min(self.decay, (1 + self.updates) / (10 + self.updates))
    for k, v in net.state_dict().items():
      if v.dtype.is_floating_point:
        self.state[k].mul_(d).add_(v.detach(), alpha=1 - d)
      else:
        self.state[k].copy_(v)
    self.updates += 1


class Recipe:
  """A config's training step in PyTorch, as the reference trainer runs it and
  tests/test_recipe_parity.py proves it equal to flax-resnet's: the net in channels_last, its
  optimizer and schedule, the loss, autocast in the config's dtype and the EMA when kept.

  ``net`` is placed (device, dtype) by the caller; the optimizer and the EMA are made here,
  after channels_last, so that they hold the net's tensors as the step updates them.
  """

  def __init__(self, cfg, net: nn.Module, steps_per_epoch: int):
    self.net = net.to(memory_format=torch.channels_last)
    self.opt, self.scheduler = optimizer(cfg, self.net, steps_per_epoch)
    self.criterion = loss_fn(cfg)
    self.ema = Ema(self.net, cfg.ema_decay) if cfg.ema_decay else None
    self.dtype = AUTOCAST.get(cfg.dtype)
    self.clip_grad_norm, self.accumulate_steps = cfg.clip_grad_norm, cfg.accumulate_steps

  def autocast(self, device_type: str):
    """The forward pass's autocast context (off in float32)."""
    return torch.autocast(device_type, dtype=self.dtype, enabled=self.dtype is not None)

  def step(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """One optimizer step on a normalised NCHW batch, then the EMA's update; the loss before
    it (a 0-d tensor: reading it waits for the device). ``labels`` are class indices (B,) or
    probabilities (B, C), MixUp/CutMix's soft targets, which CrossEntropyLoss smooths as
    (1 - ε) t + ε / C.

    ``clip_grad_norm`` > 0 clips the gradient's global norm first, as torchvision's
    reference trainer does (torch divides by the norm plus 1e-6, optax by the norm: a
    relative 1e-6 / norm apart). ``accumulate_steps`` = k is torch's gradient
    accumulation: k forward and backward passes of a micro-batch each, the loss divided
    by k, then the step; micro-batch j holds rows j, j + k... as flax-resnet's do.
    """
    self.opt.zero_grad(set_to_none=True)
    k, losses = self.accumulate_steps, []
    for j in range(k):
      loss = self.micro_loss(images[j::k], labels[j::k]) / k
      loss.backward()
      losses.append(loss.detach())
    if self.clip_grad_norm:
      nn.utils.clip_grad_norm_(self.net.parameters(), self.clip_grad_norm)
    self.opt.step()
    self.scheduler.step()
    if self.ema:
      self.ema.update(self.net)
    return sum(losses[1:], losses[0])  # in order, as the micro-batches ran

  def micro_loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The mean loss of one micro-batch; logits leave autocast in float32."""
    with self.autocast(images.device.type):
      logits = self.net(images.contiguous(memory_format=torch.channels_last))
    return self.criterion(logits.float() if self.dtype else logits, labels)
