"""AugMix on the host (``training/augmix.py``) against torchvision's ``AugMix``, which runs its
ops with the tensor backend: each op on real photographs, the whole mix given the same draws,
and the draws' distributions."""

import collections

import numpy as np
import pytest
from PIL import Image
from scipy import stats
from torch_reference import torch
from torchvision.transforms import InterpolationMode, autoaugment

from flax_resnet.training import augmix
from flax_resnet.training.augmix import OPS, AugMix

SIGNIFICANCE = 0.001  # every statistical test's level: p below it rejects
# The geometric ops warp in float32 and round. torch's CPU kernel fuses multiply-adds
# (reproduced here in float64), so its pixels are equal here; on a CPU whose torch build does
# not fuse them, a value at a rounding boundary may move by one: the bound is one grey level,
# and a systematic error (truncating instead of rounding, a half-pixel shift) would move far
# more pixels than this share.
GEOMETRIC = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
OFF_BY_ONE_SHARE = 1e-3


@pytest.fixture(scope="module")
def photos(data_dir) -> list[np.ndarray]:
  """Small crops (of different, non-square sizes) of three real ImageNet photographs."""
  names = ("000_n01440764.JPEG", "010_n01530575.JPEG", "020_n01601694.JPEG")
  boxes = ((40, 30, 96, 78), (10, 50, 55, 111), (0, 0, 64, 64))
  crops = []
  for name, box in zip(names, boxes):
    with Image.open(data_dir / "imagenet-samples" / name) as image:
      crops.append(np.asarray(image.convert("RGB").crop(box)))
  return crops


def tensor(image: np.ndarray):
  """The batch of one CHW uint8 tensor that torchvision's AugMix makes of a PIL image."""
  return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None]


def torchvision_op(image: np.ndarray, name: str, magnitude: float, interpolation=None):
  """torchvision's op on the uint8 tensor as AugMix calls it (no fill), back to HWC."""
  out = autoaugment._apply_op(
    tensor(image),
    name,
    magnitude,
    interpolation=interpolation or InterpolationMode.BILINEAR,
    fill=None,
  )
  return out[0].numpy().transpose(1, 2, 0)


def assert_within_a_grey_level(ours: np.ndarray, theirs: np.ndarray) -> None:
  """At most one grey level apart, and that in a small share of the values."""
  difference = np.abs(ours.astype(np.int32) - theirs.astype(np.int32))
  assert difference.max() <= 1
  assert (difference > 0).mean() <= OFF_BY_ONE_SHARE


@pytest.mark.parametrize("size", [(1, 1), (2, 7), (53, 47), (176, 176), (224, 224), (333, 500)])
def test_magnitude_tables_are_torchvisions_float32_values_bit_for_bit(size):
  space = autoaugment.AugMix()._augmentation_space(augmix.NUM_BINS, size)
  ours = augmix.magnitude_tables(size)
  assert list(ours) == list(space) == list(OPS)
  for name, (magnitudes, _) in space.items():
    if magnitudes.ndim == 0:
      assert ours[name] is None
    else:  # the same float32 bits
      np.testing.assert_array_equal(ours[name], magnitudes.numpy().astype(np.float32))


def test_linspace32_is_torch_linspace_bit_for_bit():
  # the warp's pixel-centre grid and the tables come from it: each value exact
  for steps in range(1, 300):
    for start, end in ((0.0, steps / 3.0), (-steps * 0.5 + 0.5, steps * 0.5 - 0.5), (255.0, 0.0)):
      expected = torch.linspace(start, end, steps).numpy()
      np.testing.assert_array_equal(augmix.linspace32(start, end, steps), expected)


@pytest.mark.parametrize("name", OPS)
def test_each_op_equals_torchvisions_tensor_op_at_several_magnitudes_and_signs(photos, name):
  for image in photos:
    table = augmix.magnitude_tables(image.shape[:2])[name]
    magnitudes = [0.0] if table is None else [float(table[b]) for b in (0, 2, 5, 9)]
    signs = (1.0, -1.0) if name in augmix.SIGNED else (1.0,)
    for magnitude in (m * s for m in magnitudes for s in signs):
      ours = augmix.apply_op(image, name, magnitude)
      theirs = torchvision_op(image, name, magnitude)
      if name in GEOMETRIC:
        assert_within_a_grey_level(ours, theirs)
      else:
        # integer ops, or float32 blends that truncate after the same float32 operations (and
        # sharpness's kernel, whose rounding is never at a tie): exact
        np.testing.assert_array_equal(ours, theirs)


def test_ops_act_on_a_one_channel_image_as_torchvisions(photos):
  grey = photos[0][..., :1]
  for name in OPS:
    table = augmix.magnitude_tables(grey.shape[:2])[name]
    magnitude = 0.0 if table is None else float(table[4])
    magnitude = -magnitude if name in augmix.SIGNED else magnitude
    assert_within_a_grey_level(
      augmix.apply_op(grey, name, magnitude), torchvision_op(grey, name, magnitude)
    )


def test_bicubic_is_refused_as_torchvisions_tensor_warp_refuses_it(photos):
  # torchvision's AugMix warps tensors, whose affine refuses bicubic at the first geometric op;
  # ours refuses it up front. Its colour ops ignore the interpolation.
  with pytest.raises(ValueError, match="Interpolation mode 'bicubic' is unsupported"):
    torchvision_op(photos[0], "ShearX", 0.1, InterpolationMode.BICUBIC)
  with pytest.raises(ValueError, match="interpolation='bicubic'"):
    AugMix(interpolation="bicubic")
  np.testing.assert_array_equal(
    torchvision_op(photos[0], "Contrast", 0.5, InterpolationMode.BICUBIC),
    augmix.apply_op(photos[0], "Contrast", 0.5),
  )


@pytest.mark.parametrize("severity", [0, 11])
def test_a_severity_outside_1_to_10_is_refused(severity):
  with pytest.raises(ValueError, match=f"severity={severity}"):
    AugMix(severity)


def replayed_draws(params: augmix.AugMixParams, severity: int) -> list[tuple[int, int]]:
  """The (bound, value) of each ``torch.randint`` torchvision's AugMix makes for ``params``, in
  its order: a chain's depth, then each op's index, bin (ops with a magnitude) and sign (signed
  ops)."""
  draws = []
  for chain in params.chains:
    draws.append((augmix.MAX_CHAIN_DEPTH + 1, len(chain)))
    for op in chain:
      draws.append((len(OPS), OPS.index(op.name)))
      if op.bin is not None:
        draws.append((severity, op.bin))
      if op.name in augmix.SIGNED:
        draws.append((2, int(op.negative)))
  return draws


def torchvision_augmix(image: Image.Image, params, severity: int, monkeypatch) -> Image.Image:
  """torchvision's AugMix of ``image`` with its random draws replaced by ``params``."""
  draws = replayed_draws(params, severity)
  dirichlet = [params.weights, params.chain_weights]

  def randint(*args, **kwargs):
    bound, value = draws.pop(0)
    assert (kwargs.get("high") or args[0]) == bound  # the draw torchvision makes here
    return torch.tensor([value])

  transform = autoaugment.AugMix(severity=severity)
  monkeypatch.setattr(
    transform, "_sample_dirichlet", lambda _: torch.from_numpy(dirichlet.pop(0))[None]
  )
  with monkeypatch.context() as patch:
    patch.setattr(torch, "randint", randint)
    out = transform(image)
  assert not draws and not dirichlet
  return out


@pytest.mark.parametrize("mode", ["RGB", "L"])
@pytest.mark.parametrize("severity", [1, 3, 10])
def test_augmix_equals_torchvisions_given_the_same_draws(photos, monkeypatch, mode, severity):
  rng = np.random.default_rng(severity)
  transform = AugMix(severity)
  for image in photos:
    image = Image.fromarray(image).convert(mode)
    pixels = np.asarray(image).reshape(image.height, image.width, -1)
    for _ in range(4):
      params = transform.params(rng, pixels.shape[:2])
      ours = transform.apply(pixels, params).reshape(np.asarray(image).shape)
      theirs = torchvision_augmix(image, params, severity, monkeypatch)
      assert theirs.mode == mode
      # the chains within one grey level (the warp's rounding); the mix of the same chain
      # images is the same float32 sum, truncated alike
      assert_within_a_grey_level(ours, np.asarray(theirs))


def test_call_draws_params_and_applies_them_to_a_pil_image(photos):
  image = Image.fromarray(photos[1])
  out = AugMix(5)(image, np.random.default_rng(7))
  params = AugMix(5).params(np.random.default_rng(7), photos[1].shape[:2])
  assert out.mode == "RGB" and out.size == image.size
  np.testing.assert_array_equal(np.asarray(out), AugMix(5).apply(photos[1], params))
  grey = AugMix(5)(image.convert("L"), np.random.default_rng(7))
  assert grey.mode == "L" and grey.size == image.size
  with pytest.raises(ValueError, match="image.mode='RGBA'"):
    AugMix(5)(image.convert("RGBA"), np.random.default_rng(7))


# ---- sampling parity: our draws against torchvision's recorded ones

DRAWS = 1500  # images per sampler: ~4,000 chains, ~9,000 ops
SEVERITY = 3


class Draws:
  """The statistics of many AugMix draws: the original's weight, the first chain's weight,
  the chains' depths, the ops and their signed magnitudes (op, magnitude)."""

  def __init__(self):
    self.original, self.first_chain, self.depths = [], [], []
    self.ops, self.magnitudes = collections.Counter(), collections.Counter()

  def add_op(self, name: str, magnitude: float) -> None:
    self.ops[name] += 1
    self.magnitudes[name, magnitude] += 1


def our_draws(transform: AugMix, seed: int) -> Draws:
  """``DRAWS`` images' params from ``transform``."""
  rng, draws = np.random.default_rng(seed), Draws()
  for _ in range(DRAWS):
    params = transform.params(rng, (32, 48))
    draws.original.append(params.weights[0])
    draws.first_chain.append(params.chain_weights[0])
    for chain in params.chains:
      draws.depths.append(len(chain))
      for op in chain:
        draws.add_op(op.name, op.magnitude)
  return draws


def torchvision_draws(monkeypatch) -> Draws:
  """``DRAWS`` images' draws by torchvision's AugMix, its ops replaced by a recorder."""
  torch.manual_seed(0)
  draws, transform = Draws(), autoaugment.AugMix(severity=SEVERITY)
  weights = []
  sample = transform._sample_dirichlet
  monkeypatch.setattr(
    transform, "_sample_dirichlet", lambda a: weights.append(sample(a)) or weights[-1]
  )
  randint = torch.randint

  def recording_randint(*args, **kwargs):
    value = randint(*args, **kwargs)
    if kwargs.get("low") == 1:  # the depth's draw, randint(low=1, high=4)
      draws.depths.append(int(value))
    return value

  def recording_op(image, name, magnitude, interpolation, fill):
    draws.add_op(name, magnitude)
    return image

  monkeypatch.setattr(autoaugment, "_apply_op", recording_op)
  with monkeypatch.context() as patch:
    patch.setattr(torch, "randint", recording_randint)
    for _ in range(DRAWS):
      transform(torch.zeros(3, 32, 48, dtype=torch.uint8))
  draws.original = [float(w[0, 0]) for w in weights[0::2]]
  draws.first_chain = [float(w[0, 0]) for w in weights[1::2]]
  return draws


def chi_square_p(ours: collections.Counter, theirs: collections.Counter) -> float:
  """The p-value of a chi-square test that two samples' category counts share a distribution."""
  keys = sorted(set(ours) | set(theirs), key=str)
  return stats.chi2_contingency([[ours[k] for k in keys], [theirs[k] for k in keys]])[1]


def p_values(ours: Draws, theirs: Draws) -> dict[str, float]:
  """Each statistic's two-sample test: chi-square over the categories, Kolmogorov-Smirnov over
  the weights."""
  return {
    "ops": chi_square_p(ours.ops, theirs.ops),
    "depths": chi_square_p(collections.Counter(ours.depths), collections.Counter(theirs.depths)),
    "magnitudes": chi_square_p(ours.magnitudes, theirs.magnitudes),
    "original": stats.ks_2samp(ours.original, theirs.original).pvalue,
    "first_chain": stats.ks_2samp(ours.first_chain, theirs.first_chain).pvalue,
  }


@pytest.fixture(scope="module")
def reference_draws() -> Draws:
  with pytest.MonkeyPatch.context() as monkeypatch:
    return torchvision_draws(monkeypatch)


def test_draws_follow_torchvisions_distributions(reference_draws):
  p = p_values(our_draws(AugMix(SEVERITY), seed=0), reference_draws)
  assert min(p.values()) > SIGNIFICANCE, p


class FixedBin(AugMix):
  """Wrong: every magnitude at bin severity − 1 instead of one drawn below severity."""

  def _draw_op(self, rng, tables):
    op = super()._draw_op(rng, tables)
    if op.bin is None:
      return op
    magnitude = float(tables[op.name][self.severity - 1])
    return op._replace(bin=self.severity - 1, magnitude=-magnitude if op.negative else magnitude)


class Unsigned(AugMix):
  """Wrong: no sign flips."""

  def _draw_op(self, rng, tables):
    op = super()._draw_op(rng, tables)
    return op._replace(negative=False, magnitude=abs(op.magnitude))


@pytest.mark.parametrize(
  ("wrong", "statistic"),
  [
    (lambda m: FixedBin(SEVERITY), "magnitudes"),
    (lambda m: Unsigned(SEVERITY), "magnitudes"),
    (lambda m: m.setattr(augmix, "MAX_CHAIN_DEPTH", 4) or AugMix(SEVERITY), "depths"),
    (lambda m: m.setattr(augmix, "OPS", OPS[:-1] + ("Contrast",)) or AugMix(SEVERITY), "ops"),
    (lambda m: m.setattr(augmix, "ALPHA", 0.5) or AugMix(SEVERITY), "original"),
    (lambda m: m.setattr(augmix, "ALPHA", 2.0) or AugMix(SEVERITY), "first_chain"),
  ],
  ids=["fixed-bin", "unsigned", "depth-1-to-4", "no-sharpness", "alpha-0.5", "alpha-2"],
)
def test_the_sampling_tests_reject_a_wrong_sampler(reference_draws, monkeypatch, wrong, statistic):
  p = p_values(our_draws(wrong(monkeypatch), seed=0), reference_draws)
  assert p[statistic] < SIGNIFICANCE, p


def test_a_config_of_augmix_with_bicubic_is_refused_in_one_line():
  from flax_resnet.training import config as config_lib

  with pytest.raises(ValueError, match=r"auto_augment='augmix' with interpolation='bicubic'"):
    config_lib.override(config_lib.Config(), ["auto_augment=augmix", "interpolation=bicubic"])
  config_lib.override(config_lib.Config(), ["auto_augment=ta_wide", "interpolation=bicubic"])
