"""The trainer's steps equal PyTorch's reference step, ``torch_recipe.Recipe.step``: the one the
reference trainer (``flax-resnet-bench train-torch``) runs, as the last test checks. Step by
step: SGD with momentum, Nesterov and the decay mask, AdamW, decay on all parameters, frozen
BatchNorm, warm-up and cosine, label smoothing, BatchNorm's running statistics and the EMA;
torchvision's weight-decay groups, warm-up start factor, per-epoch rates, gradient clipping
and EMA (AveragedModel every ema_steps batches, reset during the warm-up); MixUp/CutMix's soft
targets and random erasing, the reference fed torchvision v2's transforms with the parameters
our step draws.

Both run in float64. In float32, 20 steps of a ReLU net are not a continuous function of
rounding: each step has ~5e4 pre-activations, some within float32 rounding of 0, and the
side they fall on depends on the order of each sum (the CPU's vector code). One element
on the other side changes a gradient, and every later loss by ~1e-6: a bound from torch's
own float32 error held on one machine and failed on another (AVX2) from step 9 on. In
float64 no pre-activation comes that close (~1e-15 relative; chance ~1e-9 a run), so the
two recipes agree to 1.7e-14 at most (measured, every case, the reference in channels_last),
and a bound of 1e-10 lies 4e7 times below the smallest semantic difference that the
catching test shows to be caught (the EMA's decay 0.6 for 0.5: 0.042). The reference's
autocast is off here (float32 configs); float32 precision of one train-mode step is tested
in test_parity.py, on a pinned pattern of ReLU and max-pool kinks.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from torch_reference import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from flax_resnet.bench import torch_recipe
from flax_resnet.port.state_dict import from_torch_state_dict, to_torch_layout, torch_key
from flax_resnet.training.batch import Mix, mix_params, step_key
from flax_resnet.training.config import Config
from flax_resnet.training.optimiser import ema_update_args, run_optimizer
from flax_resnet.training.steps import StepSpec, ema_update, train_step

STEPS, STEPS_PER_EPOCH = 20, 8
BASE = Config(
  arch="resnet18",
  layers=(1, 1),
  channels=(8, 16),
  num_classes=5,
  stem="cifar",
  image_size=16,
  dtype="float32",
  global_batch=8,
  epochs=3,
  lr=3.2,
  momentum=0.9,
  nesterov=True,
  weight_decay=5e-3,
  warmup_epochs=0.5,
  label_smoothing=0.1,
)


def fixed_batches():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (STEPS, BASE.global_batch, 16, 16, 3), dtype=np.uint8)
  return images, rng.integers(0, BASE.num_classes, (STEPS, BASE.global_batch))


def mixing_of(cfg) -> Mix | None:
  """The trainer's MixUp/CutMix settings of ``cfg`` on one device; None when both are off."""
  if not (cfg.mixup_alpha or cfg.cutmix_alpha):
    return None
  return Mix(cfg.num_classes, cfg.mixup_alpha, cfg.cutmix_alpha, 1, cfg.seed)


def erase_boxes(cfg) -> np.ndarray | None:
  """(STEPS, batch, 4) random erasing boxes (top, left, height, width), as the host draws
  them: each image erased with probability ``random_erase``, zeros elsewhere; None at 0."""
  if not cfg.random_erase:
    return None
  rng = np.random.default_rng(1)
  shape = (STEPS, BASE.global_batch)
  boxes = np.stack([*rng.integers(0, 12, (2, *shape)), *rng.integers(1, 6, (2, *shape))], -1)
  return (boxes * (rng.random(shape) < cfg.random_erase)[..., None]).astype(np.int32)


def torchvision_mix(mixing: Mix, step: int, images, labels):
  """torchvision v2's MixUp or CutMix of one batch, given our step's draw (``mix_params``
  of its key, compiled as in the step: XLA's compiled Beta sampler and the eager one can
  differ by 1 ulp), as the reference trainer's collate_fn applies them; soft targets
  (float32)."""
  params = drawn_in_step(mixing, step, *images.shape[2:])
  lam, (y1, x1, y2, x2) = float(params["lam"][0]), (int(v) for v in params["box"][0])
  if params["cutmix"][0]:
    transform = v2.CutMix(alpha=mixing.cutmix_alpha, num_classes=mixing.num_classes)
    drawn = {"box": (x1, y1, x2, y2), "lam_adjusted": lam}
  else:
    transform = v2.MixUp(alpha=mixing.mixup_alpha, num_classes=mixing.num_classes)
    drawn = {"lam": lam}
  transform.make_params = lambda inputs: drawn
  return transform(images, labels)


@functools.partial(jax.jit, static_argnums=(0, 2, 3))
def jitted_mix_params(mixing: Mix, step, height: int, width: int) -> dict:
  return mix_params(step_key(mixing.seed, step), mixing, height, width)


def drawn_in_step(mixing: Mix, step: int, height: int, width: int) -> dict:
  """``mix_params`` of step ``step`` as the train step draws them (64-bit types or not: the
  draws are of fixed dtypes)."""
  with jax.enable_x64(True):
    return jitted_mix_params(mixing, np.uint32(step), height, width)


def torch_batches(cfg):
  """The reference's batch of each step: normalised in float64, each image through
  torchvision's erase (v=0) with ``erase_boxes``, then ``torchvision_mix``; labels, or soft
  targets in float64 (the exact float32 values: torch's loss takes the logits' dtype)."""
  mixing, boxes = mixing_of(cfg), erase_boxes(cfg)
  for step, (x, y) in enumerate(zip(*fixed_batches())):
    images = torch_recipe.normalize(cfg, torch.from_numpy(x), torch.float64)
    labels = torch.from_numpy(y)
    if boxes is not None:
      zero = torch.tensor(0.0, dtype=torch.float64)
      images = torch.stack(
        [F.erase(image, *(int(v) for v in box), v=zero) for image, box in zip(images, boxes[step])]
      )
    if mixing is not None:
      images, labels = torchvision_mix(mixing, step, images, labels)
      labels = labels.double()
    yield images, labels


def torch_run(cfg, start: dict, bn_momentum: float = 0.1):
  """Per-step losses, the final state dict and the EMA's (or ``None``) of the reference
  trainer's step (``torch_recipe.Recipe.step``), in float64."""
  net = torch_recipe.model(cfg)
  net.load_state_dict(start)
  net = net.double()
  for m in net.modules():
    if isinstance(m, torch.nn.BatchNorm2d):
      m.momentum = bn_momentum
  recipe = torch_recipe.Recipe(cfg, net, STEPS_PER_EPOCH)
  losses = [float(recipe.step(x, y)) for x, y in torch_batches(cfg)]
  ema = recipe.ema and arrays(recipe.ema.state)
  return np.array(losses), arrays(recipe.net.state_dict()), ema


def arrays(state_dict: dict) -> dict:
  return {
    k: v.detach().numpy() for k, v in state_dict.items() if not k.endswith("num_batches_tracked")
  }


def jax_run(cfg, start: dict):
  """The same with flax-resnet's optimiser, schedule, jitted train step and EMA, in float64."""
  with jax.enable_x64(True):
    model = from_torch_state_dict(
      start, norm="frozen_batch" if cfg.freeze_bn else "batch", param_dtype=jnp.float64
    )
    optimizer = run_optimizer(cfg, model, STEPS_PER_EPOCH)  # the trainer's
    model.train()
    graphdef, state = nnx.split((model, optimizer))
    losses = []
    ema = jax.tree.map(jnp.copy, model_tensors(model)) if cfg.ema_decay else None
    boxes = erase_boxes(cfg)
    for step, (x, y) in enumerate(zip(*fixed_batches())):
      state, metrics = train_step(
        graphdef,
        state,
        x,
        y.astype(np.int32),
        boxes=None if boxes is None else boxes[step],
        spec=StepSpec(
          label_smoothing=cfg.label_smoothing,
          norm=(tuple(cfg.mean), tuple(cfg.std)),
          accumulate_steps=cfg.accumulate_steps,
          frozen=(),
          mixing=mixing_of(cfg),
        ),
      )
      losses.append(np.asarray(metrics["loss"]))
      model, _ = nnx.merge(graphdef, state)
      move = ema_update_args(cfg, step, STEPS_PER_EPOCH)
      if ema is not None and move is not None:  # when and how the trainer moves it
        ema = ema_update(ema, model_tensors(model), **move)
    if ema is not None:
      ema = {k: to_torch_layout(np.asarray(v)) for k, v in ema.items()}
  return (
    np.array(losses),
    {k: to_torch_layout(np.asarray(v)) for k, v in model_tensors(model).items()},
    ema,
  )


def model_tensors(model) -> dict:
  """The model's parameters and BatchNorm statistics by torch key, in flax layout."""
  return {
    torch_key(path): var.get_value()
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat)))
  }


# See the module's docstring: float64 runs of one recipe agree to ~1e-14.
BOUND = 1e-10


def relative(ours: np.ndarray, exact: np.ndarray) -> float:
  return float(np.max(np.abs(ours - exact))) / max(float(np.max(np.abs(exact))), 1e-30)


def mismatches(cfg, torch_cfg=None, bn_momentum: float = 0.1) -> list[str]:
  """Every loss, final tensor and EMA tensor of our float64 run further than ``BOUND`` from
  the reference's; the reference may run another recipe (``torch_cfg``, ``bn_momentum``)."""
  torch.manual_seed(0)
  start = torch_recipe.model(cfg).state_dict()
  theirs_losses, theirs, theirs_ema = torch_run(torch_cfg or cfg, start, bn_momentum)
  ours_losses, ours, ours_ema = jax_run(cfg, start)
  assert set(ours) == set(theirs) and (ours_ema is None) == (theirs_ema is None)
  assert ours_losses.dtype == np.float64 and all(v.dtype == np.float64 for v in ours.values())
  bad = [
    f"loss of step {i + 1}: {ours_losses[i]} against {theirs_losses[i]}"
    for i in range(STEPS)
    if relative(ours_losses[i : i + 1], theirs_losses[i : i + 1]) > BOUND
  ]
  for name, (a, b) in {"": (ours, theirs), "EMA ": (ours_ema or {}, theirs_ema or {})}.items():
    bad += [
      f"{name}{key}: relative error {relative(a[key], b[key]):.3g}"
      for key in b
      if relative(a[key], b[key]) > BOUND
    ]
  return bad


CASES = {
  "sgd nesterov, decay mask": {},
  "sgd, decay on all": {"decay_all": True, "nesterov": False},
  "adamw": {"optimizer": "adamw", "lr": 0.02, "weight_decay": 0.05},
  "frozen batchnorm": {"freeze_bn": True},
  # BatchNorm's statistics per micro-batch of 2, running statistics moved 4 times a step
  "gradient accumulation": {"accumulate_steps": 4},
  # the warm-up's (1 + t) / (10 + t) until step 9, then the decay
  "ema": {"ema_decay": 0.5},
  # updates after batches 0, 3, 6 of each 8-step epoch: t counts updates
  "ema every 3 steps": {"ema_decay": 0.5, "ema_steps": 3},
  # AveragedModel with decay 1 - 0.01 * 8 * 3 / 3 = 0.92, reset after each update of epoch 0:
  # copies until epoch 1's first update, then averages (3 does not divide 8)
  "torchvision ema every 3 steps, warm-up reset": {
    "ema_decay": 0.99,
    "ema_style": "torchvision",
    "ema_steps": 3,
    "warmup_epochs": 1.0,
  },
  "torchvision ema without warm-up": {"ema_decay": 0.99, "ema_style": "torchvision"},
  # torchvision's V2: no decay on BatchNorm, fc's bias decays with the kernels
  "v2 weight decay": {"weight_decay": 2e-5, "norm_weight_decay": 0.0, "bias_weight_decay": None},
  "norm and bias decay": {"norm_weight_decay": 1e-2, "bias_weight_decay": 3e-2},
  "norm decay as weight_decay, no bias decay": {"norm_weight_decay": None},
  "adamw, three decays": {
    "optimizer": "adamw",
    "lr": 0.02,
    "weight_decay": 0.05,
    "norm_weight_decay": 0.01,
    "bias_weight_decay": 0.02,
  },
  "warm-up from 0.01, per step": {"lr_warmup_decay": 0.01},
  "warm-up from 0.01, per epoch": {
    "lr_warmup_decay": 0.01,
    "lr_update": "epoch",
    "warmup_epochs": 1.0,
  },
  "cosine per epoch, no warm-up": {"lr_update": "epoch", "warmup_epochs": 0.0},
  # every step's gradient norm is above 0.05 (the catching test below shows clipping acts)
  "clipping": {"clip_grad_norm": 0.05},
}


@pytest.mark.parametrize("changes", CASES.values(), ids=CASES.keys())
def test_every_step_and_every_tensor_equal_pytorch_in_float64(changes):
  assert mismatches(dataclasses.replace(BASE, **changes)) == []


@pytest.mark.parametrize(
  "changes, torch_changes, bn_momentum",
  [
    ({}, {"nesterov": False}, 0.1),
    ({}, {"decay_all": True}, 0.1),
    ({}, {}, 0.2),
    ({}, {"accumulate_steps": 4}, 0.1),
    ({"ema_decay": 0.5}, {"ema_decay": 0.6}, 0.1),
    ({"ema_decay": 0.5, "ema_steps": 3}, {"ema_decay": 0.5, "ema_steps": 2}, 0.1),
    (CASES["torchvision ema without warm-up"], {"ema_style": "warmup"}, 0.1),
    ({"norm_weight_decay": 1e-2}, {"norm_weight_decay": 0.0}, 0.1),
    ({"bias_weight_decay": None}, {"bias_weight_decay": 0.0}, 0.1),
    ({"lr_warmup_decay": 0.01}, {"lr_warmup_decay": 0.0}, 0.1),
    ({"lr_update": "epoch"}, {"lr_update": "step"}, 0.1),
    ({"clip_grad_norm": 0.05}, {"clip_grad_norm": 0.0}, 0.1),
  ],
  ids=[
    "nesterov",
    "decay mask",
    "batchnorm momentum",
    "accumulation",
    "ema decay",
    "ema steps",
    "ema style",
    "norm decay",
    "bias decay",
    "warm-up start",
    "lr update",
    "clipping",
  ],
)
def test_one_semantic_difference_is_caught(changes, torch_changes, bn_momentum):
  cfg = dataclasses.replace(BASE, **changes)
  found = mismatches(cfg, dataclasses.replace(cfg, **torch_changes), bn_momentum)
  assert found, "a different recipe passed as equal"


def test_a_torchvision_ema_without_its_warm_up_reset_is_caught(monkeypatch):
  def update_without_reset(ema, net, epoch):
    ema.model.update_parameters(net)
    ema.updates += 1

  monkeypatch.setattr(torch_recipe.TorchvisionEma, "update", update_without_reset)
  cfg = dataclasses.replace(BASE, **CASES["torchvision ema every 3 steps, warm-up reset"])
  assert mismatches(cfg), "an EMA without the warm-up reset passed as equal"


def test_the_per_epoch_rate_is_torchvisions_sequential_linear_then_cosine():
  cfg = dataclasses.replace(BASE, epochs=9, warmup_epochs=3.0, lr_warmup_decay=0.01)
  opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
  warmup = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.01, total_iters=3)
  cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=9 - 3)
  scheduler = torch.optim.lr_scheduler.SequentialLR(opt, [warmup, cosine], milestones=[3])
  theirs = []
  for _ in range(9):  # the reference trainer's epochs: train, then scheduler.step()
    theirs.append(opt.param_groups[0]["lr"])
    opt.step()
    scheduler.step()
  ours = [torch_recipe.epoch_factor(cfg, e) for e in range(9)]
  # torch's schedulers multiply ratios from epoch to epoch, the closed form does not:
  # float64 rounding of a few multiplications apart
  np.testing.assert_allclose(ours, theirs, rtol=1e-13, atol=1e-15)
  assert ours[0] == 0.01 and ours[3] == 1.0 and ours[-1] > 0


MIXED = {"mixup_alpha": 0.2, "cutmix_alpha": 1.0}
MIX_CASES = {
  # soft targets with BASE's label smoothing 0.1; 20 steps draw both MixUp and CutMix
  "mixup and cutmix": MIXED,
  "random erasing": {"random_erase": 0.5},
  # mixed as one batch, then 4 micro-batches of soft targets
  "all, accumulated": {**MIXED, "random_erase": 0.5, "accumulate_steps": 4},
  "cutmix alone": {"cutmix_alpha": 1.0},
}


@pytest.mark.parametrize("changes", MIX_CASES.values(), ids=MIX_CASES.keys())
def test_every_step_equals_pytorch_fed_torchvision_mixup_cutmix_and_erasing(changes):
  cfg = dataclasses.replace(BASE, **changes)
  mixing = mixing_of(cfg)
  if mixing is not None and mixing.mixup_alpha:
    chosen = {bool(drawn_in_step(mixing, t, 16, 16)["cutmix"][0]) for t in range(STEPS)}
    assert chosen == {False, True}  # both transforms are compared
  assert mismatches(cfg) == []


@pytest.mark.parametrize(
  "changes, torch_changes",
  [(MIXED, {"seed": 1}), ({"random_erase": 0.5}, {"random_erase": 0.0})],
  ids=["mixing draws", "erasing"],
)
def test_a_mixing_or_erasing_difference_is_caught(changes, torch_changes):
  cfg = dataclasses.replace(BASE, **changes)
  assert mismatches(cfg, dataclasses.replace(cfg, **torch_changes)), "a different batch passed"


@pytest.mark.parametrize("ema_style", ["warmup", "torchvision"])
def test_the_reference_trainer_runs_the_step_proven_here(tmp_path, monkeypatch, ema_style):
  from PIL import Image

  from flax_resnet.bench.train_torch import Reference

  for split, label in [(s, c) for s in ("train", "test") for c in ("a", "b")]:
    (tmp_path / split / label).mkdir(parents=True)
    for i in range(4):
      Image.new("RGB", (16, 16), (60 * i, 0, 0)).save(tmp_path / split / label / f"{i}.png")
  calls = []

  def step(recipe, images, labels):
    calls.append(recipe)
    return proven(recipe, images, labels)

  proven = torch_recipe.Recipe.step
  monkeypatch.setattr(torch_recipe.Recipe, "step", step)
  cfg = dataclasses.replace(
    BASE,
    num_classes=2,
    eval_resize=16,
    global_batch=4,
    max_steps=2,
    workers=0,
    log_every=1,
    train_split="train",
    eval_split="test",
    data_dir=str(tmp_path),
    ema_decay=0.5,
    ema_style=ema_style,  # evaluated at the epoch's end, as the reference trainer's
  )
  reference = Reference(cfg, tmp_path / "run")
  assert reference.run()["step"] == 2
  assert calls == [reference.recipe] * 2 and reference.recipe.ema.updates == 2
  assert "ema_top1" in reference.last_eval  # the average loads into a net and evaluates
