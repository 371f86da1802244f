"""The package's import graph (read with ast): no cycle, and every import points down the layers."""

from pathlib import Path

import pytest
from import_graph import cycles, graph, layer_of, modules, upward

# Lowest first: a module may import only from its own layer and those below it. A name covers
# the module of that name and, for a package, everything inside it (the longest name wins;
# `flax_resnet` itself is only `flax_resnet/__init__.py`). Names of modules that do not exist
# (yet, or any more) are harmless.
LAYERS = [
  (
    "base",
    (
      "flax_resnet.choices",
      "flax_resnet.errors",
      "flax_resnet.files",
      "flax_resnet.caches",
      "flax_resnet.cpu",
      "flax_resnet.versions",
      "flax_resnet.torchvision_weights",
      "flax_resnet.timm_weights",
      "flax_resnet.pruned",
      "flax_resnet.preprocess",
      "flax_resnet.flops",
    ),
  ),
  ("model", ("flax_resnet.model",)),
  ("folding", ("flax_resnet.folding",)),
  ("registry", ("flax_resnet.registry",)),  # pure: no weights, no download
  ("saved model", ("flax_resnet.saved_model",)),
  ("conversion", ("flax_resnet.port",)),
  ("deploy", ("flax_resnet.deploy",)),  # ONNX and StableHLO, verified; predict's ONNX Runtime
  ("weights cache", ("flax_resnet.pretrained", "flax_resnet.timm_hub")),
  ("constructors, predict", ("flax_resnet.builders", "flax_resnet.predict")),
  ("package", ("flax_resnet",)),
  # training: each part of a run built from the config in a module of its own, below the
  # trainer that wires them (README's Layout, training/).
  ("training config", ("flax_resnet.training.config", "flax_resnet.training.presets")),
  (
    "training records",
    (
      "flax_resnet.training.metrics",
      "flax_resnet.training.plot",
      "flax_resnet.training.checkpoints",
      "flax_resnet.training.step_cache",
      "flax_resnet.training.memory",
    ),
  ),
  (
    "training input",
    (
      "flax_resnet.training.augment",
      "flax_resnet.training.augmix",
      "flax_resnet.training.shm",
      "flax_resnet.training.shard_format",
      "flax_resnet.training.sources",
      "flax_resnet.training.shards",
      "flax_resnet.training.data",
    ),
  ),
  ("training model", ("flax_resnet.training.models",)),
  (
    "training optimiser and batch",
    ("flax_resnet.training.optimiser", "flax_resnet.training.batch"),
  ),
  ("training steps", ("flax_resnet.training.steps",)),
  ("training workdir and export", ("flax_resnet.training.workdir", "flax_resnet.training.export")),
  ("training run", ("flax_resnet.training.trainer",)),
  ("training", ("flax_resnet.training",)),  # the package's __init__ only (a test below)
  # The command-line helpers: for bench and commands only, never the library or training.
  ("cli", ("flax_resnet.cli",)),
  ("bench", ("flax_resnet.bench",)),
  ("commands", ("flax_resnet.commands",)),
]


def test_the_package_has_no_import_cycle():
  found = cycles(graph())
  assert found == [], "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_no_module_imports_from_a_higher_layer():
  found = upward(graph(), LAYERS)
  assert found == [], "imports up the layers (tests/test_imports.py, LAYERS):\n" + "\n".join(found)


def test_every_module_has_a_layer():
  missing = [name for name in modules() if layer_of(name, LAYERS) is None]
  assert missing == [], f"not in tests/test_imports.py's LAYERS: {missing}"


def test_every_module_of_training_has_a_layer_of_its_own():
  # A new module would otherwise fall to the package's layer, above every part it may import.
  package = next(i for i, (name, _) in enumerate(LAYERS) if name == "training")
  missing = [
    name
    for name in modules()
    if name.startswith("flax_resnet.training.") and layer_of(name, LAYERS) == package
  ]
  assert missing == [], f"not in a training layer of tests/test_imports.py's LAYERS: {missing}"


def test_a_cycle_and_an_upward_import_are_found():
  layers = [("low", ("p.low",)), ("high", ("p.high",))]
  edges = {"p.low": {"p.high"}, "p.high": {"p.low.inner"}, "p.low.inner": {"p.low"}}
  assert cycles(edges) == [["p.high", "p.low.inner", "p.low", "p.high"]]
  assert upward(edges, layers) == ["p.low (low) -> p.high (high)"]


def test_a_clean_graph_passes():
  layers = [("low", ("p.a",)), ("high", ("p",))]
  assert cycles({"p": {"p.a"}, "p.a": set()}) == []
  assert upward({"p": {"p.a"}, "p.a": set()}, layers) == []


def _package(root: Path, files: dict[str, str]) -> None:
  for name, text in files.items():
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    (root / name).write_text(text)


@pytest.mark.parametrize(
  "source",
  [
    "from . import b",  # relative, a module
    "from .b import thing",  # relative, a name in it
    "from pkg import b",  # absolute, a module
    "import pkg.b as alias",
    "def f():\n  from .b import thing\n",  # inside a function: how a cycle hides
    "class C:\n  def m(self):\n    import pkg.b\n",
  ],
)
def test_every_form_of_import_is_read(tmp_path, source):
  _package(tmp_path, {"pkg/__init__.py": "", "pkg/a.py": source, "pkg/b.py": "from .a import x"})
  edges = graph(tmp_path, "pkg")
  assert edges["pkg.a"] == {"pkg.b"}
  assert cycles(edges) == [["pkg.a", "pkg.b", "pkg.a"]]


def test_relative_imports_resolve_from_a_package_init(tmp_path):
  _package(
    tmp_path,
    {
      "pkg/__init__.py": "",
      "pkg/sub/__init__.py": "from . import c\nfrom .. import top",
      "pkg/sub/c.py": "",
      "pkg/top.py": "",
    },
  )
  assert graph(tmp_path, "pkg")["pkg.sub"] == {"pkg.sub.c", "pkg.top"}
