"""A training config's recipe in PyTorch, written from the config alone: the reference that
flax-resnet's trainer is held to.

torchvision's model (any stage count and width, the CIFAR stem, frozen BatchNorm),
``torch.optim.SGD`` (coupled weight decay, momentum, Nesterov) or ``AdamW`` with
parameter groups per weight decay (torchvision's ``set_weight_decay``), a linear warm-up and
cosine decay over ``epochs`` (per step, or per epoch as torchvision's schedulers), gradient
clipping, cross-entropy with label smoothing and the EMA (the trainer's warming-up one or
torchvision's ``AveragedModel``); ``Recipe.step`` is the step that the
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
  assert net is not None  # None only for group norm, headless nets or library_only
  return net.train()


# torchvision's set_weight_decay's norm layers (those that ResNets have)
NORM_LAYERS = (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)


def weight_decays(cfg, net: nn.Module) -> list[tuple[float, torch.Tensor]]:
  """(weight decay, parameter) of each trainable parameter, as torchvision's reference trainer
  sorts them (``set_weight_decay``): ``bias_weight_decay`` for a parameter named "bias" (its
  custom key, matched first), ``norm_weight_decay`` for a norm layer's, ``weight_decay`` for
  the rest and where those are ``None``; ``decay_all`` makes both ``None``."""
  norm = None if cfg.decay_all else cfg.norm_weight_decay
  bias = None if cfg.decay_all else cfg.bias_weight_decay
  rates: list[tuple[float, torch.Tensor]] = []
  for module in net.modules():
    for name, p in module.named_parameters(recurse=False):
      if not p.requires_grad:
        continue
      if bias is not None and name == "bias":
        rates.append((bias, p))
      elif norm is not None and isinstance(module, NORM_LAYERS):
        rates.append((norm, p))
      else:
        rates.append((cfg.weight_decay, p))
  return rates


def optimizer(cfg, net: nn.Module, steps_per_epoch: int):
  """(``torch.optim`` optimizer with a parameter group per weight decay (``weight_decays``),
  its ``LambdaLR`` schedule, stepped once per optimizer step)."""
  rates = weight_decays(cfg, net)
  groups = [
    {"params": [p for r, p in rates if r == rate], "weight_decay": rate}
    for rate in dict.fromkeys(r for r, _ in rates)
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
  """The learning rate of optimizer step ``step`` (from 0) over the peak: linear from
  ``lr_warmup_decay`` over ``warmup_epochs``, then cosine to 0 at the end of ``epochs``;
  with ``lr_update`` = "epoch", ``epoch_factor`` of the step's epoch."""
  if cfg.lr_update == "epoch":
    return epoch_factor(cfg, step // steps_per_epoch)
  warmup = int(cfg.warmup_epochs * steps_per_epoch)
  if step < warmup:
    return cfg.lr_warmup_decay + (1 - cfg.lr_warmup_decay) * step / warmup
  start = warmup or 1  # without warm-up, step 0 runs at the peak and the decay starts after it
  if step < start:
    return 1.0
  length = max(cfg.epochs * steps_per_epoch, warmup + 1, 2) - start
  return 0.5 * (1 + math.cos(math.pi * min(step - start, length) / length))


def epoch_factor(cfg, epoch: int) -> float:
  """The rate over the peak in ``epoch`` under torchvision's reference trainer's schedulers,
  stepped once per epoch: ``LinearLR(start_factor=lr_warmup_decay, total_iters=W)`` while
  epoch < W = warmup_epochs, then ``CosineAnnealingLR(T_max=epochs - W)`` (their closed forms)."""
  w, start = cfg.warmup_epochs, cfg.lr_warmup_decay
  if epoch < w:
    return start + (1 - start) * epoch / w
  length = cfg.epochs - w
  return 0.5 * (1 + math.cos(math.pi * min(epoch - w, length) / length))


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
  def update(self, net: nn.Module, epoch: int) -> None:
    """Moves the average towards ``net``'s state; integer buffers are copied."""
    del epoch  # the warm-up counts updates
    d = min(self.decay, (1 + self.updates) / (10 + self.updates))
    for k, v in net.state_dict().items():
      if v.dtype.is_floating_point:
        self.state[k].mul_(d).add_(v.detach(), alpha=1 - d)
      else:
        self.state[k].copy_(v)
    self.updates += 1


class TorchvisionEma:
  """torchvision's reference trainer's ``--model-ema``: its ``ExponentialMovingAverage``, an
  ``AveragedModel`` of parameters and buffers averaging decay * average + (1 - decay) * net,
  with its decay: 1 - min(1, (1 - ema_decay) * global_batch * ema_steps / epochs); after an
  update in an epoch < ``warmup_epochs`` the count of averages goes back to 0, so that the
  next update copies, as the reference trainer does."""

  def __init__(self, net: nn.Module, cfg):
    adjust = cfg.global_batch * cfg.ema_steps / cfg.epochs
    decay = 1.0 - min(1.0, (1.0 - cfg.ema_decay) * adjust)
    self.model = torch.optim.swa_utils.AveragedModel(
      net, avg_fn=lambda avg, param, n: decay * avg + (1 - decay) * param, use_buffers=True
    )
    self.warmup_epochs, self.updates = cfg.warmup_epochs, 0

  @property
  def state(self) -> dict[str, torch.Tensor]:
    """The averaged net's state dict."""
    return self.model.module.state_dict()

  def update(self, net: nn.Module, epoch: int) -> None:
    """The reference trainer's update after a step of ``epoch`` (from 0)."""
    self.model.update_parameters(net)
    if epoch < self.warmup_epochs:
      self.model.n_averaged.fill_(0)
    self.updates += 1


def ema(cfg, net: nn.Module) -> Ema | TorchvisionEma | None:
  """The config's EMA of ``net`` (its ``ema_style``), or ``None`` without ``ema_decay``."""
  if not cfg.ema_decay:
    return None
  return Ema(net, cfg.ema_decay) if cfg.ema_style == "warmup" else TorchvisionEma(net, cfg)


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
    self.ema = ema(cfg, self.net)
    self.ema_steps, self.steps_per_epoch, self.steps = cfg.ema_steps, steps_per_epoch, 0
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
    reference trainer does. ``accumulate_steps`` = k is torch's gradient
    accumulation: k forward and backward passes of a micro-batch each, the loss divided
    by k, then the step; micro-batch j holds rows j, j + k... as flax-resnet's do. The EMA
    moves when the reference trainer's would: after batch i of an epoch with
    i % ema_steps == 0.
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
    epoch, i = divmod(self.steps, self.steps_per_epoch)  # i: the batch's index in its epoch
    if self.ema and i % self.ema_steps == 0:
      self.ema.update(self.net, epoch)
    self.steps += 1
    return sum(losses[1:], losses[0])  # in order, as the micro-batches ran

  def micro_loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The mean loss of one micro-batch; logits leave autocast in float32."""
    with self.autocast(images.device.type):
      logits = self.net(images.contiguous(memory_format=torch.channels_last))
    return self.criterion(logits.float() if self.dtype else logits, labels)
