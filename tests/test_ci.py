"""CI (.ci/run, noxfile.py) installs and tests as README.md says, on the stacks it names."""

import ast
import re
import shlex
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PINNED = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "torch", "grain", "mkdocs")
PINNED += ("mkdocs-material", "mkdocstrings", "mkdocstrings-python")  # the docs extra


def _noxfile_constants() -> dict[str, str]:
  """noxfile.py's string constants, read without importing nox (not a dependency of ours)."""
  tree = ast.parse((ROOT / "noxfile.py").read_text())
  return {
    node.targets[0].id: node.value.value
    for node in tree.body
    if isinstance(node, ast.Assign)
    and isinstance(node.targets[0], ast.Name)
    and isinstance(node.value, ast.Constant)
    and isinstance(node.value.value, str)
  }


def _readme_commands(section: str, command: str) -> list[str]:
  """The commands starting with ``command`` in the bash blocks of README's ``section``."""
  text = (ROOT / "README.md").read_text().split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
  blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
  lines = (line.split("  #", 1)[0].strip() for block in blocks for line in block.splitlines())
  return [line for line in lines if line.startswith(command)]


def test_ci_installs_and_tests_with_the_readmes_commands():
  nox = _noxfile_constants()
  newest = nox["SETUP"].format(constraints=nox["NEWEST"])
  assert _readme_commands("Set-up", "pip install") == [newest]
  assert _readme_commands("Tests", "python -m pytest") == [nox["TESTS"], nox["FAST_TESTS"]]
  setup = (ROOT / "README.md").read_text().split("\n## Set-up\n", 1)[1].split("\n## ", 1)[0]
  assert f"-c {nox['OLDEST']}" in setup
  for command in (nox["SETUP"], nox["TESTS"], nox["FAST_TESTS"]):
    assert shlex.split(command)  # each runs as one argument list: quotes balanced


def test_ci_builds_the_site_strict_as_the_readme_says_and_the_readme_serves_it():
  nox, noxfile = _noxfile_constants(), (ROOT / "noxfile.py").read_text()
  assert nox["SITE"].startswith("mkdocs build --strict ")
  assert "_stack(session, NEWEST, TESTS, site=True)" in noxfile
  tests = (ROOT / "README.md").read_text().split("\n## Tests\n", 1)[1].split("\n## ", 1)[0]
  assert "`mkdocs build --strict`" in tests
  assert _readme_commands("Set-up", "mkdocs") == ["mkdocs serve"]
  extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
  assert "docs" in extras["dev"][0].split("[", 1)[1]  # CI installs dev: the site's tools too


def test_ci_runs_both_stacks_and_latest_on_the_newest_python():
  ci, noxfile = (ROOT / ".ci" / "run").read_text(), (ROOT / "noxfile.py").read_text()
  assert 'sessions=(py311 py313)' in ci and 'sessions=(latest)' in ci
  assert 'nox.options.sessions = ["py311", "py313"]' in noxfile
  for session, python in (("py311", "3.11"), ("py313", "3.13"), ("latest", "3.13")):
    assert f'@nox.session(python=_python("{python}"))\ndef {session}(' in noxfile


def test_each_stack_pins_every_package_it_installs():
  for name in ("py311.txt", "py313.txt", "nox.txt"):
    lines = (ROOT / "constraints" / name).read_text().splitlines()
    pinned = [line for line in lines if line and not line.startswith("#")]
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+==[^=\s]+", line) for line in pinned), name
  for name in ("py311.txt", "py313.txt"):
    pinned = (ROOT / "constraints" / name).read_text()
    for package in PINNED:
      assert f"\n{package}==" in pinned, (name, package)


def test_the_pythons_supported_agree_in_readme_pyproject_and_ci():
  project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
  classifiers = [
    c.rsplit(" :: ", 1)[1]
    for c in project["classifiers"]
    if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)
  ]
  assert classifiers == ["3.11", "3.12", "3.13"]
  assert project["requires-python"] == f">={classifiers[0]}"
  readme = (ROOT / "README.md").read_text()
  assert "Python 3.11, 3.12 and 3.13." in readme
  stacks = sorted((ROOT / "constraints").glob("py3*.txt"))
  assert [path.stem for path in stacks] == ["py311", "py313"]  # the oldest and the newest
