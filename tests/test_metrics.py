"""training/metrics.py: TensorBoard's writer does not load torch into a training process."""

import subprocess
import sys
from pathlib import Path

import pytest

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


def test_the_logged_loss_and_top1_are_the_means_of_every_step_since_the_last_line(tmp_path, capsys):
  import jax.numpy as jnp

  from flax_resnet.training import metrics

  losses, hits = [4.0, 1.0, 2.5, 0.5, 3.0, 2.0], [1, 3, 2, 4, 0, 2]
  progress = metrics.Progress(tmp_path, 4, 3, 6, learning_rate=lambda n: 0.1 * (n + 1))
  for step, (loss, top1) in enumerate(zip(losses, hits), 1):
    progress.step(step, {"loss": jnp.float32(loss), "top1": jnp.int32(top1)}, 0)
  progress.close()
  series = metrics.read_metrics(tmp_path)
  assert series["train/loss"] == [(3, 2.5), (6, 11 / 6)]  # not the 3rd and 6th steps' own
  assert series["train/top1"] == [(3, 6 / 12), (6, 6 / 12)]
  assert [step for step, _ in series["train/lr"]] == [3, 6]
  assert [round(v, 6) for _, v in series["train/lr"]] == [0.3, 0.6]  # the 3rd and 6th steps'
  lines = capsys.readouterr().out.splitlines()
  assert lines[0].startswith("step 3/6 loss 2.5000 top1 0.5000 lr 0.3 ")
  assert lines[1].startswith("step 6/6 loss 1.8333 top1 0.5000 lr 0.6 ")


def test_a_line_between_the_scheduled_ones_leaves_their_means_over_all_their_steps(
  tmp_path, capsys, monkeypatch
):
  import jax.numpy as jnp

  from flax_resnet.training import metrics

  progress = metrics.Progress(tmp_path, 2, 4, 4)
  monkeypatch.setattr(metrics, "LOG_SECONDS", 0)  # a line at every step, as on a slow machine
  for step, loss in enumerate([1.0, 2.0, 3.0, 6.0], 1):
    progress.step(step, {"loss": jnp.float32(loss), "top1": jnp.int32(step % 2)}, 0)
  progress.close()
  printed = [line.split()[3] for line in capsys.readouterr().out.splitlines()]
  assert printed == ["1.0000", "2.0000", "3.0000", "6.0000"]  # each since the line before
  assert metrics.read_metrics(tmp_path)["train/loss"] == [(4, 3.0)]  # the 4 steps' mean
  assert metrics.read_metrics(tmp_path)["train/top1"] == [(4, 2 / 8)]


def test_a_folder_without_metrics_is_said_not_to_be_the_installed_trainer_s_workdir(tmp_path):
  from flax_resnet.training import metrics

  with pytest.raises(ValueError) as missing:
    metrics.read_metrics(tmp_path)
  assert str(missing.value) == (
    f"{tmp_path / 'metrics.jsonl'} not found: not a flax-resnet-train workdir, or nothing "
    "logged yet"
  )


def test_both_trainers_summaries_are_written_by_one_rule_of_the_best_eval(tmp_path):
  import json

  from flax_resnet.training import config as config_lib, metrics

  with_ema = {"top1": 0.5, "ema_top1": 0.4}
  assert metrics.score(with_ema) == 0.4 and metrics.score({"top1": 0.5}) == 0.5
  assert metrics.best_top1(None, with_ema) == 0.4 and metrics.best_top1(0.45, with_ema) == 0.45
  cfg = config_lib.Config(ema_decay=0.99)
  summary = metrics.summary(cfg, (3, 10), with_ema, 0.4, wall_s=1.5, framework="torch")
  assert summary == {
    "step": 3,
    "total_steps": 10,
    "last_eval": with_ema,
    "best_top1": 0.4,
    "best_of": "ema_top1",
    "wall_s": 1.5,
    "framework": "torch",
    "config": cfg.to_json(),
  }
  assert metrics.summary(config_lib.Config(), (0, 1), {}, None)["best_of"] == "top1"
  metrics.write_summary(tmp_path, summary)
  assert json.loads((tmp_path / "summary.json").read_text()) == json.loads(json.dumps(summary))
