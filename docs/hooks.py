"""MkDocs hooks of the site (mkdocs.yml, ``hooks:``).

- ``BENCHMARKS.md`` and ``CHANGELOG.md`` live at the repository's root, where readers of the
  checkout look for them; they become pages of the site as they are, with the repository files
  they link to (``bench/results/...``) beside them, so that their links hold in both places
  and a link to a file that does not exist still fails the strict build.
- Every object of the API reference (a ``::: name`` line), each public member under it, and
  each name of ``flax_resnet.__all__`` must have a docstring: mkdocstrings hides an
  undocumented member without a word, so here each one is a warning, which
  ``mkdocs build --strict`` turns into a failure.
"""

from __future__ import annotations

import ast
import functools
import logging
import re
from pathlib import Path

import griffe
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
ROOT_PAGES = ("BENCHMARKS.md", "CHANGELOG.md")
LINK = re.compile(r"\]\(([^)\s#]+)[^)]*\)")
REFERENCE = re.compile(r"^::: *([\w.]+)", re.M)
log = logging.getLogger("mkdocs.hooks.flax_resnet")


def on_pre_build(config) -> None:
  """A warning for each name of ``flax_resnet.__all__`` without a docstring (a constant, such
  as a constructor made by a function, has one as a string literal below it)."""
  for module, names in public_names().items():
    for name in names:
      obj = package()[f"{module}.{name}".removeprefix("flax_resnet.")]
      if not obj.docstring:
        log.warning(
          f"flax_resnet.{name} ({obj.path}) has no docstring (the API reference needs one)"
        )


def public_names() -> dict[str, tuple[str, ...]]:
  """``flax_resnet/__init__.py``'s ``_WHERE``: each module and the public names it gives."""
  tree = ast.parse((ROOT / "flax_resnet" / "__init__.py").read_text())
  found = (
    n for n in tree.body if isinstance(n, ast.Assign) and ast.unparse(n.targets[0]) == "_WHERE"
  )
  return ast.literal_eval(next(found).value)


def on_files(files: Files, config) -> Files:
  """The root pages and the repository files they link to, at their repository paths."""
  for name in ROOT_PAGES:
    for path in (name, *linked_files(ROOT / name)):
      if files.get_file_from_path(path) is None:
        files.append(File.generated(config, path, abs_src_path=str(ROOT / path)))
  return files


def linked_files(page: Path) -> list[str]:
  """The relative links of ``page`` that name a file of the repository (others are left for
  MkDocs to report)."""
  targets = (t for t in LINK.findall(page.read_text()) if "://" not in t)
  return [t for t in targets if not t.endswith(".md") and (page.parent / t).is_file()]


def on_page_markdown(markdown: str, page, config, files) -> str:
  """A root page's links into ``docs/`` as the site's own; a warning for each undocumented
  object that the page's ``::: name`` lines document."""
  if page.file.src_uri in ROOT_PAGES:
    markdown = markdown.replace("](docs/", "](")
  for name in REFERENCE.findall(markdown):
    for path in undocumented(package()[name.removeprefix("flax_resnet.")]):
      log.warning(f"{page.file.src_uri}: {path} has no docstring (the API reference needs one)")
  return markdown


@functools.cache
def package() -> griffe.Object:
  """flax_resnet as griffe reads it, statically (as mkdocstrings does: no import, no jax)."""
  return griffe.load("flax_resnet", search_paths=[str(ROOT)], resolve_aliases=False)


def undocumented(obj: griffe.Object, top: bool = True) -> list[str]:
  """``obj`` (named on the page, so checked whatever it is) and its public modules, classes and
  functions, recursively, that have no docstring; names with a leading underscore and imported
  names are not shown, so not checked, and neither are attributes below the page's object."""
  found = [] if obj.docstring else [obj.path]
  for name, member in obj.members.items():
    if name.startswith("_") or member.is_alias or member.is_attribute:
      continue
    found += undocumented(member, top=False)
  return found
