"""CI's two stacks, each in a fresh virtual environment installed as README's "Set-up" says.

  nox -s py311     the oldest stack: Python 3.11, constraints/py311.txt, the fast subset
  nox -s py313     the newest stack: Python 3.13, constraints/py313.txt, the site, the whole suite
  nox -s latest    Python 3.13 with the newest releases of the day (no pins); prints how they
                   differ from constraints/py313.txt, then runs as py313 does

Each session: the set-up (all that ``nox --install-only`` runs), the lint, format and type
checks (mypy per stack: the libraries' types differ between them), the wheel outside the
checkout (.ci/wheel), on Python 3.13 the documentation site built strict (mkdocs.yml), then
README's tests.
``bash .ci/run`` runs py311 and py313, ``bash .ci/run --latest`` runs latest (README, "Tests").
Arguments after ``--`` go to pytest: ``nox -R -s py313 -- tests/test_cpu.py`` (``-R``: the
session's existing venv, nothing installed).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import nox

# README's commands, run as written there (tests/test_ci.py holds them equal): the set-up
# (with a stack's constraints file, or none for the newest releases), the whole suite and the
# fast subset.
SETUP = "pip install -e '.[dev]' -c {constraints}"
TESTS = "python -m pytest -n 2"
FAST_TESTS = 'python -m pytest -n 2 -m "not slow"'
# The site (mkdocs.yml; the docs extra, in dev): a broken link, anchor or reference, or a public
# name without a docstring, fails it. Built once per run, on the newest stack.
SITE = "mkdocs build --strict --site-dir {site_dir}"
OLDEST = "constraints/py311.txt"
NEWEST = "constraints/py313.txt"

nox.options.default_venv_backend = "venv"  # python -m venv, as a user makes one
nox.options.error_on_missing_interpreters = True
nox.options.sessions = ["py311", "py313"]


def _python(version: str) -> str:
  """``pythonX.Y`` where PATH has one that runs, else pyenv's newest X.Y.

  pyenv's shim for a version not selected (``pyenv global``) is on PATH but fails; CI's
  machines have 3.12 and 3.13 only under pyenv, beside the selected 3.11.
  """
  found = shutil.which(f"python{version}")
  if found and subprocess.run([found, "-c", ""], capture_output=True).returncode == 0:
    return version
  root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
  patches = [
    int(path.name.rsplit(".", 1)[1])
    for path in root.glob(f"{version}.*")
    if re.fullmatch(rf"{re.escape(version)}\.\d+", path.name)
  ]
  if not patches:
    return version  # nox then reports the interpreter missing
  return str(root / f"{version}.{max(patches)}" / "bin" / f"python{version}")


@nox.session(python=_python("3.11"))
def py311(session: nox.Session) -> None:
  """The oldest stack supported: Python 3.11, constraints/py311.txt; the fast subset."""
  _stack(session, OLDEST, FAST_TESTS)


@nox.session(python=_python("3.13"))
def py313(session: nox.Session) -> None:
  """The newest stack: Python 3.13, constraints/py313.txt; the site built strict; the whole
  suite."""
  _stack(session, NEWEST, TESTS, site=True)


@nox.session(python=_python("3.13"))
def latest(session: nox.Session) -> None:
  """The newest releases of the day on Python 3.13, their differences from the pins first."""
  setup = shlex.split(SETUP.format(constraints=NEWEST))
  session.run_install(*setup[: setup.index("-c")], "--quiet")
  _report_versions(session)
  installed = session.run_install("pip", "freeze", "--exclude-editable", silent=True)
  session.log(f"newest releases, against {NEWEST}:")
  for line in _differences(Path(NEWEST).read_text(), str(installed)):
    session.log(line)
  _check_and_test(session, "--latest", TESTS, site=True)


def _stack(session: nox.Session, constraints: str, tests: str, site: bool = False) -> None:
  session.run_install(*shlex.split(SETUP.format(constraints=constraints)), "--quiet")
  _report_versions(session)
  _check_and_test(session, constraints, tests, site)


def _report_versions(session: nox.Session) -> None:
  """What was installed: Python, jax, jaxlib, flax, optax, orbax, torch, torchvision."""
  report = "from flax_resnet import versions; print(versions.versions())"
  session.run_install("python", "-c", report)


def _check_and_test(session: nox.Session, wheel_pins: str, tests: str, site: bool) -> None:
  """Lint, format and types (the lint extra), the wheel, the site when ``site`` (into the
  session's own folder: the checkout gets no site/), then the tests; pytest's exit 5 (no test
  ran) fails the session as any other non-zero exit does."""
  session.run("ruff", "check", "flax_resnet", "tests", "docs/hooks.py")
  session.run("ruff", "format", "--check", "flax_resnet", "tests", "docs/hooks.py")
  session.run("mypy", "flax_resnet")
  session.run("bash", ".ci/wheel", wheel_pins, external=True)
  if site:
    site_dir = Path(session.create_tmp()) / "site"
    # Material's banner about MkDocs 2 is no warning of ours: kept out of the log.
    session.run(*shlex.split(SITE.format(site_dir=site_dir)), env={"NO_MKDOCS_2_WARNING": "1"})
  session.run(*shlex.split(tests), *session.posargs)  # nox -s py313 -- tests/test_cpu.py


def _differences(pinned: str, installed: str) -> list[str]:
  """``name: pinned -> installed`` for each package whose release differs (``-`` for none)."""

  def releases(text: str) -> dict[str, str]:
    lines = (line for line in text.splitlines() if "==" in line and not line.startswith("#"))
    pairs = (line.split("==", 1) for line in lines)
    return {re.sub(r"[-_.]+", "-", name).lower(): version for name, version in pairs}

  old, new = releases(pinned), releases(installed)
  return [
    f"{name}: {old.get(name, '-')} -> {new.get(name, '-')}"
    for name in sorted(old.keys() | new.keys())
    if old.get(name) != new.get(name)
  ] or ["(no differences)"]
