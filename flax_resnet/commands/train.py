"""Train or fine-tune a flax-resnet model: one command from a laptop CPU to a TPU pod.

    flax-resnet-train --config cifar10_resnet18 --workdir runs/c10 \\
        --set data_dir=/data/cifar10 --set epochs=30

--config (or --preset) takes a shipped preset by name (listed under --config below) or a
preset file by its path; --set changes any field of it (--list-fields lists them all, with
their types, defaults and meanings). A run resumes from the latest checkpoint in --workdir.
The batch is sharded over every device of every process (jax.distributed, initialised
automatically on TPU pods and from --coordinator/--num-processes/--process-id elsewhere).
BatchNorm statistics are computed over the whole global batch by default;
``--set bn_stats=per_device`` computes them over each device's shard, as PyTorch
DDP does per GPU.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

# Only the light modules here: the arguments are parsed before JAX, Flax and orbax
# (2-3 s of a core) load, so that --help and usage errors answer at once.
from flax_resnet.cli import (
  EXIT_DIVERGED,
  EXIT_INTERRUPTED,
  ArgumentParser,
  add_config_arguments,
  in_config_flags,
  report,
)
from flax_resnet.errors import as_set

if TYPE_CHECKING:
  from flax_resnet.training.config import Config


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  """``flax-resnet-train``'s arguments; usage errors exit 2 in one line."""
  p = ArgumentParser(description=__doc__)
  add_config_arguments(p)
  p.add_argument("--workdir", type=Path, required=True)
  p.add_argument("--coordinator", help="host:port of process 0, for multi-process runs")
  p.add_argument("--num-processes", type=int)
  p.add_argument("--process-id", type=int)
  return p.parse_args(argv)


def setup_distributed(args: argparse.Namespace) -> None:
  """``jax.distributed.initialize`` from the flags, automatically on TPU pods, else nothing."""
  import jax

  if args.coordinator:
    jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
  elif os.environ.get("TPU_NAME") or os.environ.get("JAX_COORDINATOR_ADDRESS"):
    jax.distributed.initialize()
  else:
    return
  # A first collective while the processes are still in step: CPU (gloo) collectives set
  # up their context on first use and give up when the processes arrive 30 s apart.
  from jax.experimental import multihost_utils

  multihost_utils.sync_global_devices("flax_resnet:start")


def config_lines(cfg: Config, devices: int, processes: int, workdir: Path) -> str:
  """The resolved config as printed at start, one short block: the fields that differ from
  the defaults, as ``--set`` takes them, and the file that holds them all."""
  import textwrap

  from flax_resnet.training.config import Config

  default = Config()
  changed = [f"{k}={as_set(v)}" for k, v in cfg.to_json().items() if v != getattr(default, k)]
  return "\n".join(
    [f"config (devices {devices}, processes {processes}), where it differs from the defaults:"]
    + textwrap.wrap(
      " ".join(changed) or "(none)",
      98,
      initial_indent="  ",
      subsequent_indent="  ",
      break_on_hyphens=False,
    )
    + [f"  every field: {workdir / 'config.json'} (flax-resnet-train --list-fields says each)"]
  )


def resolved_config(args: argparse.Namespace) -> Config:
  """The preset with the ``--set`` assignments applied; errors name the flag at fault."""
  from flax_resnet.training import config as config_lib

  try:
    return config_lib.override(config_lib.load_preset(args.config), args.set)
  except ValueError as e:  # SettingError, FieldError: said with the flags that gave them
    raise in_config_flags(e) from e


def main(argv: list[str] | None = None) -> int:
  """``flax-resnet-train``: exit 0 when done (or saved on SIGTERM), 2 on bad input (one
  line), 3 when the loss diverged, 130 when saved and stopped on Ctrl-C (docs/commands.md)."""
  args = parse_args(argv)
  from flax_resnet.caches import enable_compilation_cache
  from flax_resnet.cpu import use_every_core
  from flax_resnet.training import trainer

  try:
    cfg = resolved_config(args)
    use_every_core(cfg.global_batch)  # on a CPU host: a device per core where that pays
    setup_distributed(args)
    enable_compilation_cache()
    import jax

    print(config_lines(cfg, jax.device_count(), jax.process_count(), args.workdir), flush=True)
    summary = trainer.run(cfg, args.workdir)
  except KeyboardInterrupt:  # a second Ctrl-C, or one before the run could save
    print("interrupted: stopped without saving", file=sys.stderr)
    return EXIT_INTERRUPTED
  except ValueError as e:
    return report(in_config_flags(e))  # library errors name fields, the command's flags
  except OSError as e:
    return report(e)
  except trainer.Diverged as e:
    report(e)
    return EXIT_DIVERGED
  if summary["signal"] == "SIGINT":
    print(
      f"interrupted: saved step {summary['step']} in {args.workdir / 'checkpoints'}; the "
      "same command resumes from it",
      file=sys.stderr,
    )
    return EXIT_INTERRUPTED
  return 0


if __name__ == "__main__":
  sys.exit(main())
