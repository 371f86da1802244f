"""The PyTorch reference trainer: a training config run with torchvision and torch.optim.

    flax-resnet-bench train-torch --config cifar10_resnet18 --workdir W \\
        --set data_dir=DIR [--set KEY=VALUE ...]
    python -m flax_resnet.commands.bench train-torch ...   (the same)

Each step is ``torch_recipe.Recipe.step``, the one the project's recipe parity tests prove equal
to flax-resnet's (model, optimizer, schedule, loss, the EMA of weights and BN statistics;
autocast when ``dtype`` is bfloat16 or float16). The data is torchvision's ``ImageFolder``
with torchvision's transforms doing what the trainer's pipeline does (pad-and-crop + flip at
32x32, random-resized-crop + flip above, then torchvision's own policy of ``auto_augment``
and ``RandomErasing``; eval: resize, centre crop), MixUp/CutMix as the reference trainer's
collate_fn (torchvision v2's), an epoch order fixed by ``seed`` (``RASampler``'s with
``ra_reps``), and the logs are the trainer's:
``WORKDIR/metrics.jsonl`` (``flax-resnet-plot --workdir A B`` draws both runs) and
``summary.json``. It keeps no checkpoints: a reference run is short and starts over.
"""

from __future__ import annotations

import functools
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, default_collate
from torchvision import datasets, transforms
from torchvision.transforms import v2

from flax_resnet.bench import torch_recipe
from flax_resnet.cli import ArgumentParser, add_config_arguments, in_config_flags, report
from flax_resnet.training import config as config_lib, metrics as metrics_lib
from flax_resnet.training.metrics import append_metric


def parse_args(argv=None):
  p = ArgumentParser(description=__doc__)
  add_config_arguments(p)
  p.add_argument("--workdir", type=Path, required=True)
  return p.parse_args(argv)


def policy_transform(cfg) -> torch.nn.Module | None:
  """torchvision's own policy ``auto_augment`` names, as its reference trainer builds it
  (with ``interpolation``), or None for "none"."""
  mode = transforms.InterpolationMode(cfg.interpolation)
  make = {
    "ta_wide": lambda: transforms.TrivialAugmentWide(interpolation=mode),
    "ra": lambda: transforms.RandAugment(cfg.ra_num_ops, cfg.ra_magnitude, interpolation=mode),
    "imagenet": lambda: transforms.AutoAugment(transforms.AutoAugmentPolicy.IMAGENET, mode),
    "augmix": lambda: transforms.AugMix(cfg.augmix_severity, interpolation=mode),
  }
  return make[cfg.auto_augment]() if cfg.auto_augment in make else None


def train_transform(cfg) -> transforms.Compose:
  """torchvision's version of the trainer's augmentation, to a normalised tensor, in its
  reference trainer's order: crop, flip, policy, normalise, random erasing."""
  size, mode = cfg.image_size, transforms.InterpolationMode(cfg.interpolation)
  if size <= 32:
    steps = [transforms.Resize((size, size), mode), transforms.RandomCrop(size, padding=4)]
  else:
    steps = [transforms.RandomResizedCrop(size, interpolation=mode)]
  policy = policy_transform(cfg)
  erase = [transforms.RandomErasing(cfg.random_erase)] if cfg.random_erase > 0 else []
  return transforms.Compose(
    [
      *steps,
      transforms.RandomHorizontalFlip(),
      *([policy] if policy is not None else []),
      transforms.ToTensor(),
      transforms.Normalize(cfg.mean, cfg.std),
      *erase,
    ]
  )


def eval_transform(cfg) -> transforms.Compose:
  """Resize the shorter side (with ``interpolation``), centre crop, normalise: the trainer's
  eval preprocessing."""
  return transforms.Compose(
    [
      transforms.Resize(cfg.eval_resize, transforms.InterpolationMode(cfg.interpolation)),
      transforms.CenterCrop(cfg.eval_crop or cfg.image_size),
      transforms.ToTensor(),
      transforms.Normalize(cfg.mean, cfg.std),
    ]
  )


def mixup_cutmix(cfg) -> v2.RandomChoice | None:
  """torchvision v2's ``RandomChoice`` of MixUp and CutMix, those with alpha > 0, as the
  reference trainer's ``get_mixup_cutmix``; ``None`` when both alphas are 0."""
  choices = []
  if cfg.mixup_alpha > 0:
    choices.append(v2.MixUp(alpha=cfg.mixup_alpha, num_classes=cfg.num_classes))
  if cfg.cutmix_alpha > 0:
    choices.append(v2.CutMix(alpha=cfg.cutmix_alpha, num_classes=cfg.num_classes))
  return v2.RandomChoice(choices) if choices else None


def mixed_collate(mix: v2.RandomChoice, batch: list) -> tuple[torch.Tensor, torch.Tensor]:
  """The reference trainer's collate_fn: the collated batch through ``mix`` (soft targets)."""
  return mix(*default_collate(batch))


def collate_fn(cfg):
  """``default_collate``, or ``mixed_collate`` with ``mixup_cutmix``'s choice (picklable, for
  workers)."""
  mix = mixup_cutmix(cfg)
  return default_collate if mix is None else functools.partial(mixed_collate, mix)


def loaders(cfg) -> tuple[DataLoader, DataLoader]:
  """(train batches, shuffled per epoch from ``seed``, or with ``ra_reps`` > 1 in
  ``RASampler``'s order over one replica, last partial batch dropped; eval)."""
  root = Path(cfg.data_dir)
  for split in (cfg.train_split, cfg.eval_split):
    if not (root / split).is_dir():
      raise ValueError(f"data folder {root / split} does not exist")
  train = datasets.ImageFolder(str(root / cfg.train_split), train_transform(cfg))
  test = datasets.ImageFolder(str(root / cfg.eval_split), eval_transform(cfg))
  generator = torch.Generator().manual_seed(cfg.seed)
  common = {"batch_size": cfg.global_batch, "num_workers": cfg.workers}
  order: dict[str, Any] = {"shuffle": True}
  if cfg.ra_reps > 1:
    order = {"sampler": RASampler(len(train), 1, 0, cfg.seed, cfg.ra_reps)}
    if len(order["sampler"]) < cfg.global_batch:
      raise ValueError(
        f"config ra_reps={cfg.ra_reps}: the {len(train)} training images make an epoch of "
        f"{len(order['sampler'])} (their count // 256 * 256), less than global_batch "
        f"{cfg.global_batch}"
      )
  return (
    DataLoader(
      train,
      drop_last=True,
      generator=generator,
      collate_fn=collate_fn(cfg),
      **order,
      **common,
    ),
    DataLoader(test, shuffle=False, **common),
  )


class RASampler(torch.utils.data.Sampler):
  """Repeated augmentation as torchvision's reference trainer samples it
  (references/classification/sampler.py): each epoch a permutation of the ``size`` images
  from ``seed + epoch``, each image ``repetitions`` times in a row, padded from the start
  to a multiple of ``replicas``; replica ``rank`` takes every ``replicas``-th from
  ``rank`` on, and only the first ``size // 256 * 256 // replicas`` of them."""

  def __init__(self, size: int, replicas: int, rank: int, seed: int, repetitions: int):
    self.size, self.replicas, self.rank = size, replicas, rank
    self.seed, self.repetitions, self.epoch = seed, repetitions, 0
    self.total = math.ceil(size * repetitions / replicas) * replicas
    self.selected = size // 256 * 256 // replicas

  def permutation(self) -> list[int]:
    """The epoch's order of the images (``set_epoch``)."""
    generator = torch.Generator().manual_seed(self.seed + self.epoch)
    return torch.randperm(self.size, generator=generator).tolist()

  def __iter__(self):
    repeated = [i for i in self.permutation() for _ in range(self.repetitions)]
    repeated += repeated[: self.total - len(repeated)]
    return iter(repeated[self.rank :: self.replicas][: self.selected])

  def __len__(self) -> int:
    return self.selected

  def set_epoch(self, epoch: int) -> None:
    """The epoch whose permutation the next pass draws, as the reference trainer sets it."""
    self.epoch = epoch


@torch.no_grad()
def evaluate(net: torch.nn.Module, batches: DataLoader, device, autocast) -> dict[str, float]:
  """Mean loss, top-1 and top-5 over the eval split."""
  net.eval()
  total = {"loss": 0.0, "top1": 0, "top5": 0, "count": 0}
  for images, labels in batches:
    images, labels = images.to(device), labels.to(device)
    with autocast(images.device.type):
      logits = net(images).float()
    total["loss"] += float(torch.nn.functional.cross_entropy(logits, labels, reduction="sum"))
    top5 = logits.topk(min(5, logits.shape[1]), 1).indices
    total["top1"] += int((top5[:, 0] == labels).sum())
    total["top5"] += int((top5 == labels[:, None]).any(1).sum())
    total["count"] += len(labels)
  net.train()
  n = max(total["count"], 1)
  return {"loss": total["loss"] / n, "top1": total["top1"] / n, "top5": total["top5"] / n}


class Log:
  """metrics.jsonl as the trainer writes it, and its console lines."""

  def __init__(self, workdir: Path):
    workdir.mkdir(parents=True, exist_ok=True)
    self.file = workdir / "metrics.jsonl"
    self.file.write_text("")

  def scalar(self, step: int, name: str, value: float) -> None:
    append_metric(self.file, step, name, value)


# Fields whose non-default values the reference does not implement: refused rather than
# silently trained otherwise.
UNSUPPORTED = {"init_from": "", "freeze": "", "linear_probe": False, "backbone_lr_mult": 1.0}


def check_supported(cfg) -> None:
  """``ValueError`` naming the first field set to something the reference cannot do."""
  for name, default in UNSUPPORTED.items():
    if getattr(cfg, name) != default:
      raise ValueError(
        f"config {name}={getattr(cfg, name)!r}: the PyTorch reference trains "
        f"from scratch with the whole network; it has no {name}"
      )


class Reference:
  """One reference run: the data, ``torch_recipe.Recipe`` (the proven step), the logs."""

  def __init__(self, cfg, workdir: Path):
    check_supported(cfg)
    torch.manual_seed(cfg.seed)
    self.cfg, self.workdir = cfg, workdir
    self.device = "cuda" if torch.cuda.is_available() else "cpu"
    self.train, self.test = loaders(cfg)
    self.steps_per_epoch = max(len(self.train), 1)
    self.total = cfg.max_steps or cfg.epochs * self.steps_per_epoch
    self.recipe = torch_recipe.Recipe(
      cfg, torch_recipe.model(cfg).to(self.device), self.steps_per_epoch
    )
    self.log = Log(workdir)
    self.step, self.start = 0, time.perf_counter()
    self.last_eval: dict[str, float] = {}
    self.best: float | None = None

  def run(self) -> dict:
    """Trains to ``total`` steps, evaluating at epoch ends; the summary."""
    while self.step < self.total:
      if isinstance(self.train.sampler, RASampler):
        self.train.sampler.set_epoch(self.step // self.steps_per_epoch)
      for images, labels in self.train:
        self.train_one(images.to(self.device), labels.to(self.device))
        if self.step % self.steps_per_epoch == 0:
          self.evaluate_epoch()
        if self.step >= self.total:
          break
    return self.summary()

  def train_one(self, images: torch.Tensor, labels: torch.Tensor) -> None:
    loss = self.recipe.step(images, labels)
    self.step += 1
    if self.step % self.cfg.log_every == 0 or self.step == self.total:
      rate = self.step * self.cfg.global_batch / (time.perf_counter() - self.start)
      print(f"step {self.step}/{self.total} loss {float(loss):.4f} {rate:.1f} img/s", flush=True)
      self.log.scalar(self.step, "train/loss", float(loss))
      self.log.scalar(self.step, "train/images_per_s", rate)

  def evaluate_epoch(self) -> None:
    epoch = self.step // self.steps_per_epoch
    if epoch % self.cfg.eval_every_epochs:
      return
    metrics = evaluate(self.recipe.net, self.test, self.device, self.recipe.autocast)
    if self.recipe.ema:
      averaged = torch_recipe.model(self.cfg).to(self.device)
      averaged.load_state_dict(self.recipe.ema.state)
      metrics.update(
        {
          f"ema_{k}": v
          for k, v in evaluate(averaged, self.test, self.device, self.recipe.autocast).items()
        }
      )
    self.last_eval = metrics
    self.best = metrics_lib.best_top1(self.best, metrics)
    print(f"epoch {epoch} eval " + " ".join(f"{k} {v:.4f}" for k, v in metrics.items()), flush=True)
    for k, v in metrics.items():
      self.log.scalar(self.step, f"eval/{k}", v)

  def summary(self) -> dict:
    wall = time.perf_counter() - self.start
    summary = metrics_lib.summary(
      self.cfg,
      (self.step, self.total),
      self.last_eval,
      self.best,
      wall_s=wall,
      images_per_s=self.step * self.cfg.global_batch / wall,
      framework="torch",
      versions={"torch": torch.__version__},
    )
    metrics_lib.write_summary(self.workdir, summary)
    return summary


def main(argv=None) -> int:
  """Exit 0 when done, 2 on bad input (one line)."""
  args = parse_args(argv)
  try:
    cfg = config_lib.override(config_lib.load_preset(args.config), args.set)
    Reference(cfg, args.workdir).run()
  except ValueError as e:
    return report(in_config_flags(e))
  except OSError as e:
    return report(e)
  return 0
