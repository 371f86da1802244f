"""write_atomic: a file is the old one or the new one, never a part, whoever writes it."""

import subprocess
import sys
from pathlib import Path

import pytest

from flax_resnet.files import write_atomic

ROOT = Path(__file__).resolve().parents[1]


def test_write_atomic_replaces_the_file_and_leaves_no_temporary(tmp_path):
  path = tmp_path / "config.json"
  path.write_text("old")
  write_atomic(path, "new")
  write_atomic(tmp_path / "blob", b"\x00\x01")
  assert path.read_text() == "new" and (tmp_path / "blob").read_bytes() == b"\x00\x01"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["blob", "config.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_its_temporary(tmp_path):
  path = tmp_path / "summary.json"
  path.write_text("old")
  with pytest.raises(UnicodeEncodeError):
    write_atomic(path, "\ud800")  # a lone surrogate: fails after the temporary is opened
  assert path.read_text() == "old"
  assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_processes_writing_one_file_at_once_never_take_each_others_temporary(tmp_path):
  # The processes of a multi-host run share the workdir; with one temporary name
  # for all, one renames the other's file away and the other's rename fails.
  path = tmp_path / "config.json"
  script = (
    "import sys; from pathlib import Path; from flax_resnet.files import write_atomic\n"
    "for _ in range(300): write_atomic(Path(sys.argv[1]), sys.argv[2] * 1000)"
  )
  procs = [
    subprocess.Popen(
      [sys.executable, "-c", script, str(path), text], cwd=ROOT, stderr=subprocess.PIPE, text=True
    )
    for text in "ab"
  ]
  errors = [p.communicate(timeout=120)[1] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], errors
  assert path.read_text() in ("a" * 1000, "b" * 1000)
  assert [p.name for p in tmp_path.iterdir()] == ["config.json"]
