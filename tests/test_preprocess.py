"""Eval preprocessing equals torchvision's on real ImageNet JPEGs, and so do predictions."""

import csv

import numpy as np
import pytest
from PIL import Image
from torch_reference import calibrated_pair, torch
from torchvision.transforms._presets import ImageClassification  # noqa: E402

from flax_resnet.port.parity import flax_features
from flax_resnet.preprocess import EvalTransform


@pytest.fixture(scope="module")
def samples(data_dir):
  folder = data_dir / "imagenet-samples"
  with open(folder / "labels.csv") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 102
  return [folder / r["file"] for r in rows]


def test_samples_include_grayscale_images(samples):
  # ../shared/README.md names two (classes 191 and 805); the folder holds a third.
  assert sum(Image.open(p).mode == "L" for p in samples) >= 2


@pytest.mark.parametrize("resize", [256, 232])
def test_arrays_equal_torchvision_transform(samples, resize):
  ours = EvalTransform(resize_size=resize, crop_size=224)
  theirs = ImageClassification(crop_size=224, resize_size=resize)
  for path in samples:
    a = ours(Image.open(path))
    b = theirs(Image.open(path).convert("RGB")).permute(1, 2, 0).numpy()
    assert a.shape == b.shape == (224, 224, 3) and a.dtype == np.float32
    assert float(np.max(np.abs(a - b))) <= 1e-6, path.name


def test_converted_model_top5_equals_torchvision_on_its_own_pipeline(samples):
  reference, model = calibrated_pair("resnet18")
  ours = flax_features(model, EvalTransform().load(samples))["logits"]
  theirs_in = torch.stack(
    [
      ImageClassification(crop_size=224, resize_size=256)(Image.open(p).convert("RGB"))
      for p in samples
    ]
  )
  with torch.no_grad():
    theirs = reference(theirs_in).numpy()
  for path, a, b in zip(samples, ours, theirs):
    assert list(np.argsort(-a)[:5]) == list(np.argsort(-b)[:5]), path.name


def test_unreadable_image_is_named(tmp_path):
  bad = tmp_path / "broken.jpg"
  bad.write_bytes(b"\xff\xd8 not really a jpeg")
  with pytest.raises(ValueError, match="broken.jpg"):
    EvalTransform().load([bad])
