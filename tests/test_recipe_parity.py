"""The trainer's steps equal PyTorch's reference recipe (flax_resnet.bench.torch_recipe), step by
step: SGD with momentum, Nesterov and the decay mask, AdamW, decay on all parameters, frozen
BatchNorm, warm-up and cosine, label smoothing, and BatchNorm's running statistics."""

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

from flax_resnet.bench import torch_recipe
from flax_resnet.torch_port import from_torch_state_dict, to_torch_layout, torch_key
from flax_resnet.training.config import Config
from flax_resnet.training.steps import make_optimizer, train_step
from flax_resnet.training.trainer import schedule
from torch_reference import torch

STEPS, STEPS_PER_EPOCH = 20, 8
BASE = Config(arch="resnet18", layers=(1, 1), channels=(8, 16), num_classes=5, stem="cifar",
              image_size=16, dtype="float32", global_batch=8, epochs=3, lr=3.2, momentum=0.9,
              nesterov=True, weight_decay=5e-3, warmup_epochs=0.5, label_smoothing=0.1)


def fixed_batches():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (STEPS, BASE.global_batch, 16, 16, 3), dtype=np.uint8)
  return images, rng.integers(0, BASE.num_classes, (STEPS, BASE.global_batch))


def torch_run(cfg, start: dict, dtype, bn_momentum: float = 0.1):
  """Per-step losses and the final state dict of the reference recipe, in ``dtype``."""
  net = torch_recipe.model(cfg)
  net.load_state_dict(start)
  net = net.to(dtype)
  for m in net.modules():
    if isinstance(m, torch.nn.BatchNorm2d):
      m.momentum = bn_momentum
  opt, scheduler = torch_recipe.optimizer(cfg, net, STEPS_PER_EPOCH)
  criterion, (images, labels) = torch_recipe.loss_fn(cfg), fixed_batches()
  losses = [torch_recipe.train_step(net, opt, scheduler, criterion,
                                    torch_recipe.normalize(cfg, torch.from_numpy(x), dtype),
                                    torch.from_numpy(y)) for x, y in zip(images, labels)]
  return np.array(losses), {k: v.detach().double().numpy() for k, v in net.state_dict().items()
                            if not k.endswith("num_batches_tracked")}


def jax_run(cfg, start: dict):
  """The same with flax-resnet's optimiser, schedule and jitted train step, float32."""
  model = from_torch_state_dict(start, norm="frozen_batch" if cfg.freeze_bn else "batch")
  optimizer = make_optimizer(model, schedule(cfg, STEPS_PER_EPOCH), optimizer=cfg.optimizer,
                             momentum=cfg.momentum, nesterov=cfg.nesterov,
                             weight_decay=cfg.weight_decay, decay_all=cfg.decay_all)
  model.train()
  graphdef, state = nnx.split((model, optimizer))
  losses = []
  with jax.default_matmul_precision("highest"):
    for x, y in zip(*fixed_batches()):
      state, metrics = train_step(graphdef, state, x, y.astype(np.int32), cfg.label_smoothing,
                                  (tuple(cfg.mean), tuple(cfg.std)))
      losses.append(float(metrics["loss"]))
  model, _ = nnx.merge(graphdef, state)
  final = {torch_key(path): to_torch_layout(np.asarray(var.get_value(), np.float64))
           for path, var in nnx.to_flat_state(nnx.state(model, nnx.Any(nnx.Param,
                                                                       nnx.BatchStat)))}
  return np.array(losses), final


def float32_bound(theirs32: np.ndarray, exact: np.ndarray) -> float:
  """Twice torch's own float32 error against float64, plus 1e-6, relative to the largest
  magnitude: the converter's rule (flax_resnet.parity.judge), over 20 steps."""
  scale = max(float(np.max(np.abs(exact))), 1e-30)
  return 2 * float(np.max(np.abs(theirs32 - exact))) / scale + 1e-6


def relative(ours: np.ndarray, exact: np.ndarray) -> float:
  return float(np.max(np.abs(ours - exact))) / max(float(np.max(np.abs(exact))), 1e-30)


def mismatches(cfg, torch_cfg=None, bn_momentum: float = 0.1) -> list[str]:
  """Every loss and final tensor of our run outside float32's bound against the float64
  reference; the reference may run another recipe (``torch_cfg``, ``bn_momentum``)."""
  torch.manual_seed(0)
  start = torch_recipe.model(cfg).state_dict()
  torch_cfg = torch_cfg or cfg
  losses32, final32 = torch_run(torch_cfg, start, torch.float32, bn_momentum)
  losses64, final64 = torch_run(torch_cfg, start, torch.float64, bn_momentum)
  ours_losses, ours = jax_run(cfg, start)
  assert set(ours) == set(final64)
  bad = [f"loss of step {i + 1}: {ours_losses[i]} against {losses64[i]}" for i in range(STEPS)
         if relative(ours_losses[i:i + 1], losses64[i:i + 1])
         > float32_bound(losses32[i:i + 1], losses64[i:i + 1])]
  bad += [f"{key}: relative error {relative(ours[key], final64[key]):.3g}" for key in final64
          if relative(ours[key], final64[key]) > float32_bound(final32[key], final64[key])]
  return bad


CASES = {"sgd nesterov, decay mask": {}, "sgd, decay on all": {"decay_all": True,
                                                                 "nesterov": False},
         "adamw": {"optimizer": "adamw", "lr": 0.02, "weight_decay": 0.05},
         "frozen batchnorm": {"freeze_bn": True}}


@pytest.mark.parametrize("changes", CASES.values(), ids=CASES.keys())
def test_every_step_and_every_tensor_equal_pytorch_within_float32(changes):
  assert mismatches(dataclasses.replace(BASE, **changes)) == []


@pytest.mark.parametrize("torch_changes, bn_momentum", [
    ({"nesterov": False}, 0.1), ({"decay_all": True}, 0.1), ({}, 0.2),
], ids=["nesterov", "decay mask", "batchnorm momentum"])
def test_one_semantic_difference_is_caught(torch_changes, bn_momentum):
  found = mismatches(BASE, dataclasses.replace(BASE, **torch_changes), bn_momentum)
  assert found, "a different recipe passed as equal"
