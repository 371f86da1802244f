"""The host augmentations (training/augment.py) against torchvision's own, op by op on real
photographs, the policies end to end given the same draws, and the draws' distributions."""

import dataclasses
import itertools
import math

import numpy as np
import pytest
from PIL import Image
from scipy import stats
from torch_reference import torch
from torchvision.transforms import (
  InterpolationMode,
  RandomErasing,
  RandomResizedCrop,
  autoaugment,
  functional as F,
)

from flax_resnet.preprocess import open_image
from flax_resnet.training import augment, config as config_lib, data
from flax_resnet.training.augmix import AugMix

SIGNIFICANCE = 0.001  # every statistical test: equal distributions pass at p > 0.001
INTERPOLATIONS = ("bilinear", "bicubic")
GEOMETRIC = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")


@pytest.fixture(scope="module")
def photos(data_dir) -> list[Image.Image]:
  """Three real ImageNet photographs, of three shapes."""
  names = ("000_n01440764.JPEG", "010_n01530575.JPEG", "020_n01601694.JPEG")
  return [open_image(data_dir / "imagenet-samples" / n) for n in names]


def _theirs(image: Image.Image, name: str, magnitude: float, interpolation: str) -> np.ndarray:
  return np.asarray(
    autoaugment._apply_op(image, name, magnitude, InterpolationMode(interpolation), None)
  )


def _max_difference(a, b) -> int:
  return int(np.abs(np.asarray(a, np.int32) - np.asarray(b, np.int32)).max())


@pytest.mark.parametrize("height, width", [(224, 224), (176, 176), (375, 500), (32, 32), (37, 61)])
def test_magnitude_tables_equal_torchvisions_float32_bits(height, width):
  spaces = [
    (augment.trivial_space(31), autoaugment.TrivialAugmentWide()._augmentation_space(31)),
    (
      augment.rand_space(31, height, width),
      autoaugment.RandAugment()._augmentation_space(31, (height, width)),
    ),
    (
      augment.auto_space(10, height, width),
      autoaugment.AutoAugment()._augmentation_space(10, (height, width)),
    ),
  ]
  for ours, theirs in spaces:
    assert list(ours) == list(theirs)  # the order: a drawn index names the same operation
    for name, (table, signed) in theirs.items():
      assert ours[name][1] == signed, name
      if table.ndim == 0:
        assert ours[name][0] is None, name
      else:
        assert ours[name][0].dtype == table.numpy().dtype, name
        np.testing.assert_array_equal(ours[name][0], table.numpy(), err_msg=name)


def test_linspace32_is_not_numpys_rounded_linspace():
  """The bit-exact construction matters: numpy's float64 linspace rounded to float32 differs."""
  rounded = np.linspace(0.0, 0.99, 31).astype(np.float32)
  assert not np.array_equal(rounded, torch.linspace(0.0, 0.99, 31).numpy())
  np.testing.assert_array_equal(
    augment.linspace32(0.0, 0.99, 31), torch.linspace(0.0, 0.99, 31).numpy()
  )


def _magnitudes(name: str) -> list[float]:
  """Bins 0, 7, 19 and 30 of TrivialAugmentWide's table and 3, 9 of RandAugment's at 224,
  both signs where signed: small, middle and extreme magnitudes."""
  trivial, rand = augment.trivial_space(31), augment.rand_space(31, 224, 224)
  if name not in trivial or trivial[name][0] is None:
    return [0.0]
  values = [float(trivial[name][0][b]) for b in (0, 7, 19, 30)]
  values += [float(rand[name][0][b]) for b in (3, 9)]
  return values + [-v for v in values] if trivial[name][1] else values


@pytest.mark.parametrize("name", [*augment.trivial_space(), "Invert"])
def test_each_operation_equals_torchvisions_on_photographs(photos, name):
  # Exact (0): the same PIL calls with the same arguments (the affine matrix to the last bit,
  # ImageEnhance's factor, ImageOps' thresholds); PIL computes each in its own fixed C code.
  interpolations = INTERPOLATIONS if name in GEOMETRIC else ("bilinear",)
  for image in photos:
    for magnitude in _magnitudes(name):
      for interpolation in interpolations:
        ours = augment.apply_op(image, name, magnitude, interpolation)
        assert ours.size == image.size and ours.mode == "RGB"
        theirs = _theirs(image, name, magnitude, interpolation)
        assert _max_difference(ours, theirs) == 0, (name, magnitude, interpolation)


def test_an_unknown_operation_is_refused_by_name():
  with pytest.raises(ValueError, match="name must be one of"):
    augment.apply_op(Image.new("RGB", (4, 4)), "Blur", 1.0, "bilinear")


def _torch_draws(policy, params, height: int, width: int) -> list:
  """The values torchvision's forward draws (torch.randint / torch.rand, in call order)
  that make it take ``params``."""
  if isinstance(policy, augment.AutoAugment):
    return [
      torch.tensor([params.policy]),
      torch.tensor(params.probs, dtype=torch.float32),
      torch.tensor(params.signs),
    ]
  space = (
    augment.trivial_space()
    if isinstance(policy, augment.TrivialAugmentWide)
    else (augment.rand_space(31, height, width))
  )
  draws = []
  for d in params:
    table, signed = space[d.op]
    draws.append(torch.tensor([list(space).index(d.op)]))
    if table is not None and isinstance(policy, augment.TrivialAugmentWide):
      draws.append(torch.tensor([d.bin]))
    if signed:
      draws.append(torch.tensor([int(d.negative)]))
  return draws


def _torchvision_policy(policy, interpolation: str):
  mode = InterpolationMode(interpolation)
  if isinstance(policy, augment.TrivialAugmentWide):
    return autoaugment.TrivialAugmentWide(interpolation=mode)
  if isinstance(policy, augment.RandAugment):
    return autoaugment.RandAugment(policy.num_ops, policy.magnitude, interpolation=mode)
  return autoaugment.AutoAugment(autoaugment.AutoAugmentPolicy.IMAGENET, mode)


def _forced(monkeypatch, draws: list) -> list:
  """torch.randint and torch.rand return ``draws`` in turn (torchvision's policies draw
  nothing else); the draws left over, for the caller to see that all were taken."""
  queue = list(draws)
  monkeypatch.setattr(torch, "randint", lambda *a, **k: queue.pop(0))
  monkeypatch.setattr(torch, "rand", lambda *a, **k: queue.pop(0))
  return queue


POLICIES = {
  "ta_wide": lambda i: augment.TrivialAugmentWide(i),
  "ra": lambda i: augment.RandAugment(2, 9, i),
  "ra_3_at_27": lambda i: augment.RandAugment(3, 27, i),
  "imagenet": lambda i: augment.AutoAugment(i),
}


@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
@pytest.mark.parametrize("make", POLICIES.values(), ids=POLICIES.keys())
def test_policies_equal_torchvisions_forward_given_the_same_draws(
  photos, monkeypatch, make, interpolation
):
  # Exact (0): each operation is (test above), and the draws select the same ones.
  policy, rng = make(interpolation), np.random.default_rng(7)
  theirs_policy = _torchvision_policy(policy, interpolation)
  for image in photos:
    for _ in range(12):
      params = policy.params(rng, image.height, image.width)
      with monkeypatch.context() as m:
        left = _forced(m, _torch_draws(policy, params, image.height, image.width))
        theirs = theirs_policy(image)
      assert not left  # torchvision drew as many values as we did: the same structure
      assert _max_difference(policy.apply(image, params), theirs) == 0, params


def float32_around(p: float) -> list[float]:
  """float32(p), the draw at which float32 and float64 comparisons with p differ, and its
  float32 neighbours."""
  f = np.float32(p)
  return [float(np.nextafter(f, np.float32(0))), float(f), float(np.nextafter(f, np.float32(1)))]


def test_auto_augment_runs_an_operation_at_its_probabilitys_float32_as_torchvision(monkeypatch):
  # torchvision runs an operation when torch.rand's float32 draw is <= p, compared in float32:
  # a draw of float32(0.4) > 0.4 runs it. Every sub-policy, each pair of draws around its p's.
  policy, image = augment.AutoAugment(), Image.new("RGB", (224, 224))
  theirs_policy = _torchvision_policy(policy, "bilinear")
  calls = []
  monkeypatch.setattr(
    autoaugment, "_apply_op", lambda img, op, m, **k: calls.append((op, m)) or img
  )
  ran = 0
  for index, ((_, p1, _), (_, p2, _)) in enumerate(augment.IMAGENET_POLICY):
    for probs in itertools.product(float32_around(p1), float32_around(p2)):
      params = augment.AutoParams(index, probs, (0, 1))
      with monkeypatch.context() as m:
        _forced(m, _torch_draws(policy, params, 224, 224))
        theirs_policy(image)
      assert policy.ops(params, 224, 224) == calls, params
      ran, calls[:] = ran + len(calls), []
  assert 0 < ran < 2 * 9 * len(augment.IMAGENET_POLICY)  # some ran, some did not


class _Drawn:
  """A generator whose ``random`` draws ``u``; the box's draws the smallest (it fits)."""

  def __init__(self, u: float):
    self.u = u

  def random(self, size=None, dtype=np.float64):
    return np.full(size, self.u, dtype) if size else dtype(self.u)

  def uniform(self, low: float, high: float) -> float:
    return low

  def integers(self, low: int, high: int) -> int:
    return low


@pytest.mark.parametrize("p", [0.1, 0.25, 0.3, 0.5, 0.7, 0.9])
def test_erase_box_is_drawn_below_its_probabilitys_float32_as_torchvision(p, monkeypatch):
  # torchvision erases when torch.rand(1) < p, compared in float32: a draw of float32(0.7)
  # < 0.7 does not erase.
  erasing, image, drawn = RandomErasing(p), torch.zeros(3, 32, 32), []
  monkeypatch.setattr(
    RandomErasing, "get_params", lambda *a, **k: drawn.append(1) or (0, 0, 1, 1, 0)
  )
  for u in float32_around(p):
    monkeypatch.setattr(torch, "rand", lambda *a, u=u, **k: torch.tensor([u], dtype=torch.float32))
    erasing(image)
    assert (augment.erase_box(32, 32, p, _Drawn(u)) != augment.NO_ERASE) == bool(drawn), u
    drawn.clear()


def test_auto_augment_and_erasing_draw_from_torch_rands_float32_values():
  # torch.rand's float32 uniform: multiples of 2^-24 in [0, 1), which the comparisons in
  # float32 above take as torch does
  rng = np.random.default_rng(8)
  probs = [q for _ in range(200) for q in augment.AutoAugment().params(rng, 32, 32).probs]
  coins = []  # erase_box's

  class Recording:  # rng, its random draws kept
    def random(self, *args, **kwargs):
      drawn = rng.random(*args, **kwargs)
      coins.extend(np.ravel(drawn).tolist())
      return drawn

    uniform, integers = rng.uniform, rng.integers

  for _ in range(400):
    augment.erase_box(32, 32, 0.5, Recording())
  for draws in (probs, coins):
    assert all(0 <= q < 1 and (q * 2**24).is_integer() for q in draws)
    assert len(set(draws)) == len(draws)


# Sampling parity: our draws against torchvision's forward's, recorded from _apply_op.


def _recorded(monkeypatch, transform, count: int) -> list[list[tuple[str, float]]]:
  """The (operation, magnitude) of torchvision's _apply_op calls in each of ``count``
  forwards of ``transform`` on a tiny image, seeded."""
  calls, seen = [], []
  monkeypatch.setattr(
    autoaugment, "_apply_op", lambda img, op, m, **k: calls.append((op, m)) or img
  )
  torch.manual_seed(0)
  image = Image.new("RGB", (224, 224))
  for _ in range(count):
    transform(image)
    seen.append(calls[:])
    calls.clear()
  return seen


def _homogeneous(ours: list, theirs: list, pool: int = 5) -> float:
  """The p-value of Pearson's chi-square test that two samples of categories come from one
  distribution (a 2 x k contingency table); categories seen fewer than ``pool`` times in
  all are pooled, so every expected count is large enough for the chi-square law."""
  counts = {}
  for side, sample in enumerate((ours, theirs)):
    for c in sample:
      counts.setdefault(c, [0, 0])[side] += 1
  rare = [0, 0]
  table = []
  for pair in counts.values():
    if sum(pair) < pool:
      rare = [rare[0] + pair[0], rare[1] + pair[1]]
    else:
      table.append(pair)
  if sum(rare):
    table.append(rare)
  return stats.chi2_contingency(np.asarray(table).T).pvalue


class Biased:
  """A generator that draws wrongly, for the tests to show they reject it: integers favour
  0 one time in ten, uniforms and randoms lean low."""

  def __init__(self, seed: int):
    self.rng = np.random.default_rng(seed)

  def integers(self, *args, **kwargs):
    value = self.rng.integers(*args, **kwargs)
    return np.zeros_like(value) if self.rng.random() < 0.1 else value

  def uniform(self, low: float, high: float) -> float:
    return low + (high - low) * self.rng.random() ** 1.3

  def random(self, size=None, dtype=np.float64):
    return self.rng.random(size, dtype) ** 1.3


def _margins(calls: list[tuple[str, float]]) -> dict[str, list]:
  """The operations, the (operation, magnitude) of those with magnitudes, and the sign of
  the signed ones (-0.0 is negative), of (operation, magnitude) calls."""
  space = augment.trivial_space()
  return {
    "op": [op for op, _ in calls],
    "magnitude": [(op, abs(m)) for op, m in calls if space[op][0] is not None],
    "sign": [math.copysign(1.0, m) < 0 for op, m in calls if space[op][1]],
  }


def _ours(policy, rng, count: int) -> list[tuple[str, float]]:
  return [c for _ in range(count) for c in policy.ops(policy.params(rng, 224, 224), 224, 224)]


def test_trivial_augment_draws_ops_magnitudes_and_signs_as_torchvision(monkeypatch):
  count, policy = 3000, augment.TrivialAugmentWide()
  recorded = _recorded(monkeypatch, autoaugment.TrivialAugmentWide(), count)
  theirs = _margins([c for calls in recorded for c in calls])
  ours = _margins(_ours(policy, np.random.default_rng(1), count))
  wrong = _margins(_ours(policy, Biased(1), count))
  for margin in ("op", "magnitude", "sign"):
    assert _homogeneous(ours[margin], theirs[margin]) > SIGNIFICANCE, margin
    assert _homogeneous(wrong[margin], theirs[margin]) < SIGNIFICANCE, margin


def test_rand_augment_draws_ops_and_signs_as_torchvision(monkeypatch):
  count, policy = 1500, augment.RandAugment(2, 9)
  recorded = _recorded(monkeypatch, autoaugment.RandAugment(2, 9), count)
  theirs = _margins([c for calls in recorded for c in calls])
  ours = _margins(_ours(policy, np.random.default_rng(2), count))
  wrong = _margins(_ours(policy, Biased(2), count))
  for margin in ("op", "magnitude", "sign"):  # one magnitude per operation: bin 9
    assert _homogeneous(ours[margin], theirs[margin]) > SIGNIFICANCE, margin
  assert _homogeneous(wrong["op"], theirs["op"]) < SIGNIFICANCE


def test_auto_augment_draws_sub_policies_probabilities_and_signs_as_torchvision(monkeypatch):
  # The category: the sequence of (operation, magnitude) an image gets, which the
  # sub-policy, both probabilities and both signs decide together.
  count, policy = 3000, augment.AutoAugment()
  recorded = _recorded(monkeypatch, autoaugment.AutoAugment(), count)
  theirs = [tuple(calls) for calls in recorded]

  def sample(rng):
    return [tuple(policy.ops(policy.params(rng, 224, 224), 224, 224)) for _ in range(count)]

  assert _homogeneous(sample(np.random.default_rng(3)), theirs) > SIGNIFICANCE
  assert _homogeneous(sample(Biased(3)), theirs) < SIGNIFICANCE


def _ks(ours: list, theirs: list) -> float:
  return stats.ks_2samp(ours, theirs).pvalue


def test_erase_box_sizes_are_distributed_as_torchvisions_get_params():
  count, height, width = 4000, 96, 128
  torch.manual_seed(0)
  image = torch.zeros(3, height, width)
  theirs = [RandomErasing.get_params(image, (0.02, 0.33), (0.3, 3.3), [0.0]) for _ in range(count)]
  theirs_h, theirs_w = [b[2] for b in theirs], [b[3] for b in theirs]
  for rng, equal in ((np.random.default_rng(4), True), (Biased(4), False)):
    ours = [augment.erase_box(height, width, 1.0, rng) for _ in range(count)]
    p = min(_ks([b.height for b in ours], theirs_h), _ks([b.width for b in ours], theirs_w))
    assert (p > SIGNIFICANCE) == equal


def test_erase_box_is_drawn_with_its_probability_and_inside_the_image():
  rng = np.random.default_rng(5)
  boxes = [augment.erase_box(32, 32, 0.25, rng) for _ in range(4000)]
  erased = [b for b in boxes if b != augment.NO_ERASE]
  assert stats.binomtest(len(erased), len(boxes), 0.25).pvalue > SIGNIFICANCE
  assert all(0 < b.height < 32 and 0 < b.width < 32 for b in erased)
  assert all(b.top + b.height <= 32 and b.left + b.width <= 32 for b in erased)


class _TooLarge:
  """Every try the largest area at the widest ratio: too wide for a square image (the crop)
  or too tall (the erase box); ``random`` always draws the event."""

  def uniform(self, low: float, high: float) -> float:
    return high

  def random(self, size=None, dtype=np.float64):
    return np.zeros(size, dtype) if size else 0.0


def test_erase_box_with_p_0_draws_nothing_and_a_box_never_fitting_is_no_erase():
  rng = np.random.default_rng(6)
  state = rng.bit_generator.state
  assert augment.erase_box(32, 32, 0.0, rng) == augment.NO_ERASE
  assert rng.bit_generator.state == state  # defaults leave the following draws as before
  # every try fails: torchvision then erases the image with itself, which is no erasing
  assert augment.erase_box(32, 32, 1.0, _TooLarge()) == augment.NO_ERASE


def test_random_resized_crop_sizes_are_distributed_as_torchvisions_get_params():
  count, (height, width) = 4000, (375, 500)
  torch.manual_seed(0)
  image = Image.new("RGB", (width, height))
  scale, ratio = (0.08, 1.0), (3 / 4, 4 / 3)
  theirs = [RandomResizedCrop.get_params(image, scale, ratio) for _ in range(count)]
  for rng, equal in ((np.random.default_rng(8), True), (Biased(8), False)):
    ours = [augment.resized_crop_box(height, width, rng) for _ in range(count)]
    p = min(
      _ks([b.height for b in ours], [b[2] for b in theirs]),
      _ks([b.width for b in ours], [b[3] for b in theirs]),
    )
    assert (p > SIGNIFICANCE) == equal


@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
def test_resized_crop_equals_torchvisions_given_the_same_box(photos, interpolation):
  # Exact (0): PIL's crop then PIL's resize, as torchvision's; PIL's resize(box=...) is not
  # (its filter reads beyond the box: up to 98 grey levels off at the edges, 400 crops).
  rng = np.random.default_rng(9)
  for image in photos:
    boxes = [augment.resized_crop_box(image.height, image.width, rng) for _ in range(4)]
    for box in [*boxes, augment.Box(3, 5, 64, 64)]:  # the last one needs no resize
      ours = augment.resized_crop(image, box, 64, interpolation)
      theirs = F.resized_crop(image, *box, [64, 64], InterpolationMode(interpolation))
      assert _max_difference(ours, theirs) == 0, box


@pytest.mark.parametrize("height, width", [(10, 1000), (1000, 10), (12, 200)])
def test_random_resized_crop_falls_back_as_torchvision_where_no_try_fits(height, width):
  # Past the ratio range no crop of at least 8% of the area fits: every try fails on both sides.
  theirs = RandomResizedCrop.get_params(
    Image.new("RGB", (width, height)), [0.08, 1.0], [3 / 4, 4 / 3]
  )
  assert augment.resized_crop_box(height, width, np.random.default_rng(0)) == theirs


def test_random_resized_crop_falls_back_to_the_whole_image_within_the_ratio_range():
  # torchvision's third fallback branch; the previous pipeline took a central square here
  assert augment.resized_crop_box(300, 300, _TooLarge()) == (0, 0, 300, 300)
  assert augment.resized_crop_box(300, 380, _TooLarge()) == (0, 0, 300, 380)


def test_policy_factory_follows_the_config():
  def made(**changes):
    return data.policy(config_lib.Config(data_dir="/d", **changes).data)

  assert made() is None
  assert isinstance(made(auto_augment="ta_wide"), augment.TrivialAugmentWide)
  ra = made(auto_augment="ra", ra_num_ops=3, ra_magnitude=12, interpolation="bicubic")
  assert (ra.num_ops, ra.magnitude, ra.interpolation) == (3, 12, "bicubic")
  assert made(auto_augment="imagenet", interpolation="bicubic").interpolation == "bicubic"
  augmix = made(auto_augment="augmix", augmix_severity=7)
  assert isinstance(augmix, AugMix) and augmix.severity == 7


class _Photos:
  root = "photos"

  def __init__(self, images):
    self.images = images

  def __len__(self) -> int:
    return len(self.images)

  def read(self, i: int):
    return self.images[i], i


def test_train_sample_crops_flips_applies_the_policy_then_draws_the_erase_box(photos):
  policy = augment.TrivialAugmentWide("bicubic")
  sample = data.TrainSample(_Photos(photos), 48, "bicubic", policy, 1.0)
  for index in range(3):
    got = sample.random_map(index, np.random.default_rng(index))
    rng = np.random.default_rng(index)
    x = np.asarray(augment.random_resized_crop(photos[index], 48, rng, "bicubic"))
    x = x[:, ::-1] if rng.random() < 0.5 else x
    x = np.asarray(policy(Image.fromarray(np.ascontiguousarray(x)), rng))
    np.testing.assert_array_equal(got["image"], x)
    assert got["erase"].dtype == np.int32 and got["erase"].shape == (4,)
    assert tuple(got["erase"]) == augment.erase_box(48, 48, 1.0, rng) != augment.NO_ERASE


def test_train_sample_without_policy_or_erasing_has_a_zero_erase_box(photos):
  got = data.TrainSample(_Photos(photos), 32).random_map(0, np.random.default_rng(0))
  assert got["image"].shape == (32, 32, 3) and tuple(got["erase"]) == augment.NO_ERASE


def test_eval_transform_takes_the_configs_interpolation():
  cfg = config_lib.Config(data_dir="/d", interpolation="bicubic")
  assert data.eval_transform(cfg.data).interpolation == "bicubic"


def test_the_pytorch_references_transforms_follow_the_config():
  from flax_resnet.bench.train_torch import eval_transform, train_transform

  cfg = config_lib.Config(
    data_dir="/d",
    image_size=64,
    auto_augment="ra",
    ra_num_ops=3,
    ra_magnitude=5,
    interpolation="bicubic",
    random_erase=0.1,
  )
  steps = train_transform(cfg).transforms
  assert [type(t).__name__ for t in steps] == [
    "RandomResizedCrop",
    "RandomHorizontalFlip",
    "RandAugment",
    "ToTensor",
    "Normalize",
    "RandomErasing",
  ]  # torchvision's preset order: erasing after normalisation
  bicubic = InterpolationMode.BICUBIC
  assert steps[0].interpolation == steps[2].interpolation == bicubic
  assert (steps[2].num_ops, steps[2].magnitude, steps[-1].p) == (3, 5, 0.1)
  assert eval_transform(cfg).transforms[0].interpolation == bicubic
  augmix = train_transform(
    dataclasses.replace(cfg, auto_augment="augmix", augmix_severity=4)
  ).transforms[2]
  assert (type(augmix).__name__, augmix.severity) == ("AugMix", 4)
  plain = [type(t).__name__ for t in train_transform(config_lib.Config(data_dir="/d")).transforms]
  assert plain == ["RandomResizedCrop", "RandomHorizontalFlip", "ToTensor", "Normalize"]


def test_the_pipeline_benchmark_measures_the_augmentations_it_is_given(tmp_path):
  from flax_resnet.bench import pipeline

  args = pipeline.parse_args(["--auto-augment", "ta_wide", "--random-erase", "0.1"])
  cfg = pipeline.pipeline_config(args, tmp_path, 224, 2)
  assert (cfg.auto_augment, cfg.random_erase, cfg.workers) == ("ta_wide", 0.1, 2)
  plain = pipeline.pipeline_config(pipeline.parse_args([]), tmp_path, 224, 0)
  assert (plain.auto_augment, plain.random_erase) == ("none", 0.0)
  with pytest.raises(SystemExit):
    pipeline.parse_args(["--random-erase", "1.5"])
