"""training/config.py and the training command's view of it: every field documented and listed,
the presets listed from the package, settings that no evaluation can use refused at start."""

import dataclasses
import itertools
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from flax_resnet.cli import in_config_flags
from flax_resnet.training import config as config_lib, sources

ROOT = Path(__file__).resolve().parents[1]


def command(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, "train/train.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
  )


def test_help_lists_every_shipped_preset():
  shipped = sorted(p.stem for p in config_lib.PRESETS.glob("*.py") if p.stem != "__init__")
  done = command("--help")
  assert done.returncode == 0 and "--list-fields" in done.stdout
  assert "imagenet_resnet50_v2" in shipped
  for name in shipped:
    assert name in " ".join(done.stdout.split()), name


def test_list_fields_gives_every_field_with_its_type_default_and_meaning():
  done = command("--list-fields")  # no --config nor --workdir needed, as --help
  assert done.returncode == 0, done.stderr
  lines = done.stdout.splitlines()
  for f in dataclasses.fields(config_lib.Config):
    header = f"{f.name}: {config_lib._type_name(f.type)} = {f.default!r}"
    assert header in lines, header
    below = itertools.takewhile(
      lambda line: line.startswith("    "), lines[lines.index(header) + 1 :]
    )
    assert " ".join(f.metadata["doc"].split()) in " ".join(" ".join(below).split()), f.name
  assert "eval_crop: int = 0" in lines and "remat: str = 'none'" in lines


def test_every_field_says_what_it_means():
  for f in dataclasses.fields(config_lib.Config):
    assert len(f.metadata["doc"]) > 10, f.name


@pytest.mark.parametrize(
  "sets, library, flags",
  [
    (
      ["eval_resize=32", "eval_crop=64"],
      "config eval_crop=64 is larger than eval_resize=32",
      "--set eval_crop=64 is larger than --set eval_resize=32",
    ),
    (
      ["eval_resize=200"],  # image_size 224, crop 0: eval would crop 224 of 200
      "config image_size=224 is larger than eval_resize=200, and eval_crop=0",
      "--set image_size=224 is larger than --set eval_resize=200, and --set eval_crop=0",
    ),
  ],
  ids=["crop above resize", "image_size above resize"],
)
def test_an_eval_crop_larger_than_the_resize_is_refused_naming_both_fields(sets, library, flags):
  with pytest.raises(ValueError) as refused:
    config_lib.override(config_lib.Config(), sets)
  assert str(refused.value).startswith(library), refused.value
  assert str(in_config_flags(refused.value)).startswith(flags)


def test_the_command_refuses_an_eval_crop_larger_than_the_resize_in_one_line(tmp_path):
  done = command(
    *("--config", "cifar10_tiny", "--workdir", str(tmp_path / "w")),
    *("--set", "eval_resize=32", "--set", "eval_crop=64", "--set", "synthetic=true"),
  )
  assert done.returncode == 2 and done.stderr.startswith(
    "error: --set eval_crop=64 is larger than --set eval_resize=32"
  ), done.stderr
  assert done.stderr.count("\n") == 1 and not (tmp_path / "w").exists()


def test_an_eval_crop_within_the_resize_is_accepted():
  cfg = config_lib.override(config_lib.Config(), ["eval_resize=64", "eval_crop=64"])
  assert cfg.eval_crop == 64
  for name in config_lib.preset_names():
    config_lib.validate(config_lib.load_preset(name))


def test_a_missing_eval_split_names_the_field_and_what_data_dir_holds(tmp_path):
  (tmp_path / "train" / "cat").mkdir(parents=True)
  (tmp_path / "test").mkdir()
  with pytest.raises(ValueError) as missing:
    sources.open_split(str(tmp_path), "val", "eval_split")
  assert str(missing.value) == (
    f"config eval_split='val': data folder {tmp_path}/val does not exist; "
    "data_dir holds test, train"
  )
  assert str(in_config_flags(missing.value)).startswith("--set eval_split=val: data folder")
  with pytest.raises(ValueError, match=r"^config data_dir='/nonexistent' does not exist$"):
    sources.open_split("/nonexistent", "train")


def test_an_empty_data_dir_names_the_fields_and_the_command_its_flags():
  with pytest.raises(ValueError) as empty:
    sources.open_split("", "train")
  assert str(empty.value) == (
    "config data_dir='' is empty: give it the folder holding the train and eval splits, "
    "or pass synthetic=True for random images"
  )
  assert str(in_config_flags(empty.value)) == (
    "--set data_dir= is empty: give it the folder holding the train and eval splits, "
    "or pass --set synthetic=true for random images"
  )


def test_the_pipeline_s_section_is_the_fields_config_marks_data_with_their_types():
  # Declared once, in Config: a field marked data (or unmarked) changes the section with it.
  marked = [f for f in dataclasses.fields(config_lib.Config) if f.metadata["data"]]
  section = dataclasses.fields(config_lib.DataConfig)
  assert [(f.name, f.type) for f in section] == [(f.name, f.type) for f in marked]
  assert {"data_dir", "num_classes", "global_batch", "seed"} <= {f.name for f in section}
  data = config_lib.Config(data_dir="/d", image_size=32).data
  assert pickle.loads(pickle.dumps(data)) == data  # grain's worker processes get copies
  with pytest.raises(dataclasses.FrozenInstanceError):
    data.image_size = 64
