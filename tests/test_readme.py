"""Every Python snippet of README.md and of the documentation (docs/**/*.md) runs as written,
each in a fresh process; a snippet that two pages show runs once.

Each runs twice in a folder of its own, as a reader who runs it again: a snippet that writes
a file must not fail on what its first run wrote. Beside that folder lies what a reader of the
checkout has: ``../shared/data`` (the ImageNet samples the snippets name), and torch.hub's
cache holding ResNet50_Weights.IMAGENET1K_V2's file (random weights: no network at test
time). Random weights cannot carry torchvision's hash, which is checked: the file is named
after its own, as torchvision names its files, and a sitecustomize points torchvision's entry
and flax_resnet's table at that name.
"""

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from torch_reference import calibrate, torch, torchvision

from flax_resnet.files import sha256

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def snippets(text: str) -> list[str]:
  """The Python blocks of a Markdown page, fenced at the start of a line or indented (a list
  item's), their indentation removed."""
  blocks = re.findall(r"^( *)```python\n(.*?)^\1```", text, re.S | re.M)
  return [
    textwrap.dedent("".join(line.removeprefix(pad) for line in code.splitlines(True)))
    for pad, code in blocks
  ]


SNIPPETS = list(dict.fromkeys(code for page in PAGES for code in snippets(page.read_text())))


@pytest.fixture(scope="module")
def reader_dir(data_dir, tmp_path_factory):
  home = tmp_path_factory.mktemp("reader")
  (home / "shared").mkdir()
  (home / "shared" / "data").symlink_to(data_dir)
  weights = torchvision.models.ResNet50_Weights.IMAGENET1K_V2
  hub = home / "torch-home" / "hub" / "checkpoints"
  hub.mkdir(parents=True)
  torch.manual_seed(0)
  torch.save(calibrate(torchvision.models.resnet50()).state_dict(), hub / "resnet50.pth")
  name = f"resnet50-{sha256(hub / 'resnet50.pth')[:8]}.pth"
  (hub / "resnet50.pth").rename(hub / name)
  (home / "site").mkdir()
  (home / "site" / "sitecustomize.py").write_text(
    REDIRECT.format(name=name, url=f"{weights.url.rsplit('/', 1)[0]}/{name}")
  )
  return home


REDIRECT = """
import flax_resnet.torchvision_weights as table, flax_resnet.port.torch_files as port
table.TABLE = tuple(w._replace(file={name!r}) if w.file == "resnet50-11ad3fa6.pth" else w
                    for w in table.TABLE)
fetch = port.fetch_weights

def fetch_redirected(name, arch):
  import torchvision
  torchvision.models.ResNet50_Weights.IMAGENET1K_V2.value.url = {url!r}
  return fetch(name, arch)

port.fetch_weights = fetch_redirected
"""


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_the_images_a_page_names_exist(data_dir, page):
  text = page.read_text()
  samples = re.findall(r"\b\d{3}_n\d{8}\.JPEG\b", text)
  assert all((data_dir / "imagenet-samples" / name).is_file() for name in samples), samples
  assert not re.findall(r"(?<![/\w$])[\w-]+\.(?:jpg|jpeg|JPEG)\b", text)  # a bare photo name


def test_the_readme_and_the_docs_have_their_snippets():
  assert len(snippets((ROOT / "README.md").read_text())) >= 2
  assert len(SNIPPETS) >= 7
  assert any("../shared/data/imagenet-samples/" in code for code in SNIPPETS)


def test_snippets_are_read_fenced_or_indented_in_a_list_item():
  page = "x\n```python\na = 1\n```\n- item:\n\n  ```python\n  if a:\n    b = 2\n  ```\n"
  assert snippets(page) == ["a = 1\n", "if a:\n  b = 2\n"]


@pytest.mark.parametrize("index", range(len(SNIPPETS)))
def test_readme_snippet_runs_as_written(reader_dir, index):
  env = {
    **os.environ,
    "TORCH_HOME": str(reader_dir / "torch-home"),
    "FLAX_RESNET_WEIGHTS": str(reader_dir / "weights"),
    "JAX_PLATFORMS": "cpu",
    "PYTHONPATH": f"{reader_dir / 'site'}{os.pathsep}{ROOT}",
  }
  env.pop("XLA_FLAGS", None)  # as a reader runs it: one CPU device
  work = reader_dir / f"snippet{index}"
  work.mkdir()
  for run in ("first", "second"):
    done = subprocess.run(
      [sys.executable, "-c", SNIPPETS[index]],
      cwd=work,
      env=env,
      capture_output=True,
      text=True,
      timeout=600,
    )
    assert done.returncode == 0, f"{run} run: " + SNIPPETS[index] + done.stderr[-3000:]
    if not any(work.iterdir()):  # wrote nothing: a second run would do the same
      break
