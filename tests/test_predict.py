"""flax-resnet-predict (python -m flax_resnet.commands.predict) on good and bad images: every
readable one is predicted."""

import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torch_reference import calibrate, torch, torchvision

ROOT = Path(__file__).resolve().parents[1]


def predict(*args):
  return subprocess.run(
    [sys.executable, "-m", "flax_resnet.commands.predict", *map(str, args)],
    capture_output=True,
    text=True,
    cwd=ROOT,
    timeout=600,
  )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  from flax_resnet.port.state_dict import from_torch_state_dict
  from flax_resnet.saved_model import save

  torch.manual_seed(0)
  model = from_torch_state_dict(calibrate(torchvision.models.resnet18()).state_dict())
  return save(
    model, tmp_path_factory.mktemp("predict") / "ckpt", {"arch": "resnet18", "options": {}}
  )


@pytest.fixture
def good(data_dir):
  return data_dir / "imagenet-samples" / "000_n01440764.JPEG"


def png_header_only(path: Path, width: int, height: int) -> Path:
  """A PNG that declares width x height and holds no pixels: what a bomb looks like to PIL."""

  def chunk(kind, data):
    return (
      struct.pack(">I", len(data))
      + kind
      + data
      + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )

  header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
  path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
  return path


def test_a_truncated_image_is_reported_and_the_good_one_still_predicted(checkpoint, good, tmp_path):
  cut = tmp_path / "cut.jpg"
  cut.write_bytes(good.read_bytes()[:2000])
  done = predict("--checkpoint", checkpoint, cut, good)
  assert done.returncode == 2
  assert done.stderr.strip().startswith("error: cannot read image") and "cut.jpg" in done.stderr
  assert len(done.stderr.strip().splitlines()) == 1, done.stderr
  assert good.name in done.stdout and "%" in done.stdout and "cut.jpg" not in done.stdout


def test_a_decompression_bomb_is_refused_in_one_line(checkpoint, good, tmp_path):
  bomb = png_header_only(tmp_path / "bomb.png", 14000, 14000)
  done = predict("--checkpoint", checkpoint, bomb, good)
  assert done.returncode == 2 and "bomb.png: refused" in done.stderr, done.stderr
  assert len(done.stderr.strip().splitlines()) == 1 and good.name in done.stdout


def test_sixteen_bit_greyscale_is_scaled_not_clipped(tmp_path):
  from flax_resnet.preprocess import open_image

  ramp = (np.arange(256 * 256).reshape(256, 256) % 65536).astype(np.uint16)
  Image.fromarray(ramp).save(tmp_path / "ramp16.png")
  assert Image.open(tmp_path / "ramp16.png").mode == "I;16"
  got = np.asarray(open_image(tmp_path / "ramp16.png"))
  assert got.shape == (256, 256, 3) and got.dtype == np.uint8
  np.testing.assert_array_equal(got[..., 0], np.round(ramp / 257).astype(np.uint8))
  assert np.mean(got == 255) < 0.01  # PIL's own convert("RGB") saturates 99.6% of them


def test_integer_pixels_of_no_known_range_are_refused(tmp_path):
  from flax_resnet.preprocess import open_image

  Image.fromarray(np.full((8, 8), 70000, np.int32), "I").save(tmp_path / "wide.tif")
  with pytest.raises(ValueError, match="wide.tif.*not 16-bit"):
    open_image(tmp_path / "wide.tif")


@pytest.mark.parametrize("flag", ["--top", "--batch-size"])
def test_a_count_below_one_is_one_line(checkpoint, good, flag):
  done = predict("--checkpoint", checkpoint, flag, "-3", good)
  assert done.returncode == 2 and f"argument {flag}: -3 is not a positive integer" in done.stderr
  assert len(done.stderr.strip().splitlines()) == 1, done.stderr


@pytest.mark.parametrize(
  "edit, needle",
  [
    (lambda m: m["options"].update(dtype="float17"), "'options.dtype': 'float17'"),
    (lambda m: m["options"].update(param_dtype="int8"), "'options.param_dtype': 'int8'"),
    (
      lambda m: m.update(preprocessing={"crop_size": 224.5}),
      "crop_size must be a positive integer",
    ),
    (
      lambda m: m.update(preprocessing={"crop_size": "224"}),
      "crop_size must be a positive integer",
    ),
    (
      lambda m: m.update(preprocessing={"resize_size": 0}),
      "resize_size must be a positive integer",
    ),
    (lambda m: m.update(preprocessing={"std": [0.2, 0, 0.2]}), "std must be a list of finite"),
    (lambda m: m.update(preprocessing={"mean": 0.5}), "mean must be a list of finite"),
    (lambda m: m.update(preprocessing={"interpolation": "lanczos"}), "interpolation must be"),
  ],
  ids=[
    "bad dtype",
    "integer param_dtype",
    "fractional crop",
    "crop as text",
    "resize 0",
    "std 0",
    "mean not a list",
    "unknown interpolation",
  ],
)
def test_bad_metadata_values_are_one_line_naming_file_and_key(
  checkpoint, good, tmp_path, edit, needle
):
  import json
  import shutil

  import flax_resnet

  copy = shutil.copytree(checkpoint, tmp_path / "ckpt")
  meta = json.loads((copy / "metadata.json").read_text())
  edit(meta)
  (copy / "metadata.json").write_text(json.dumps(meta))
  with pytest.raises(ValueError) as error:
    flax_resnet.load(copy)
  assert str(error.value).startswith(f"{copy / 'metadata.json'}: ") and needle in str(error.value)
  done = predict("--checkpoint", copy, good)
  assert done.returncode == 2 and needle in done.stderr, done.stderr[-3000:]
  assert done.stderr.startswith(f"error: {copy / 'metadata.json'}: ")
  assert len(done.stderr.strip().splitlines()) == 1, done.stderr[-3000:]
