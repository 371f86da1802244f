"""MixUp, CutMix and random erasing on the device (training/batch.py) against torchvision v2's
transforms, given the same draws, and their draws against torchvision's by a stated test."""

import dataclasses
import math
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import stats
from torch_reference import torch

import flax_resnet as fr
from flax_resnet.training.batch import (
  Mix,
  apply_mix,
  cutmix_box,
  erase,
  mix,
  mix_params,
  normalize,
  step_key,
)
from flax_resnet.training.optimiser import make_optimizer
from flax_resnet.training.steps import (
  StepSpec,
  accuracy,
  cross_entropy,
  soft_cross_entropy,
  train_step,
)

v2 = pytest.importorskip("torchvision.transforms.v2")
F = pytest.importorskip("torchvision.transforms.v2.functional")

# Every statistical test here passes at this significance and is shown to reject a wrong
# sampler at it; the seeds are fixed, so each outcome is deterministic.
SIGNIFICANCE = 1e-3


def normalised(shape, seed: int = 0) -> np.ndarray:
  """float32 NHWC images as after Normalize: values of both signs, none of them 0."""
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32) + 0.01


def nchw(x: np.ndarray) -> torch.Tensor:
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def nhwc(x: torch.Tensor) -> np.ndarray:
  return x.permute(0, 2, 3, 1).numpy()


def test_erase_equals_torchvision_erase_with_value_0():
  images = normalised((5, 7, 9, 3))
  # (top, left, height, width): none, inside, at the bottom-right corner, the whole image, a row
  boxes = np.array([[0, 0, 0, 0], [2, 3, 4, 5], [3, 4, 4, 5], [0, 0, 7, 9], [6, 0, 1, 9]], np.int32)
  ours = np.asarray(erase(jnp.asarray(images), jnp.asarray(boxes)))
  theirs = np.stack(
    [
      nhwc(F.erase(nchw(images[i : i + 1]), *map(int, box), v=torch.tensor(0.0)))[0]
      for i, box in enumerate(boxes)
    ]
  )
  # exact: both copy the pixels or write 0, no arithmetic
  np.testing.assert_array_equal(ours, theirs)
  assert np.array_equal(ours[0], images[0]) and not np.array_equal(ours[1], images[1])


def params_of(cutmix: bool, lam: float, box=(0, 0, 0, 0)) -> dict:
  """``mix_params`` of one group, given."""
  return {
    "cutmix": jnp.array([cutmix]),
    "lam": jnp.array([lam], jnp.float32),
    "box": jnp.array([box], jnp.int32),
  }


def torchvision_mix(transform, images, labels, params: dict, monkeypatch):
  """torchvision v2's ``transform`` on one group, its ``make_params`` returning ``params``."""
  monkeypatch.setattr(type(transform), "make_params", lambda self, inputs: params)
  mixed, targets = transform(nchw(images), torch.from_numpy(labels))
  return nhwc(mixed), targets.numpy()


def ours_mix(images, labels, groups: list[dict], num_classes: int):
  params = {k: jnp.concatenate([g[k] for g in groups]) for k in groups[0]}
  mixed, targets = apply_mix(jnp.asarray(images), jnp.asarray(labels), params, num_classes)
  return np.asarray(mixed), np.asarray(targets)


@pytest.mark.parametrize("lam", [0.0, 0.3141, 0.5, 0.97, 1.0])
def test_mixup_equals_torchvision_v2_mixup_given_the_same_lambda(lam, monkeypatch):
  images, labels = normalised((6, 5, 4, 3), seed=1), np.array([0, 3, 2, 2, 1, 3])
  # two groups of 3: each rolled within itself, as each GPU's batch in torchvision
  groups = [params_of(False, lam), params_of(False, 1 - lam / 2)]
  ours_images, ours_targets = ours_mix(images, labels, groups, 4)
  for g, params in enumerate(groups):
    rows = slice(3 * g, 3 * g + 3)
    theirs_images, theirs_targets = torchvision_mix(
      v2.MixUp(alpha=0.2, num_classes=4),
      images[rows],
      labels[rows],
      {"lam": float(params["lam"][0])},
      monkeypatch,
    )
    # exact: the same float32 products and sum, each rounded once (1 - λ of a float32 λ is
    # exact in torch's float64 before its rounding to float32)
    np.testing.assert_array_equal(ours_images[rows], theirs_images)
    np.testing.assert_array_equal(ours_targets[rows], theirs_targets)


# (y1, x1, y2, x2) on 7 x 9 images: inside, at each edge and corner, the whole image, empty
BOXES = [(2, 3, 5, 7), (0, 0, 3, 4), (4, 5, 7, 9), (0, 2, 7, 5), (0, 0, 7, 9), (3, 3, 3, 6)]


@pytest.mark.parametrize("box", BOXES)
def test_cutmix_equals_torchvision_v2_cutmix_given_the_same_box(box, monkeypatch):
  images, labels = normalised((4, 7, 9, 3), seed=2), np.array([4, 0, 2, 4])
  y1, x1, y2, x2 = box
  lam = np.float32(1 - (y2 - y1) * (x2 - x1) / 63)
  ours_images, ours_targets = ours_mix(images, labels, [params_of(True, lam, box)], 5)
  theirs_images, theirs_targets = torchvision_mix(
    v2.CutMix(alpha=1.0, num_classes=5),
    images,
    labels,
    {"box": (x1, y1, x2, y2), "lam_adjusted": float(lam)},
    monkeypatch,
  )
  # exact: pixels are copied; the targets' arithmetic is MixUp's (see its test)
  np.testing.assert_array_equal(ours_images, theirs_images)
  np.testing.assert_array_equal(ours_targets, theirs_targets)


class FixedBeta:
  """torch's Beta distribution replaced by fixed draws."""

  def __init__(self, lam: float):
    self.lam = lam

  def sample(self, shape=()):
    return torch.tensor(self.lam, dtype=torch.float32)


def torchvision_cutmix(cases, height: int, width: int, monkeypatch) -> list[dict]:
  """torchvision v2 CutMix's ``make_params`` of each (λ, r_y, r_x) of ``cases``, its Beta and
  its centres replaced by them."""
  transform, image = v2.CutMix(alpha=1.0, num_classes=2), torch.zeros(1, 3, height, width)
  draws = iter([])
  monkeypatch.setattr(torch, "randint", lambda high, size: torch.tensor([next(draws)]))
  params = []
  for lam, r_y, r_x in cases:
    transform._dist = FixedBeta(float(lam))
    draws = iter([r_x, r_y])  # make_params draws r_x, then r_y
    params.append(transform.make_params([image]))
  return params


def assert_cutmix_equals_torchvisions(cases, height: int, width: int, monkeypatch) -> None:
  """``cutmix_box`` (jitted, as in the train step) of ``cases`` (λ, r_y, r_x) equals
  torchvision's ``make_params``: the same box, and λ the float32 of its ``lam_adjusted``."""
  lam, r_y, r_x = (jnp.asarray(c) for c in zip(*cases))
  boxes, ours_lams = jax.jit(lambda *a: cutmix_box(*a, height, width))(lam, r_x, r_y)
  theirs = torchvision_cutmix(cases, height, width, monkeypatch)
  for case, box, ours_lam, params in zip(cases, np.asarray(boxes), np.asarray(ours_lams), theirs):
    x1, y1, x2, y2 = params["box"]
    assert tuple(box) == (y1, x1, y2, x2), case
    # exact: both the float32 nearest the quotient (see cutmix_box)
    assert ours_lam == np.float32(params["lam_adjusted"]), case


@pytest.mark.parametrize("height, width", [(7, 9), (32, 32), (176, 224)])
def test_cutmix_box_and_lambda_follow_torchvision_rule(height, width, monkeypatch):
  rng = np.random.default_rng(height)
  # float32 λ of both tails, exact ties (r W an integer at 0.75: r = 1/4, and at 0) and λ so
  # small that float32's 1 - λ would be 1
  lams = np.concatenate(
    [rng.beta(1.0, 1.0, 60), rng.beta(0.2, 0.2, 60), [0.0, 0.75, 1.0, 1e-7, 1e-12, 1 - 1e-7]]
  ).astype(np.float32)
  centres = [(0, 0), (height - 1, width - 1), (height // 2, 0), (1, width // 3)]
  cases = [(lam, r_y, r_x) for lam in lams for r_y, r_x in centres]
  assert_cutmix_equals_torchvisions(cases, height, width, monkeypatch)


def float32_around(x: Fraction, count: int = 2) -> list[np.float32]:
  """The float32 nearest ``x`` (or the one next to it: float64 rounds first) and ``count``
  neighbours on each side, in [0, 1]."""
  nearest = np.float32(float(x))
  values = [nearest]
  for direction in (np.float32(0), np.float32(1)):
    value = nearest
    for _ in range(count):
      value = np.nextafter(value, direction)
      values.append(value)
  return sorted({v for v in values if 0 <= v <= 1})


def exact_half_side(lam: np.float32, size: int) -> int:
  """floor(sqrt(1 - λ) size / 2) in exact arithmetic: the largest k with 4k² <= (1 - λ) size²."""
  area = (1 - Fraction(float(lam))) * size * size
  k = math.isqrt(math.floor(area)) // 2
  return k + 1 if 4 * (k + 1) ** 2 <= area else k


def tie_lams(size: int) -> list[np.float32]:
  """The float32 λ around every tie 1 - (2k / size)², k = 0 .. size / 2 (see below)."""
  return [
    lam for k in range(size // 2 + 1) for lam in float32_around(1 - Fraction(2 * k, size) ** 2)
  ]


def half_sides(lams: list[np.float32], size: int) -> list[int]:
  """``cutmix_box``'s (jitted) half sides of ``lams`` on a size x size image, centred."""
  centre = jnp.full(len(lams), size // 2)
  box = jax.jit(lambda *a: cutmix_box(*a, size, size)[0])(jnp.asarray(lams), centre, centre)
  return [int(x2 - x1) // 2 for _, x1, _, x2 in np.asarray(box)]


@pytest.mark.parametrize("size", [32, 176, 224])
def test_cutmix_half_sides_at_every_tie_are_exact_and_torchvisions(size, monkeypatch):
  # At λ = 1 - (2k / size)², sqrt(1 - λ) size / 2 is the integer k: the float32 λ around each
  # tie give half sides k and k - 1, which float32 arithmetic confuses (the one just above
  # the tie gave k). The centre is the image's, so the box is 2 half sides wide and high.
  lams = tie_lams(size)
  assert half_sides(lams, size) == [exact_half_side(lam, size) for lam in lams]
  # torchvision's float64 is exact but below ~1e-15 (see cutmix_box): the subnormals above 0
  cases = [(lam, size // 2, size // 2) for lam in lams if lam >= 1e-15]
  assert_cutmix_equals_torchvisions(cases, size, size, monkeypatch)


@pytest.mark.parametrize("x64", [False, True])
def test_cutmix_half_sides_are_exact_at_every_tie_up_to_4096_pixels(x64):
  lams = tie_lams(4096)
  with jax.enable_x64(x64):
    assert half_sides(lams, 4096) == [exact_half_side(lam, 4096) for lam in lams]


def test_a_cutmix_lambda_just_above_a_tie_pastes_nothing_as_torchvisions(monkeypatch):
  # the float32 just above 1 - (2 / 224)²: half side 0, no box, λ 1
  lam = np.float32(0.9999203085899353)
  assert lam > 1 - Fraction(2, 224) ** 2 > np.nextafter(lam, np.float32(0))
  (params,) = torchvision_cutmix([(lam, 76, 130)], 224, 224, monkeypatch)
  assert params["lam_adjusted"] == 1.0
  assert_cutmix_equals_torchvisions([(lam, 76, 130)], 224, 224, monkeypatch)


jitted_mix_params = jax.jit(mix_params, static_argnums=(1, 2, 3))


def draws(settings: Mix, n: int, height: int = 32, width: int = 32, seed: int = 0) -> dict:
  """``n`` groups' draws of ``mix_params`` (jitted, as in the train step), as numpy."""
  params = jitted_mix_params(jax.random.key(seed), settings._replace(groups=n), height, width)
  return {k: np.asarray(v) for k, v in params.items()}


def torchvision_lams(alpha: float, n: int) -> np.ndarray:
  """``n`` draws of torchvision v2 MixUp's λ: its Beta distribution (float32, as
  ``make_params`` draws it one at a time), seeded."""
  torch.manual_seed(0)
  return v2.MixUp(alpha=alpha, num_classes=2)._dist.sample((n,)).numpy().ravel()


def jax_beta_lams(alpha: float, n: int) -> np.ndarray:
  """``n`` draws of jax.random.beta: the sampler λ had before it was torch's (see _beta)."""
  keys = jax.random.split(jax.random.key(0), n)
  return np.asarray(jax.vmap(lambda k: jax.random.beta(k, alpha, alpha, dtype=jnp.float32))(keys))


LAMS = 200_000  # draws: enough for the masses just below 1 (~2% at alpha 0.2) to be seen


@pytest.mark.parametrize("alpha, wrong_alpha", [(0.2, 0.22), (1.0, 1.05)])
def test_mixup_lambda_is_distributed_as_torchvision_beta_draws(alpha, wrong_alpha):
  theirs = torchvision_lams(alpha, LAMS)
  ours = draws(Mix(2, mixup_alpha=alpha), LAMS)["lam"]
  assert stats.ks_2samp(ours, theirs).pvalue > SIGNIFICANCE
  wrong = draws(Mix(2, mixup_alpha=wrong_alpha), LAMS)["lam"]
  assert stats.ks_2samp(wrong, theirs).pvalue < SIGNIFICANCE


def same_rate_pvalue(a: np.ndarray, b: np.ndarray, value: float) -> float:
  """The p-value of the exact test that ``value`` has one probability in samples ``a`` and
  ``b`` of one size: its count in ``a`` is binomial(both counts, 1/2) given both."""
  count_a, count_b = int(np.sum(a == value)), int(np.sum(b == value))
  if count_a + count_b == 0:
    return 1.0
  return float(stats.binomtest(count_a, count_a + count_b, 0.5).pvalue)


def test_mixup_lambda_takes_the_values_next_to_1_as_often_as_torchvisions_and_never_0_or_1():
  # At alpha 0.2 one λ in 50 is within float32's rounding of 1: torch clamps it to 1 - 2^-24
  # and rounds a float64 quotient; jax.random.beta's gives 1 itself (2%) and never 1 - 2^-24.
  theirs = torchvision_lams(0.2, LAMS)
  ours = draws(Mix(2, mixup_alpha=0.2), LAMS)["lam"]
  wrong = jax_beta_lams(0.2, LAMS)
  assert np.all((ours > 0) & (ours < 1)) and np.all((theirs > 0) & (theirs < 1))
  top = [np.float32(1), *(np.float32(1 - i * 2.0**-24) for i in (1, 2, 3))]
  for value in top:
    assert same_rate_pvalue(ours, theirs, value) > SIGNIFICANCE, value
  assert min(same_rate_pvalue(wrong, theirs, value) for value in top) < SIGNIFICANCE


def torchvision_boxes(alpha: float, n: int, height: int, width: int) -> np.ndarray:
  """(n, 4) boxes (y1, x1, y2, x2) of torchvision's CutMix.make_params."""
  torch.manual_seed(0)
  transform, image = v2.CutMix(alpha=alpha, num_classes=2), torch.zeros(1, 3, height, width)
  boxes = [transform.make_params([image])["box"] for _ in range(n)]
  return np.array([(y1, x1, y2, x2) for x1, y1, x2, y2 in boxes])


def chi_square_pvalue(a: np.ndarray, b: np.ndarray) -> float:
  """Two-sample chi-square test of two integer samples over their common values (those seen
  at least 5 times in each kept as cells, the rest pooled into one)."""
  values = np.union1d(a, b)
  table = np.array([[np.sum(s == v) for v in values] for s in (a, b)])
  big = np.all(table >= 5, axis=0)
  table = np.column_stack([table[:, big], table[:, ~big].sum(1)])
  table = table[:, table.sum(0) > 0]
  return float(stats.chi2_contingency(table).pvalue)


def test_cutmix_box_sizes_are_distributed_as_torchvision_make_params():
  n, height, width = 4000, 12, 20
  theirs = torchvision_boxes(1.0, n, height, width)
  ours = draws(Mix(2, cutmix_alpha=1.0), n, height, width)["box"]
  wrong = draws(Mix(2, cutmix_alpha=2.0), n, height, width)["box"]
  # the edges (y1, x1, y2, x2: the clamps' pile-ups at 0 and the border included), the sides
  for column in range(4):
    assert chi_square_pvalue(ours[:, column], theirs[:, column]) > SIGNIFICANCE, column
  for side in (0, 1):
    sizes = [b[:, side + 2] - b[:, side] for b in (ours, theirs, wrong)]
    assert chi_square_pvalue(sizes[0], sizes[1]) > SIGNIFICANCE
    assert chi_square_pvalue(sizes[2], sizes[1]) < SIGNIFICANCE


def test_mixup_and_cutmix_are_chosen_with_torchvision_probabilities():
  from flax_resnet.bench.train_torch import mixup_cutmix
  from flax_resnet.training.config import Config

  choice = mixup_cutmix(Config(mixup_alpha=0.2, cutmix_alpha=1.0, num_classes=3))
  assert [type(t) for t in choice.transforms] == [v2.MixUp, v2.CutMix]
  n = 4000
  cutmix = draws(Mix(3, mixup_alpha=0.2, cutmix_alpha=1.0), n)["cutmix"]
  assert stats.binomtest(int(cutmix.sum()), n, choice.p[1]).pvalue > SIGNIFICANCE
  assert stats.binomtest(int(cutmix.sum()), n, 0.55).pvalue < SIGNIFICANCE  # a wrong choice
  assert not draws(Mix(3, mixup_alpha=0.2), 100)["cutmix"].any()
  assert draws(Mix(3, cutmix_alpha=1.0), 100)["cutmix"].all()


def tiny_state(seed: int = 0):
  model = fr.ResNet(
    "basic", (1, 1), channels=(8, 16), stem="cifar", num_classes=4, rngs=nnx.Rngs(seed)
  )
  optimizer = make_optimizer(model, 0.1)
  model.train()
  return nnx.split((model, optimizer))


def run_steps(graphdef, state, batches, settings: Mix):
  losses = []
  for x, y, boxes in batches:
    spec = StepSpec(
      label_smoothing=0.1,
      norm=((0.5,) * 3, (0.25,) * 3),
      accumulate_steps=1,
      frozen=(),
      mixing=settings,
    )
    state, metrics = train_step(graphdef, state, x, y, boxes=boxes, spec=spec)
    losses.append(np.asarray(metrics["loss"]))
  return state, losses


def test_a_resumed_run_mixes_as_the_uninterrupted_one():
  rng = np.random.default_rng(0)
  batches = [
    (
      rng.integers(0, 256, (8, 8, 8, 3), dtype=np.uint8),
      rng.integers(0, 4, 8).astype(np.int32),
      np.array([[1, 2, 3, 4]] * 4 + [[0, 0, 0, 0]] * 4, np.int32),
    )
    for _ in range(4)
  ]
  settings = Mix(4, mixup_alpha=0.2, cutmix_alpha=1.0, groups=2, seed=3)
  graphdef, state = tiny_state()
  state, first = run_steps(graphdef, state, batches[:2], settings)
  saved = jax.tree.map(np.asarray, state)  # as a checkpoint holds it
  _, uninterrupted = run_steps(graphdef, state, batches[2:], settings)
  _, resumed = run_steps(graphdef, jax.tree.map(jnp.asarray, saved), batches[2:], settings)
  np.testing.assert_array_equal(resumed, uninterrupted)
  # the draws are the step's: another step, or another seed, mixes otherwise
  ours = mix_params(step_key(3, jnp.uint32(2)), settings, 8, 8)
  for key in (step_key(3, jnp.uint32(3)), step_key(4, jnp.uint32(2))):
    assert not np.array_equal(mix_params(key, settings, 8, 8)["lam"], ours["lam"])


def test_soft_targets_loss_equals_torch_cross_entropy_with_probabilities():
  rng = np.random.default_rng(1)
  logits = rng.standard_normal((6, 5))
  targets = rng.dirichlet(np.ones(5), 6)
  ours = float(soft_cross_entropy(jnp.asarray(logits), jnp.asarray(targets), 0.1))
  theirs = torch.nn.functional.cross_entropy(
    torch.from_numpy(logits), torch.from_numpy(targets), label_smoothing=0.1
  )
  # float32 against float64: one rounding of each of ~30 terms
  assert ours == pytest.approx(float(theirs), rel=1e-6)
  assert ours != pytest.approx(float(soft_cross_entropy(logits, targets, 0.2)), rel=1e-3)


def test_accuracy_counts_the_mixed_images_logits_against_the_original_labels():
  rng = np.random.default_rng(1)
  x = rng.integers(0, 256, (8, 8, 8, 3), dtype=np.uint8)
  y = np.array([0, 1, 2, 3, 0, 1, 2, 3], np.int32)
  norm = ((0.5,) * 3, (0.25,) * 3)
  settings = Mix(4, mixup_alpha=0.4, groups=2, seed=5)
  graphdef, state = tiny_state()
  model, _ = nnx.merge(graphdef, state)
  images, targets = mix(step_key(5, jnp.uint32(0)), normalize(x, *norm), y, settings)
  logits = model(images)  # train mode: the batch statistics of the step's forward pass
  expected = accuracy(logits, y)
  soft, hard = soft_cross_entropy(logits, targets), cross_entropy(logits, y)
  spec = StepSpec(label_smoothing=0.0, norm=norm, accumulate_steps=1, frozen=(), mixing=settings)
  _, metrics = train_step(graphdef, state, x, y, spec=spec)
  assert int(metrics["top1"]) == int(expected["top1"])
  assert int(metrics["top5"]) == int(expected["top5"]) == 8
  assert float(metrics["loss"]) == pytest.approx(float(soft), rel=1e-6)
  assert float(metrics["loss"]) != pytest.approx(float(hard), rel=1e-3)


def test_a_resumed_training_run_mixes_as_the_uninterrupted_one(tmp_path, monkeypatch, capsys):
  from flax_resnet.training import checkpoints, config as config_lib, trainer

  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the step cache's
  tiny = ["layers=1,1", "channels=8,16", "num_classes=4", "stem=cifar", "image_size=16"]
  tiny += ["dtype=float32", "global_batch=16", "warmup_epochs=0", "checkpoint_every=2"]
  tiny += ["synthetic=true", "workers=0", "label_smoothing=0.1"]
  mixed = ["mixup_alpha=0.2", "cutmix_alpha=1.0"]  # 8 devices here: 8 groups of 2

  def run(name: str, *sets: str) -> dict:
    trainer.run(config_lib.override(config_lib.Config(), [*tiny, *sets]), tmp_path / name)
    step = int(sets[-1].split("=")[1])
    with checkpoints.reader(tmp_path / name) as manager:
      return checkpoints.restore_on_one_device(manager, step)[0]

  straight = run("straight", *mixed, "max_steps=4")
  run("split", *mixed, "max_steps=2")
  resumed = run("split", *mixed, "max_steps=4")
  assert "resumed from step 2" in capsys.readouterr().out
  for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  plain = run("plain", "max_steps=4")  # the same run unmixed: the mixing took part
  assert not np.array_equal(plain["model"]["fc"]["kernel"], straight["model"]["fc"]["kernel"])


def test_the_reference_collates_batches_through_torchvision_mixup_or_cutmix(tmp_path):
  from PIL import Image

  from flax_resnet.bench.train_torch import loaders
  from flax_resnet.training.config import Config

  for split, label in [(s, c) for s in ("train", "val") for c in ("a", "b", "c")]:
    (tmp_path / split / label).mkdir(parents=True)
    for i in range(3):
      Image.new("RGB", (16, 16), (40 * i, 90, 0)).save(tmp_path / split / label / f"{i}.png")
  base = Config(data_dir=str(tmp_path), num_classes=3, image_size=16, global_batch=4, workers=0)
  images, labels = next(iter(loaders(base)[0]))
  assert labels.dtype == torch.int64 and labels.shape == (4,)
  torch.manual_seed(0)  # MixUp/CutMix draw from torch's global generator
  mixed = dataclasses.replace(base, mixup_alpha=0.2, cutmix_alpha=1.0)
  images, targets = next(iter(loaders(mixed)[0]))
  assert images.shape == (4, 3, 16, 16) and targets.shape == (4, 3)
  np.testing.assert_allclose(targets.sum(1).numpy(), 1, rtol=1e-6)  # probabilities
  assert (targets.max(1).values < 1).any()  # soft: some row holds two labels


def test_each_device_shard_is_mixed_as_one_group_whatever_the_sharding():
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

  images, labels = jnp.asarray(normalised((8, 6, 6, 3), seed=3)), jnp.arange(8) % 3
  settings = Mix(3, mixup_alpha=0.2, cutmix_alpha=1.0, groups=4)
  step = jax.jit(lambda x, y: mix(jax.random.key(7), x, y, settings))
  sharding = NamedSharding(Mesh(np.array(jax.devices()[:4]), ("data",)), P("data"))
  alone = step(images, labels)
  sharded = step(jax.device_put(images, sharding), jax.device_put(labels, sharding))
  for a, b in zip(alone, sharded, strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # group g's first image takes group g's last one's, not the previous group's
  params = mix_params(jax.random.key(7), settings, 6, 6)
  assert not np.asarray(params["cutmix"]).all()
  g = int(np.argmin(np.asarray(params["cutmix"])))  # a MixUp group
  lam = np.asarray(params["lam"])[g]
  first, last = 2 * g, 2 * g + 1
  expected = np.asarray(images[last]) * (1 - lam) + np.asarray(images[first]) * lam
  np.testing.assert_allclose(np.asarray(alone[0][first]), expected, rtol=1e-6)
