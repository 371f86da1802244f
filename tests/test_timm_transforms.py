"""timm's eval preprocessing, ``create_transform(**resolve_data_config(pretrained_cfg=...))``:
``EvalTransform.from_timm`` equals it to the bit on the ImageNet samples for each ``crop_mode``,
interpolation, ``crop_pct`` and input size, for every pretrained tag of timm's ResNet family, and
``flax-resnet-predict`` applies it when a checkpoint's metadata records it."""

import json

import numpy as np
import pytest
from PIL import Image

timm_data = pytest.importorskip("timm.data", reason="timm's transforms need timm (the dev extra)")
import timm  # noqa: E402

from flax_resnet.preprocess import EvalTransform, timm_data_config  # noqa: E402

# A handful of shapes (width x height): smaller than every crop, portrait, landscape and
# greyscale, square, nearly square, the usual 4:3.
SAMPLES = (
  "680_n03825788.JPEG",  # 106x150
  "650_n03759954.JPEG",  # 702x1094
  "191_n02096051.JPEG",  # 500x330, greyscale
  "940_n07716906.JPEG",  # 168x168
  "100_n01860187.JPEG",  # 526x497
  "000_n01440764.JPEG",  # 500x375
)
IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
INCEPTION = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
CLIP = {
  "mean": (0.48145466, 0.4578275, 0.40821073),
  "std": (0.26862954, 0.26130258, 0.27577711),
}


def cfg(size, crop_pct, crop_mode, interpolation, norm=None):
  """A pretrained cfg's data fields, square sizes as timm writes them, (3, size, size)."""
  input_size = (3, size, size) if isinstance(size, int) else (3, *size)
  return dict(
    input_size=input_size,
    crop_pct=crop_pct,
    crop_mode=crop_mode,
    interpolation=interpolation,
    **(norm or IMAGENET),
  )


# Every branch of timm's eval transform: centre with a square resize (torchvision's Resize(int)),
# a non-square one (ResizeKeepRatio), and a crop larger than the resize (padding); squash; border
# (fit, then pad with the mean's colour: 0.5 rounds to 128, half to even).
CONFIGS = {
  "center-bicubic-224-0.875": cfg(224, 0.875, "center", "bicubic"),
  "center-bilinear-160-0.95": cfg(160, 0.95, "center", "bilinear"),
  "center-bicubic-288-1.0": cfg(288, 1.0, "center", "bicubic"),
  "center-bicubic-256-0.95-inception": cfg(256, 0.95, "center", "bicubic", INCEPTION),
  "center-bicubic-320-1.15-padded": cfg(320, 1.15, "center", "bicubic"),
  "center-bicubic-224x288-0.95": cfg((224, 288), 0.95, "center", "bicubic"),
  "center-nearest-224-0.9": cfg(224, 0.9, "center", "nearest"),
  "squash-bicubic-320-0.95": cfg(320, 0.95, "squash", "bicubic"),
  "squash-bilinear-256x224-1.0": cfg((256, 224), 1.0, "squash", "bilinear"),
  "border-bicubic-256-0.875": cfg(256, 0.875, "border", "bicubic"),
  "border-bilinear-224-1.0-inception": cfg(224, 1.0, "border", "bilinear", INCEPTION),
  "border-bicubic-288x160-0.95-clip": cfg((288, 160), 0.95, "border", "bicubic", CLIP),
}


@pytest.fixture(scope="module")
def samples(data_dir):
  folder = data_dir / "imagenet-samples"
  return [Image.open(folder / name) for name in SAMPLES]


def timms(pretrained_cfg, use_test_size=False):
  """timm's own eval transform for ``pretrained_cfg``, and the data config it resolved."""
  config = timm_data.resolve_data_config(pretrained_cfg=pretrained_cfg, use_test_size=use_test_size)
  return timm_data.create_transform(**config), config


def assert_equal_on(images, ours, theirs, what):
  for image in images:
    got = ours(image)
    want = theirs(image.convert("RGB")).permute(1, 2, 0).numpy()
    assert got.dtype == np.float32 and got.shape == want.shape, (what, image.size)
    assert float(np.max(np.abs(got - want))) == 0.0, (what, image.size)


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_from_timm_equals_timms_eval_transform_to_the_bit(samples, config):
  theirs, resolved = timms(config)
  assert resolved["crop_mode"] == config["crop_mode"]
  assert_equal_on(samples, EvalTransform.from_timm(**resolved), theirs, config)


def family_cfgs():
  """Every pretrained tag of timm's resnet and resnest modules, with its pretrained cfg."""
  names = timm.list_models(module=["resnet", "resnest"], pretrained=True)
  return {name: timm.models.get_pretrained_cfg(name).to_dict() for name in names}


def test_each_family_tags_data_config_resolves_as_timms():
  cfgs = family_cfgs()
  assert len(cfgs) >= 150
  for name, pretrained_cfg in cfgs.items():
    for use_test_size in (False, True):
      want = timms(pretrained_cfg, use_test_size)[1]
      assert timm_data_config(pretrained_cfg, use_test_size) == want, (name, use_test_size)


def test_each_family_tags_transform_at_train_and_test_size_equals_timms(samples):
  distinct = {}
  for pretrained_cfg in family_cfgs().values():
    for use_test_size in (False, True):
      config = timm_data_config(pretrained_cfg, use_test_size)
      distinct[json.dumps(config, sort_keys=True)] = (pretrained_cfg, use_test_size)
  assert len(distinct) >= 20  # 160 to 448 pixels, crop_pct 0.875 to 1.0, both filters
  for i, (pretrained_cfg, use_test_size) in enumerate(distinct.values()):
    theirs, resolved = timms(pretrained_cfg, use_test_size)
    ours = EvalTransform.from_timm(**timm_data_config(pretrained_cfg, use_test_size))
    assert_equal_on([samples[i % len(samples)]], ours, theirs, resolved)  # one each, in turn


def test_a_pretrained_cfg_read_from_json_passes_straight_in():
  pretrained_cfg = json.loads(
    json.dumps(timm.models.get_pretrained_cfg("resnet50d.ra4_e3600_r224_in1k").to_dict())
  )
  config = timm_data_config(pretrained_cfg, use_test_size=True)
  assert config["input_size"] == [3, 288, 288] and config["crop_pct"] == 1.0
  assert EvalTransform.from_timm(**config) == EvalTransform(
    resize_size=288, crop_size=288, interpolation="bicubic", **INCEPTION
  )


def test_a_centre_crop_with_a_square_resize_is_torchvisions_transform_in_its_format():
  ours = EvalTransform.from_timm(
    input_size=(3, 224, 224), crop_pct=0.875, crop_mode="center", interpolation="bilinear"
  )
  assert ours == EvalTransform()
  assert ours.to_json() == {
    "resize_size": 256,
    "crop_size": 224,
    "interpolation": "bilinear",
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
  }


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_a_timm_transform_comes_back_from_its_json_unchanged(config):
  ours = EvalTransform.from_timm(**timms(config)[1])
  again = EvalTransform.from_json(json.loads(json.dumps(ours.to_json())))
  assert again == ours and again.to_json() == ours.to_json()


GOOD = dict(input_size=(3, 224, 224), crop_pct=0.95, crop_mode="center", interpolation="bicubic")


BAD = [
  ({"input_size": (224,)}, "input_size must be a positive integer, (height, width) or (3, "),
  ({"input_size": (1, 224, 224)}, "input_size must be"),
  ({"input_size": 0}, "input_size must be"),
  ({"input_size": (3, 224, 224, 224)}, "input_size must be"),
  ({"input_size": "224"}, "input_size must be"),
  ({"input_size": (3, 224.0, 224)}, "input_size must be"),
  ({"crop_pct": 0}, "crop_pct must be a number above 0, not 0"),
  ({"crop_pct": -0.9}, "crop_pct must be a number above 0"),
  ({"crop_pct": float("nan")}, "crop_pct must be a number above 0"),
  ({"crop_pct": True}, "crop_pct must be a number above 0"),
  ({"crop_pct": "0.95"}, "crop_pct must be a number above 0"),
  ({"crop_pct": 1000.0}, "crop_pct 1000.0 resizes a 224x224 input_size to 0x0"),
  ({"crop_mode": "centre"}, "crop_mode must be one of ('center', 'squash', 'border')"),
  ({"interpolation": "lanczos"}, "interpolation must be one of"),
  ({"interpolation": None}, "interpolation must be one of"),
  ({"interpolation": ["bicubic"]}, "interpolation must be one of"),
  ({"crop_mode": ["border"]}, "crop_mode must be one of"),
  ({"mean": (0.5, 0.5)}, "mean must have 3 values (one per colour) or 1, not 2"),
  ({"mean": None}, "mean must be a list of finite numbers"),
  ({"std": (0.2, 0.0, 0.2)}, "std must be a list of finite numbers above 0"),
]


@pytest.mark.parametrize(
  "change, needle", BAD, ids=[" ".join(f"{k}={v!r}" for k, v in c.items()) for c, _ in BAD]
)
def test_a_bad_timm_config_value_is_refused_in_one_line_naming_it(change, needle):
  with pytest.raises(ValueError) as error:
    EvalTransform.from_timm(**{**GOOD, **change})
  message = str(error.value)
  assert needle in message and "\n" not in message
  assert message.startswith(next(iter(change)))


def test_a_pretrained_cfg_that_is_not_a_mapping_is_refused_in_one_line():
  with pytest.raises(ValueError, match=r"^pretrained_cfg must be a mapping of timm's fields"):
    timm_data_config([("input_size", (3, 224, 224))])


def test_an_image_too_thin_to_fit_the_border_resize_is_refused_in_one_line():
  # timm's own transform fails inside PIL here: a side of 0 pixels.
  transform = EvalTransform.from_timm(**{**GOOD, "crop_mode": "border"})
  with pytest.raises(ValueError, match=r"^image of 1000x1 is too thin to resize into 235x235$"):
    transform(Image.new("RGB", (1000, 1)))


PREDICTED = CONFIGS["border-bicubic-288x160-0.95-clip"]


@pytest.fixture(scope="module")
def border_checkpoint(tmp_path_factory):
  """A random ResNet-18 whose metadata records timm's border transform at 288x160."""
  from flax import nnx

  import flax_resnet

  preprocessing = EvalTransform.from_timm(**timms(PREDICTED)[1]).to_json()
  return flax_resnet.save(
    flax_resnet.create_model("resnet18", rngs=nnx.Rngs(0)),
    tmp_path_factory.mktemp("timm-predict") / "ckpt",
    {"arch": "resnet18", "options": {}, "preprocessing": preprocessing},
  )


def test_predict_applies_the_timm_transform_its_checkpoints_metadata_records(
  border_checkpoint, data_dir, capsys
):
  import flax_resnet
  from flax_resnet.commands.predict import main
  from flax_resnet.predict import top_k

  files = [data_dir / "imagenet-samples" / name for name in SAMPLES[:3]]
  assert main(["--checkpoint", str(border_checkpoint), "--batch-size", "3", *map(str, files)]) == 0
  printed = [int(line.split()[1]) for line in capsys.readouterr().out.splitlines()[1:6]]
  model, meta = flax_resnet.load(border_checkpoint)
  assert meta.transform.crop_mode == "border" and meta.transform.crop_size == (288, 160)
  theirs = timms(PREDICTED)[0]
  batch = np.stack([theirs(Image.open(f).convert("RGB")).permute(1, 2, 0).numpy() for f in files])
  assert printed == list(top_k(model, batch, 5, batch_size=3)[0][0])


def test_predict_names_an_image_too_thin_for_the_border_resize_and_predicts_the_others(
  border_checkpoint, data_dir, tmp_path, capsys
):
  from flax_resnet.commands.predict import main

  thin = tmp_path / "thin.png"
  Image.new("RGB", (1000, 1)).save(thin)
  good = data_dir / "imagenet-samples" / SAMPLES[0]
  assert main(["--checkpoint", str(border_checkpoint), str(thin), str(good)]) == 2
  out, err = capsys.readouterr()
  assert (
    err == f"error: cannot preprocess image {thin}: image of 1000x1 is too thin to resize "
    "into 168x303\n"
  )
  assert out.startswith(f"{good}\n") and "thin.png" not in out


def test_a_checkpoint_whose_metadata_names_an_unknown_crop_mode_is_refused_in_one_line(
  border_checkpoint, tmp_path
):
  import shutil

  import flax_resnet

  copy = shutil.copytree(border_checkpoint, tmp_path / "ckpt")
  meta = json.loads((copy / "metadata.json").read_text())
  meta["preprocessing"]["crop_mode"] = "letterbox"
  (copy / "metadata.json").write_text(json.dumps(meta))
  with pytest.raises(ValueError) as error:
    flax_resnet.load(copy)
  message = str(error.value)
  assert message.startswith(f"{copy / 'metadata.json'}: ") and "\n" not in message
  assert "crop_mode must be one of ('center', 'squash', 'border'), not 'letterbox'" in message
