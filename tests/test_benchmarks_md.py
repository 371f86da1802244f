"""BENCHMARKS.md opens with one screen of results: each line's figures copied from the section
it links to, each link's section and raw file there to follow."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUMMARY = "## Results at a glance"
HEADING = re.compile(r"^(#{1,6}) (.+)$", re.M)
# A figure as the summary writes it: 62.20%, 1.11×, 4,754, 2.75–2.84 (each end), −36 %.
FIGURE = re.compile(r"\d(?:[\d,.]*\d)?(?: ?%|×)?")
LINK = re.compile(r"\[[^]]*\]\(([^)]+)\)")


def github_anchor(heading: str) -> str:
  """The anchor GitHub gives a heading: its text (code spans as their text) in lower case, each
  character but a letter, digit, underscore, hyphen or space dropped, spaces as hyphens."""
  text = heading.replace("`", "").strip().lower()
  return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def sections(text: str) -> dict[str, str]:
  """Each heading's anchor: the text under it up to the next heading of its level or above
  (its subsections included). Repeated anchors get -1, -2..., as GitHub numbers them."""
  found, out = list(HEADING.finditer(text)), {}
  for i, heading in enumerate(found):
    level, anchor = len(heading[1]), github_anchor(heading[2])
    end = next((h.start() for h in found[i + 1 :] if len(h[1]) <= level), len(text))
    n = sum(1 for key in out if re.fullmatch(rf"{re.escape(anchor)}(-\d+)?", key))
    out[f"{anchor}-{n}" if n else anchor] = text[heading.end() : end]
  return out


def summary_rows(text: str) -> list[list[str]]:
  """The cells of each table row of the summary (header and rule rows left out)."""
  body = text.split(SUMMARY, 1)[1].split("\n## ", 1)[0]
  rows = [[c.strip() for c in line.strip().strip("|").split(" | ")] for line in body.splitlines()]
  return [r for r in rows if len(r) == 3 and r[0] != "result" and not r[0].startswith("---")]


def test_github_anchors_are_read_as_github_writes_them():
  assert github_anchor("Memory: the read-ahead is bounded (`prefetch`)") == (
    "memory-the-read-ahead-is-bounded-prefetch"
  )
  assert (
    github_anchor("1×1 convolutions as matrix products") == "11-convolutions-as-matrix-products"
  )
  assert list(sections("# A\n## B\nx\n### C\ny\n## B\nz\n")) == ["a", "b", "c", "b-1"]


def test_the_summary_is_first_and_fits_one_screen():
  text = (ROOT / "BENCHMARKS.md").read_text()
  assert text.startswith(f"# Benchmarks\n\n{SUMMARY}\n")
  after = text.split(SUMMARY, 1)[1]
  assert after.index("\n## ") < len("\n".join(after.splitlines()[:50]))


def test_each_summary_figure_is_in_the_section_it_links_and_each_raw_file_exists():
  text = (ROOT / "BENCHMARKS.md").read_text()
  by_anchor, rows = sections(text), summary_rows(text)
  assert len(rows) >= 10
  for result, section, raw in rows:
    (anchor,) = [link[1:] for link in LINK.findall(section)]
    assert anchor in by_anchor, f"no heading has the anchor #{anchor}"
    said = " ".join(by_anchor[anchor].split())
    missing = [f for f in FIGURE.findall(result.replace("**", "")) if f not in said]
    assert missing == [], f"#{anchor} does not say {missing}: {result}"
    for path in LINK.findall(raw):
      assert path.startswith("bench/results/") and (ROOT / path).is_file(), path
    assert LINK.findall(raw) or raw.startswith("none"), raw
