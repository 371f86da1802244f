"""training/metrics.py: TensorBoard's writer does not load torch into a training process."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

WRITE = """
import sys
{before}
from flax_resnet.training import metrics
writer = metrics._summary_writer(__import__("pathlib").Path(sys.argv[1]))
writer.add_scalar("train/loss", 0.5, 1)
writer.close()
print("torch" in sys.modules, sys.modules.get("torch") is not None)
"""


def write(tmp_path: Path, before: str = "") -> str:
  done = subprocess.run(
    [sys.executable, "-c", WRITE.format(before=before), str(tmp_path)],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert done.returncode == 0, done.stderr[-2000:]
  assert list(tmp_path.glob("events.out.tfevents.*")), "no event file written"
  return done.stdout.strip()


def test_the_tensorboard_writer_leaves_torch_unloaded(tmp_path):
  # tensorboardX imports torch whenever it can (torch is installed here): 1.5 s and 480 MB
  assert write(tmp_path) == "False False"


def test_the_tensorboard_writer_keeps_a_torch_already_loaded(tmp_path):
  assert write(tmp_path, "import torch") == "True True"
