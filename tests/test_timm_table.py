"""timm's pretrained tags as data (``flax_resnet.timm_weights``): the table against timm's own
``get_pretrained_cfg`` and ``list_pretrained`` and its results csv, so it cannot drift; timm's
names in ``create_model`` (``ARCH.TAG``, the default tag, ``hf-hub:``); ``list_models`` and
``list_pretrained`` with patterns, without torch or timm.

The hub's loader is another module's (``flax_resnet.timm_hub``): a double stands in for it
here, to show which repository, architecture and options reach it.
"""

import csv
import fnmatch
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
import timm
import timm.models
import timm_table
from flax import nnx

import flax_resnet
from flax_resnet import pretrained, timm_weights
from flax_resnet.registry import ALL_ARCHITECTURES

ROOT = Path(__file__).resolve().parents[1]
ARCHS = set(timm.list_models(module="resnet")) | set(timm.list_models(module="resnest"))
TIMMS_TAGS = [n for n in timm.list_pretrained() if n.split(".")[0] in ARCHS]
FIELDS = [f for f in timm_weights.TimmWeights._fields if f not in ("arch", "tag", "results")]


def test_the_table_lists_every_pretrained_tag_of_timms_resnet_and_resnest_in_timms_order():
  assert len(TIMMS_TAGS) == 158  # timm 1.0.31; the count
  assert flax_resnet.list_pretrained() == TIMMS_TAGS  # timm's natural order
  assert TIMMS_TAGS == timm.list_models(module=["resnet", "resnest"], pretrained=True)
  for arch in {e.arch for e in timm_weights.TABLE}:
    ours = [e.tag for e in timm_weights.TABLE if e.arch == arch]
    theirs = [timm.models.get_pretrained_cfg(n).tag for n in TIMMS_TAGS if n.split(".")[0] == arch]
    assert ours[0] == timm.models.get_pretrained_cfg(arch).tag, arch  # timm's default tag
    assert sorted(ours) == sorted(theirs), arch


@pytest.mark.parametrize("name", TIMMS_TAGS)
def test_each_entry_is_timms_pretrained_cfg(name):
  cfg, entry = timm.models.get_pretrained_cfg(name), flax_resnet.get_pretrained_cfg(name)
  assert (entry.arch, entry.tag) == (cfg.architecture, cfg.tag)
  theirs = {f: getattr(cfg, f) for f in FIELDS}
  theirs["input_size"] = tuple(cfg.input_size)
  theirs["test_input_size"] = cfg.test_input_size and tuple(cfg.test_input_size)
  assert {f: getattr(entry, f) for f in FIELDS} == theirs
  assert entry.hf_hub_id == cfg.hf_hub_id
  assert entry.is_default == (timm.models.get_pretrained_cfg(entry.arch).tag == entry.tag)


def timms_results() -> dict[str, set[tuple]]:
  """The results csv's rows, read here apart from the generator: {name: {(size, top1,
  top5, crop_pct)}}."""
  found: dict[str, set[tuple]] = {}
  with open(timm_table.RESULTS_FILE, newline="") as file:
    for row in csv.DictReader(file):
      values = (row["img_size"], row["top1"], row["top5"], row["crop_pct"])
      found.setdefault(row["model"], set()).add((int(values[0]), *map(float, values[1:])))
  return found


def test_each_entry_has_the_published_results_of_timms_table_best_first():
  published = timms_results()
  assert set(published) <= set(TIMMS_TAGS)  # no row of a tag the table lacks
  for entry in timm_weights.TABLE:
    assert set(entry.results) == published.get(entry.name, set()), entry.name
    assert [r.top1 for r in entry.results] == sorted((r.top1 for r in entry.results), reverse=True)
  best = flax_resnet.get_pretrained_cfg("seresnextaa201d_32x8d.sw_in12k_ft_in1k_384").best
  assert best == (384, 87.304, 98.334, 1.0)  # the 87.30% top-1
  assert flax_resnet.get_pretrained_cfg("resnet50.bamboo").best is None  # no row for it


def test_the_generator_writes_the_committed_table():
  block = timm_table.table_block(timm_table.read_results(timm_table.RESULTS_FILE))
  committed = timm_table.TABLE_FILE.read_text()
  assert timm_table.with_table(committed, block) == committed, (
    "flax_resnet/timm_weights.py differs from what timm gives: python tests/timm_table.py "
    "tests/data/timm-results-imagenet.csv"
  )


PATTERNS = ["resnet50d*", "resnet50", "seresnext*", "*_in12k", "resnet50.a1*", "*aa*.sw_*", "x*"]


@pytest.mark.parametrize("pattern", PATTERNS)
def test_list_pretrained_matches_as_timms(pattern):
  theirs = [n for n in timm.list_pretrained(pattern) if n.split(".")[0] in ARCHS]
  assert flax_resnet.list_pretrained(pattern) == theirs


@pytest.mark.parametrize("pattern", ["seresnext*", "resnet5*", "*_32x4d", "ecaresnet*", "*t"])
def test_list_models_matches_as_timms_over_the_architectures_built_here(pattern):
  theirs = [n for n in timm.list_models(pattern) if n in ALL_ARCHITECTURES]
  assert flax_resnet.list_models(pattern) == theirs


def test_list_models_keeps_its_sources_beside_patterns():
  assert flax_resnet.list_models() == list(flax_resnet.ARCHITECTURES)
  assert flax_resnet.list_models("timm") == flax_resnet.list_models(source="timm")
  assert flax_resnet.list_models("timm") == list(ALL_ARCHITECTURES)
  assert flax_resnet.list_models("wide*", source="torchvision") == [
    "wide_resnet50_2",
    "wide_resnet101_2",
  ]
  assert flax_resnet.list_models("resnet50d", source="torchvision") == []
  assert flax_resnet.list_models("nothing*") == []
  assert flax_resnet.list_models("") == flax_resnet.list_models("*")  # timm's "": everything
  assert len(flax_resnet.list_models("")) == len(ALL_ARCHITECTURES)
  with pytest.raises(ValueError, match=r"or pattern an architecture name .*; got 'keras'$"):
    flax_resnet.list_models("keras")


@pytest.fixture
def hub(monkeypatch):
  """A double of ``flax_resnet.timm_hub``: records each load, returns a marker model."""
  calls = []
  double = types.ModuleType("flax_resnet.timm_hub")

  def load_pretrained_timm(repo_id, arch, **options):
    calls.append((repo_id, arch, options))
    return "model from the hub", {}

  double.load_pretrained_timm = load_pretrained_timm
  monkeypatch.setitem(sys.modules, "flax_resnet.timm_hub", double)
  return calls


@pytest.fixture
def torchvision_loads(monkeypatch):
  """Records torchvision's loads (``pretrained.load_pretrained``)."""
  calls = []

  def load_pretrained(arch, weights="DEFAULT", **options):
    calls.append((arch, weights, options))
    return "torchvision's model", None

  monkeypatch.setattr(pretrained, "load_pretrained", load_pretrained)
  return calls


LOADS = [
  ("resnet50d.ra4_e3600_r224_in1k", "timm/resnet50d.ra4_e3600_r224_in1k", "resnet50d"),
  ("resnet50d", "timm/resnet50d.ra2_in1k", "resnet50d"),  # timm's default tag
  ("resnet50.a1_in1k", "timm/resnet50.a1_in1k", "resnet50"),  # a timm tag of torchvision's arch
  ("hf-hub:timm/resnet50d.ra4_e3600_r224_in1k", "timm/resnet50d.ra4_e3600_r224_in1k", "resnet50d"),
  (
    "hf_hub:timm/seresnext26d_32x4d.bt_in1k",
    "timm/seresnext26d_32x4d.bt_in1k",
    "seresnext26d_32x4d",
  ),
  ("hf-hub:someone/resnet50d-finetuned", "someone/resnet50d-finetuned", None),  # its config.json
]


@pytest.mark.parametrize("name, repo_id, arch", LOADS, ids=[n for n, _, _ in LOADS])
def test_a_timm_name_with_pretrained_loads_its_hub_repository(
  hub, torchvision_loads, name, repo_id, arch
):
  model = flax_resnet.create_model(name, pretrained=True, num_classes=10, dtype="bfloat16")
  assert model == "model from the hub"
  assert hub == [(repo_id, arch, {"num_classes": 10, "dtype": "bfloat16"})]
  assert torchvision_loads == []


def test_torchvisions_names_keep_torchvisions_weights_and_their_timm_tags_reach_timms(
  hub, torchvision_loads
):
  assert flax_resnet.create_model("resnet50", pretrained=True) == "torchvision's model"
  assert flax_resnet.ResNet50(pretrained=True, num_classes=3) == "torchvision's model"
  flax_resnet.create_model("wide_resnet50_2", weights="IMAGENET1K_V1")
  assert torchvision_loads == [
    ("resnet50", "DEFAULT", {}),
    ("resnet50", "DEFAULT", {"num_classes": 3}),
    ("wide_resnet50_2", "IMAGENET1K_V1", {}),
  ]
  assert hub == []
  flax_resnet.create_model("resnet50.tv2_in1k", pretrained=True)  # timm's copy of V2
  assert hub == [("timm/resnet50.tv2_in1k", "resnet50", {})] and len(torchvision_loads) == 3


BAD_NAMES = [
  (
    "resnet50d.nope",
    "'resnet50d.nope': resnet50d has no pretrained tag 'nope'; its tags: ra2_in1k, "
    "ra4_e3600_r224_in1k, a1_in1k, a2_in1k, a3_in1k, gluon_in1k",
  ),
  ("resnet200", "'resnet200' has no pretrained weights in timm's ResNet family"),
  ("resnet5", "unknown architecture 'resnet5'; known: resnet18, "),
  ("local-dir:/models/x", "the only source is the Hugging Face hub, hf-hub:OWNER/REPO"),
  ("hf-hub:", "the only source is the Hugging Face hub, hf-hub:OWNER/REPO"),
  ("timm/resnet50.a1_in1k", "reads as a hub repository: write 'hf-hub:timm/resnet50.a1_in1k'"),
]


@pytest.mark.parametrize("name, message", BAD_NAMES, ids=[n for n, _ in BAD_NAMES])
def test_a_bad_timm_name_is_refused_in_one_line_before_loading(hub, name, message):
  with pytest.raises(ValueError) as error:
    flax_resnet.create_model(name, pretrained=True)
  assert message in str(error.value) and "\n" not in str(error.value)
  assert hub == []


def test_an_unknown_tag_is_refused_without_pretrained_too(hub):
  with pytest.raises(ValueError, match="resnet50d has no pretrained tag 'nope'; its tags: "):
    flax_resnet.create_model("resnet50d.nope")


def test_a_timm_name_and_torchvisions_weights_are_refused_together(hub, torchvision_loads):
  with pytest.raises(ValueError, match="weights= names torchvision's weights, and "):
    flax_resnet.create_model("resnet50.tv2_in1k", weights="IMAGENET1K_V2")
  assert hub == torchvision_loads == []


def test_a_tagged_name_without_pretrained_builds_randomly_with_the_tags_classes(hub):
  model = nnx.eval_shape(lambda: flax_resnet.create_model("resnet50.bamboo"))
  assert model.num_classes == 0 and not hasattr(model, "fc")  # the tag is headless
  model = nnx.eval_shape(lambda: flax_resnet.create_model("resnet10t.c3_in1k"))
  assert model.fc.kernel.shape == (512, 1000)
  model = nnx.eval_shape(lambda: flax_resnet.create_model("resnet50.bamboo", num_classes=7))
  assert model.fc.kernel.shape == (2048, 7)
  assert hub == []


def test_an_unknown_hub_repository_needs_pretrained_to_be_built(hub):
  with pytest.raises(ValueError, match="read from its config.json when loading: pass pretrained"):
    flax_resnet.create_model("hf-hub:someone/resnet50d-finetuned")


# torch, torchvision and timm unimportable: any import of them raises.
BLOCK = """
import sys
class Blocked:
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in ("torch", "torchvision", "timm"):
      raise ImportError(f"{name} is blocked")
sys.meta_path.insert(0, Blocked())
"""

NO_TORCH = """
import flax_resnet
assert flax_resnet.list_pretrained("resnet50d*") == [
  "resnet50d.a1_in1k", "resnet50d.a2_in1k", "resnet50d.a3_in1k", "resnet50d.gluon_in1k",
  "resnet50d.ra2_in1k", "resnet50d.ra4_e3600_r224_in1k"]
entry = flax_resnet.get_pretrained_cfg("resnet50d.ra4_e3600_r224_in1k")
assert (entry.test_input_size, entry.crop_pct, entry.mean) == ((3, 288, 288), 0.95, (0.5,) * 3)
assert entry.best == (288, 81.84, 95.926, 1.0) and not entry.is_default
assert flax_resnet.get_pretrained_cfg("resnet50d").tag == "ra2_in1k"
assert flax_resnet.list_models("seresnext2*") == ["seresnext26d_32x4d", "seresnext26t_32x4d"]
try:
  flax_resnet.create_model("resnet50d.nope", pretrained=True)
except ValueError as error:
  assert "resnet50d has no pretrained tag 'nope'" in str(error), error
import torch
"""


def test_listing_and_reading_timms_tags_needs_neither_torch_nor_timm():
  done = subprocess.run(
    [sys.executable, "-c", BLOCK + NO_TORCH],
    cwd=ROOT,
    env={**os.environ, "JAX_PLATFORMS": "cpu"},
    capture_output=True,
    text=True,
  )
  # All passed up to the last line, whose import of torch the blocker refused.
  assert done.returncode == 1 and done.stderr.endswith("ImportError: torch is blocked\n"), (
    done.stderr[-3000:]
  )


def readme_families(page: str) -> list[tuple[list[str], str]]:
  """(patterns, best top-1 cell) of each row of the page's table of timm's families."""
  readme = (ROOT / page).read_text()
  section = readme.split("| family | architectures | best published top-1 |\n", 1)[1]
  rows = []
  for line in section.splitlines()[1:]:
    if not line.startswith("|"):
      break
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    rows.append((re.findall(r"`([^`]+)`", cells[1]), cells[2]))
  return rows


def best_cell(archs: set[str]) -> str:
  """The best published top-1 among the tags of ``archs``, as the families tables' cell says it."""
  entries = [e for e in timm_weights.TABLE if e.arch in archs and e.best]
  top = max(entries, key=lambda e: e.best.top1)
  return f"{top.best.top1:.2f}% (`{top.name}`, {top.best.img_size}×{top.best.img_size})"


@pytest.mark.parametrize("page", ["README.md", "docs/guides/timm.md"])
def test_the_families_tables_partition_timms_architectures_and_give_their_best_top1(page):
  rows = readme_families(page)
  assert len(rows) == 10
  family_of: dict[str, int] = {}
  for index, (patterns, cell) in enumerate(rows):
    archs = {a for p in patterns for a in fnmatch.filter(ARCHS, p)}
    assert not archs & set(family_of), f"{page} families: {patterns} overlap another row"
    family_of.update(dict.fromkeys(archs, index))
    assert cell == best_cell(archs), f"{page} families, {patterns}: should read {best_cell(archs)}"
  assert set(family_of) == ARCHS, f"in no {page} family: {sorted(ARCHS - set(family_of))}"
