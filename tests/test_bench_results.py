"""flax_resnet/bench/results.py: every benchmark's rows stamped in one place, with the versions
they ran under, the command that ran them and the date."""

import ast
import datetime
import json
import sys
from pathlib import Path

import pytest

from flax_resnet.bench import peak_rss, results
from flax_resnet.versions import versions

PACKAGE = Path(results.__file__).parent
BENCHMARKS = ("convs", "dispatch", "kernels", "peak_rss", "pipeline", "throughput", "suite")


def test_each_row_is_stamped_with_the_versions_the_command_and_the_date(tmp_path, monkeypatch):
  monkeypatch.setattr(sys, "argv", ["/venv/bin/flax-resnet-bench", "convs", "--batch", "2"])
  results.emit([{"a": 1}, {"a": 2, "date": "not its own"}], tmp_path / "r.jsonl", echo=False)
  rows = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
  made = {
    "versions": versions(),
    "command": "flax-resnet-bench convs --batch 2",  # the program by name: no home folder
    "date": datetime.date.today().isoformat(),
  }
  assert rows == [{"a": 1, **made}, {"a": 2, **made}]


def test_peak_rss_says_the_watched_command_beside_the_stamp(tmp_path, monkeypatch, capsys):
  watched = [sys.executable, "-c", "pass"]
  monkeypatch.setattr(sys, "argv", ["flax-resnet-bench", "peak-rss", "--", *watched])
  assert peak_rss.main(["--out", str(tmp_path / "rss.jsonl"), "--", *watched]) == 0
  (row,) = [json.loads(line) for line in (tmp_path / "rss.jsonl").read_text().splitlines()]
  assert row["watched"] == " ".join(watched) and row["versions"]["python"]
  assert row["command"] == f"flax-resnet-bench peak-rss -- {' '.join(watched)}"
  assert row["date"] == datetime.date.today().isoformat() and "python" not in row


@pytest.mark.parametrize("name", BENCHMARKS)
def test_no_benchmark_writes_the_stamp_itself(name):
  tree = ast.parse((PACKAGE / f"{name}.py").read_text())
  dicts = [d for d in ast.walk(tree) if isinstance(d, ast.Dict)]
  keys = {k.value for d in dicts for k in d.keys if isinstance(k, ast.Constant)}
  calls = {c.func.id for c in ast.walk(tree) if isinstance(c, ast.Call) and hasattr(c.func, "id")}
  assert not keys & {"versions", "command", "date", "python"}, name
  assert "versions" not in calls and "emit" in calls, name
