"""The documentation site (mkdocs.yml, docs/) covers what a user can set: every training config
field, every flag of every installed command (enumerated from pyproject.toml's scripts, so a
command added later is covered), every public name in the API reference; and the site's hooks
(docs/hooks.py) warn, so that the strict build fails, on a name without a docstring."""

import argparse
import dataclasses
import importlib
import importlib.util
import os
import re
import tomllib
from pathlib import Path

import pytest

import flax_resnet
from flax_resnet.training.config import Config

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
COMMANDS_PAGE = DOCS / "commands.md"
FIELDS_PAGE = DOCS / "guides" / "training.md"


def section(text: str, title: str) -> str:
  """The Markdown section headed ``title`` (any level), up to the next heading of its level or
  above; empty when there is none."""
  found = re.search(rf"^(#+) {re.escape(title)}\n", text, re.M)
  if not found:
    return ""
  end = re.compile(rf"^#{{1,{len(found[1])}}} ", re.M).search(text, found.end())
  return text[found.start() : end.start() if end else len(text)]


class _Parsed(Exception):
  """Raised in place of parsing: carries the parser a command's main built."""


def command_flags(target: str, argv: list[str], monkeypatch) -> list[str]:
  """The option strings of the parser that ``target`` (``module:function``, a script entry)
  builds when called with ``argv``; flags hidden from ``--help`` are left out."""

  def capture(self, args=None, namespace=None):
    raise _Parsed(self)

  module, function = target.split(":")
  with monkeypatch.context() as patch:
    patch.setattr(argparse.ArgumentParser, "parse_known_args", capture)
    with pytest.raises(_Parsed) as parsed:
      getattr(importlib.import_module(module), function)(argv)
  actions = parsed.value.args[0]._actions
  return [
    flag
    for action in actions
    if action.help != argparse.SUPPRESS and not isinstance(action, argparse._HelpAction)
    for flag in action.option_strings
  ]


def commands() -> list[tuple[str, str, list[str]]]:
  """(script, the commands page's section title, argv) for each installed command, and for
  each sub-command of a command that dispatches (``flax-resnet-bench NAME``: its
  ``BENCHMARKS``). Scripts of one target (an old name kept working) share its first name's
  section."""
  found, targets = [], {}
  for script, target in SCRIPTS.items():
    if target in targets:
      continue
    targets[target] = script
    subcommands = getattr(importlib.import_module(target.split(":")[0]), "BENCHMARKS", None)
    if subcommands:
      found += [(script, f"{script} {name}", [name]) for name in subcommands]
    else:
      found.append((script, script, []))
  return found


COMMANDS = commands()


@pytest.mark.parametrize("script, title, argv", COMMANDS, ids=[t for _, t, _ in COMMANDS])
def test_every_flag_of_every_command_is_in_its_section_of_the_commands_page(
  script, title, argv, monkeypatch
):
  flags = command_flags(SCRIPTS[script], argv, monkeypatch)
  text = section(COMMANDS_PAGE.read_text(), title)
  assert text, f"docs/commands.md has no section '{title}'"
  missing = [flag for flag in flags if f"`{flag}`" not in text]
  assert missing == [], f"docs/commands.md, '{title}' does not name {missing}"


def test_every_installed_command_is_named_on_the_commands_page():
  text = COMMANDS_PAGE.read_text()
  assert [s for s in SCRIPTS if f"`{s}`" not in text and f"## {s}" not in text] == []


def test_every_config_field_has_its_row_with_its_default_in_the_training_guide():
  table = section(FIELDS_PAGE.read_text(), "Every config field")
  rows = dict(re.findall(r"^\| `(\w+)` \| [^|]+ \| `([^`]*)` \|", table, re.M))
  fields = {f.name: repr(f.default) for f in dataclasses.fields(Config)}
  assert sorted(set(fields) - set(rows)) == [], "fields without a row"
  assert sorted(set(rows) - set(fields)) == [], "rows of no field"
  assert {name: rows[name] for name in fields} == fields, "defaults as Config has them"


def test_the_section_reader_stops_at_the_next_heading_of_its_level():
  text = "# A\n\nx\n## B\n\ny\n### C\n\nz\n## D\n\nw\n"
  assert section(text, "B") == "## B\n\ny\n### C\n\nz\n"
  assert section(text, "C") == "### C\n\nz\n"
  assert section(text, "E") == ""


def reference_targets() -> set[str]:
  """The objects the API reference documents (its ``::: name`` lines)."""
  pages = (DOCS / "reference").glob("*.md")
  return {name for page in pages for name in re.findall(r"^::: *([\w.]+)", page.read_text(), re.M)}


def test_every_public_name_is_in_the_api_reference():
  documented = reference_targets()
  homes = {name: flax_resnet._MODULE_OF[name] for name in flax_resnet.__all__}
  missing = [
    name
    for name, module in homes.items()
    if module not in documented and f"{module}.{name}" not in documented
  ]
  assert missing == []


def test_every_module_the_reference_names_is_documented_there():
  index = (DOCS / "reference" / "index.md").read_text()
  named = set(re.findall(r"`(flax_resnet\.[a-z][\w.]*)`", index))
  assert named and named <= reference_targets(), sorted(named - reference_targets())


@pytest.fixture(scope="module")
def hooks():
  """docs/hooks.py, with the docs extra's griffe and mkdocs (in dev; under CI=true, as the data
  tests, their absence fails rather than skips)."""
  if os.environ.get("CI") != "true":
    for name in ("griffe", "mkdocs"):
      pytest.importorskip(name, reason="the docs extra (pip install -e '.[docs]') is not installed")
  spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_the_site_warns_on_a_public_name_without_a_docstring(hooks, tmp_path):
  import griffe

  package = tmp_path / "pkg"
  package.mkdir()
  (package / "__init__.py").write_text('"""A package."""\n')
  (package / "mod.py").write_text(
    '"""A module."""\n\n'
    "def documented():\n  'Has one.'\n\n"
    "def bare():\n  pass\n\n"
    "def _private():\n  pass\n\n"
    "class Thing:\n  'Has one.'\n\n  def method(self):\n    pass\n\n"
    "  def _hidden(self):\n    pass\n"
  )
  loaded = griffe.load("pkg", search_paths=[str(tmp_path)], resolve_aliases=False)
  assert hooks.undocumented(loaded["mod"]) == ["pkg.mod.bare", "pkg.mod.Thing.method"]


def test_every_object_of_the_api_reference_and_every_public_name_has_a_docstring(hooks):
  package = hooks.package()
  missing = [
    path
    for name in sorted(reference_targets())
    for path in hooks.undocumented(package[name.removeprefix("flax_resnet.")])
  ]
  missing += [
    f"{module}.{name}"
    for module, names in hooks.public_names().items()
    for name in names
    if not package[f"{module}.{name}".removeprefix("flax_resnet.")].docstring
  ]
  assert missing == []
  assert set(hooks.public_names()) == set(flax_resnet._WHERE)


def test_the_root_pages_bring_the_repository_files_they_link_to(hooks, tmp_path):
  (tmp_path / "bench").mkdir()
  (tmp_path / "bench" / "a.png").write_bytes(b"")
  page = tmp_path / "PAGE.md"
  page.write_text("[a](bench/a.png) [b](bench/gone.png) [c](https://x.org/y.png) [d](docs/x.md)")
  assert hooks.linked_files(page) == ["bench/a.png"]


def test_the_readme_is_a_short_tour_in_a_newcomers_order():
  readme = (ROOT / "README.md").read_text()
  assert len(readme.splitlines()) <= 300
  headings = re.findall(r"^## (.+)$", readme, re.M)
  assert headings == ["Set-up", "Quick start", "Commands", "Tests", "Where to read more"]
  assert "| model | constructor | params | GFLOPs |" in readme.split("\n## ", 1)[0]


def test_the_readmes_models_table_gives_torchvisions_weights_default_last():
  from flax_resnet.torchvision_weights import list_pretrained

  readme = (ROOT / "README.md").read_text()
  rows = dict(re.findall(r"^\| `(\w+)` \| `\w+` \| [\d,]+ \| [\d.]+ \| (.+) \|$", readme, re.M))
  expected = {}
  for entry in sorted(list_pretrained(), key=lambda w: w.is_default):  # stable: the default last
    cell = f"`{entry.name}` {entry.acc1:.2f}%"
    expected[entry.arch] = f"{expected[entry.arch]}, {cell}" if entry.arch in expected else cell
  assert rows == expected
