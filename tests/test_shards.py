"""train/shards.py: ImageFolder splits as ArrayRecord shards, read back as the folder reads."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from flax_resnet.bench.datasets import unpack_cifar
from flax_resnet.bench.pipeline import imagenet_folder
from flax_resnet.preprocess import open_image
from flax_resnet.training import shard_format, shards, sources

ROOT = Path(__file__).resolve().parents[1]


def convert(folder, out, *args):
  return subprocess.run(
    [sys.executable, "train/shards.py", "--folder", str(folder), "--out", str(out), *args],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
  )


@pytest.fixture(scope="module")
def imagenet(data_dir, tmp_path_factory):
  """The 102 ImageNet samples as an ImageFolder split (train), one class per synset."""
  return imagenet_folder(data_dir, tmp_path_factory.mktemp("imagenet"))


@pytest.fixture(scope="module")
def cifar(data_dir, tmp_path_factory):
  """The first 30 train and 10 test JPEGs of each CIFAR-10 class, in their folders (the
  tarball's first 300 are all birds: one class, which the trainer refuses for 10)."""
  return unpack_cifar(data_dir, tmp_path_factory.mktemp("cifar"), {"train": 30, "test": 10})


@pytest.mark.parametrize("which, splits", [("imagenet", "train"), ("cifar", "train,test")])
def test_records_hold_the_folders_files_byte_for_byte_in_their_order(
  request, tmp_path, which, splits
):
  folder = request.getfixturevalue(which)
  done = convert(folder, tmp_path / "shards", "--splits", splits, "--records-per-shard", "37")
  assert done.returncode == 0, done.stderr
  assert "ETA" in done.stdout
  for split in splits.split(","):
    source = sources.ImageFolder.scan(folder / split)
    read = sources.open_split(str(tmp_path / "shards"), split)
    assert isinstance(read, sources.Shards) and len(read) == len(source) > 0
    assert read.classes == source.classes
    assert len(read.shards) == -(-len(source) // 37)
    for i in range(len(source)):
      label, name, raw = shard_format.decode(read.source[i])
      assert raw == Path(source.files[i]).read_bytes() and label == source.labels[i]
      assert source.files[i].endswith(name)
    image, label = read.read(len(source) - 1)
    assert np.array_equal(np.asarray(image), np.asarray(open_image(source.files[-1])))


def test_an_interrupted_conversion_resumes_and_writes_the_same_shards(cifar, tmp_path):
  out = tmp_path / "shards"
  assert convert(cifar, out, "--splits", "train", "--records-per-shard", "64").returncode == 0
  first = {p.name: p.read_bytes() for p in (out / "train").iterdir()}
  (out / "train" / "index.json").unlink()  # as if stopped before the last shard
  (out / "train" / "train-00004-of-00005.array_record").unlink()
  (out / "train" / ".train-00004-of-00005.array_record.tmp").write_bytes(b"half")
  with pytest.raises(ValueError, match="did not finish"):
    sources.open_split(str(out), "train")
  again = convert(cifar, out, "--splits", "train", "--records-per-shard", "64")
  assert again.returncode == 0 and "(1 shards written now)" in again.stdout, again.stdout
  assert {
    p.name: p.read_bytes() for p in (out / "train").iterdir() if not p.name.endswith(".tmp")
  } == first


@pytest.mark.parametrize(
  "change, message",
  [
    (["--records-per-shard", "50"], "shards of another layout"),
    (["--splits", "test"], None),
  ],
  ids=["other shard size", "another split beside"],
)
def test_a_conversion_into_used_shards_keeps_them_consistent(cifar, tmp_path, change, message):
  out = tmp_path / "shards"
  assert convert(cifar, out, "--splits", "train", "--records-per-shard", "64").returncode == 0
  done = (
    convert(cifar, out, "--splits", "train", *change) if message else convert(cifar, out, *change)
  )
  if message:
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
  else:
    assert done.returncode == 0 and json.loads((out / "test" / "index.json").read_text())


def test_other_classes_in_the_same_out_are_refused(cifar, tmp_path):
  out = tmp_path / "shards"
  assert convert(cifar, out, "--splits", "train").returncode == 0
  (out / "classes.json").write_text('["cat", "dog"]\n')
  done = convert(cifar, out, "--splits", "train")
  assert done.returncode == 2 and "lists other classes" in done.stderr
  assert "): convert into an empty --out" in done.stderr, done.stderr
  with pytest.raises(ValueError, match=r"\(1\): convert into an empty out$"):  # the parameter
    shards.write_classes(out, ("airplane",))


def test_a_record_that_is_not_ours_is_a_clear_error():
  with pytest.raises(ValueError, match="not written by flax-resnet-shards"):
    shard_format.decode(b"\x00" * 64)


def tiny_train(workdir, data, *sets):
  """train/train.py with the tiny preset on ``data``'s shards (train and test splits)."""
  args = [
    sys.executable,
    "train/train.py",
    "--config",
    "cifar10_tiny",
    "--workdir",
    str(workdir),
    "--set",
    f"data_dir={data}",
    "--set",
    "global_batch=32",
  ]
  for s in sets:
    args += ["--set", s]
  return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)


def garble(path: Path, offset: int, length: int = 64) -> None:
  raw = bytearray(path.read_bytes())
  raw[offset : offset + length] = bytes(b ^ 0x5A for b in raw[offset : offset + length])
  path.write_bytes(bytes(raw))


def unreadable(split: sources.Shards) -> list[int]:
  bad = []
  for i in range(len(split)):
    try:
      split.read(i)
    except ValueError as e:
      assert f"record {i} of" in str(e) and "hash mismatch" in str(e), e
      bad.append(i)
  return bad


def test_a_garbled_record_is_skipped_counted_and_logged_once_like_a_bad_image(cifar, tmp_path):
  out = tmp_path / "shards"
  assert convert(cifar, out, "--splits", "train,test", "--records-per-shard", "64").returncode == 0
  garble(out / "train" / "train-00001-of-00005.array_record", 20_000)
  bad = unreadable(sources.open_split(str(out), "train"))
  assert 1 <= len(bad) <= 3, bad  # the chunks the garbled bytes fall in, nothing else
  done = tiny_train(tmp_path / "w", out, "epochs=2", "max_steps=18", "log_every=9")
  assert done.returncode == 0, done.stderr[-3000:]
  summary = json.loads((tmp_path / "w" / "summary.json").read_text())
  assert summary["skipped_images"] == 2 * len(bad) and summary["step"] == 18  # every visit
  logged = [line for line in done.stderr.splitlines() if "hash mismatch" in line]
  assert len(logged) == len(bad) and "Traceback" not in done.stderr, done.stderr[-3000:]
  assert all(f"record {i} of" in "".join(logged) for i in bad)


@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_a_truncated_or_missing_shard_is_one_line_naming_it_at_start(cifar, tmp_path, damage):
  out = tmp_path / "shards"
  assert convert(cifar, out, "--splits", "train,test", "--records-per-shard", "64").returncode == 0
  shard = out / "train" / "train-00002-of-00005.array_record"
  if damage == "missing":
    shard.unlink()
  else:
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
  done = tiny_train(tmp_path / "w", out, "max_steps=2")
  assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
  assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: shard ")
  assert f"{shard} is {damage}" in done.stderr and "flax-resnet-shards again" in done.stderr
  assert not (tmp_path / "w" / "checkpoints").exists()


@pytest.mark.parametrize("damage", ["truncated", "garbled", "missing"])
def test_a_second_conversion_rewrites_a_damaged_shard(cifar, tmp_path, damage):
  out = tmp_path / "shards"
  assert convert(cifar, out, "--splits", "train", "--records-per-shard", "64").returncode == 0
  first = {p.name: p.read_bytes() for p in (out / "train").iterdir()}
  shard = out / "train" / "train-00001-of-00005.array_record"
  if damage == "truncated":
    shard.write_bytes(shard.read_bytes()[:5000])
  elif damage == "garbled":
    garble(shard, 20_000)
  else:
    shard.unlink()
  again = convert(cifar, out, "--splits", "train", "--records-per-shard", "64")
  assert again.returncode == 0, again.stderr
  assert "(1 shards written now)" in again.stdout and "Traceback" not in again.stderr
  if damage != "missing":
    assert f"{shard}: truncated or damaged" in again.stdout and "rewriting it" in again.stdout
  assert {p.name: p.read_bytes() for p in (out / "train").iterdir()} == first
  assert unreadable(sources.open_split(str(out), "train")) == []


@pytest.fixture(scope="module")
def five_classes(tmp_path_factory):
  """Shards of 5 classes of 40 tiny PNGs each (200 records, 64 a shard)."""
  from PIL import Image

  root = tmp_path_factory.mktemp("five")
  for c in range(5):
    (root / "folder" / "train" / f"class{c}").mkdir(parents=True)
    for i in range(40):
      image = Image.new("RGB", (4, 4), (c, i, 0))
      image.save(root / "folder" / "train" / f"class{c}" / f"{i}.png")
  shards.convert(str(root / "folder"), str(root / "shards"), ["train"], 64, log=lambda _: None)
  return root / "shards"


class CountingReads:
  """A shards' record source that counts the records read."""

  def __init__(self, source):
    self.source, self.reads = source, 0

  def __getitem__(self, i):
    self.reads += 1
    return self.source[i]

  def __len__(self):
    return len(self.source)


def test_classes_json_is_checked_against_every_label_reading_few_records(five_classes, tmp_path):
  split = sources.Shards(str(five_classes / "train"))
  split.source = CountingReads(split.source)
  assert split.verified_classes() == tuple(f"class{c}" for c in range(5))
  assert split.source.reads < 60  # of 200: the first and last record of each label
  edited = tmp_path / "edited"
  (edited / "train").mkdir(parents=True)
  for f in (five_classes / "train").iterdir():  # copies: shards are not symbolic links
    shutil.copy(f, edited / "train" / f.name)
  names = [f"class{c}" for c in range(5)]
  for classes, message in [
    (names[:2] + ["cat"] + names[3:], "names label 2 'cat', but record"),
    (names[:4], "lists 4 classes, no label 4"),
    (names + ["class5"], "lists 6 classes, but the records of"),
  ]:
    (edited / "classes.json").write_text(json.dumps(classes))
    with pytest.raises(ValueError, match=message):
      sources.Shards(str(edited / "train")).verified_classes()


@pytest.fixture(scope="module")
def converted(cifar, tmp_path_factory) -> Path:
  """The cifar fixture's train and test splits as shards of 64 records."""
  out = tmp_path_factory.mktemp("converted") / "shards"
  shards.convert(str(cifar), str(out), ["train", "test"], 64, log=lambda line: None)
  return out


def damaged_copy(converted: Path, tmp_path: Path, damage: str) -> tuple[Path, str]:
  """A copy of ``converted`` whose train split's index.json (or classes.json) is ``damage``d;
  (the damaged file, what its one-line error says)."""
  out = tmp_path / "shards"
  shutil.copytree(converted, out)
  index = out / "train" / "index.json"
  content = json.loads(index.read_text())
  first = out / "train" / content["shards"][0]
  outside = tmp_path / "outside.array_record"  # a sound shard, read as any other if followed
  shutil.copy(first, outside)
  entry = {
    "parent": "../../outside.array_record",
    "absolute": str(outside),
    "symlink": "linked.array_record",
    "folder": "folder.array_record",
  }.get(damage)
  if damage == "symlink":
    (out / "train" / entry).symlink_to(outside)
  if damage == "folder":
    (out / "train" / entry).mkdir()
  if entry:
    content["shards"][0] = entry
    index.write_text(json.dumps(content))
    problem = "is a symbolic link" if damage == "symlink" else "is a folder"
    if damage in ("parent", "absolute"):
      problem = f"is not a file name in {out / 'train'}"
    return index, f"{index} names shard {entry!r}, which {problem}"
  return DAMAGE[damage](out, content)


def _write(path: Path, raw: bytes | str, says: str) -> tuple[Path, str]:
  if isinstance(raw, str):
    raw = raw.encode()
  path.write_bytes(raw)
  return path, f"{path}{says}"


# Each damage: (damaged file, what its one-line error says), given the copy and its index.
DAMAGE = {
  "random bytes": lambda out, content: _write(
    out / "train" / "index.json", bytes(range(255, -1, -1)), " is not UTF-8 text (byte 0 of 256)"
  ),
  "not JSON": lambda out, content: _write(
    out / "train" / "index.json", '{"shards": [', " is not valid JSON (Expecting value, line 1"
  ),
  "a list": lambda out, content: _write(
    out / "train" / "index.json", json.dumps(content["shards"]), " holds a JSON array, not the"
  ),
  "no shards": lambda out, content: _write(
    out / "train" / "index.json", '{"records": 250}', ': its "shards" is missing'
  ),
  "shards a string": lambda out, content: _write(
    out / "train" / "index.json",
    json.dumps({**content, "shards": "train.array_record"}),
    ': its "shards" is "train.array_record", not a list of file names',
  ),
  "records a string": lambda out, content: _write(
    out / "train" / "index.json",
    json.dumps({**content, "records": "300"}),
    ': its "records" is "300", not a count',
  ),
  "classes random bytes": lambda out, content: _write(
    out / "classes.json", b"\xff\xfe\x00garbage", " is not UTF-8 text (byte 0 of 10)"
  ),
  "classes an object": lambda out, content: _write(
    out / "classes.json", '{"0": "airplane"}', ' holds {"0": "airplane"}, not a JSON list of'
  ),
}
SHARD_ENTRIES = ["parent", "absolute", "symlink", "folder"]


@pytest.mark.parametrize("damage", SHARD_ENTRIES + list(DAMAGE))
def test_a_damaged_shard_index_or_classes_file_is_refused_naming_it(converted, tmp_path, damage):
  damaged, says = damaged_copy(converted, tmp_path, damage)
  with pytest.raises(ValueError) as raised:
    sources.open_split(str(tmp_path / "shards"), "train")
  message = str(raised.value)
  assert message.startswith(says) and "flax-resnet-shards" in message and "\n" not in message


@pytest.mark.parametrize("damage", ["parent", "symlink", "random bytes", "a list"])
def test_a_damaged_shard_index_is_one_line_and_exit_2_from_the_trainer(converted, tmp_path, damage):
  damaged, says = damaged_copy(converted, tmp_path, damage)
  done = tiny_train(tmp_path / "w", tmp_path / "shards", "max_steps=2")
  assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
  assert done.stderr.count("\n") == 1 and done.stderr.startswith(f"error: {says}")
  assert not (tmp_path / "w" / "checkpoints").exists()


def test_a_damaged_classes_file_is_one_line_and_exit_2_from_the_converter(
  converted, cifar, tmp_path
):
  damaged, says = damaged_copy(converted, tmp_path, "classes random bytes")
  done = convert(cifar, tmp_path / "shards", "--splits", "train")
  assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
  assert done.stderr.count("\n") == 1 and done.stderr.startswith(f"error: {says}")
