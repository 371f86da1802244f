"""What every command-line tool of the project shares: one-line errors and the exit codes.

Exit codes (docs/commands.md, "Exit codes"): 0 success; 1 an unexpected error, a bug, shown with
its traceback; 2 bad input or usage, one line ``error: ...`` on stderr with nothing
written; 3 training stopped because the loss or gradient became NaN or infinite; 130
training stopped on Ctrl-C (after saving, unless pressed twice), as shells report SIGINT.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from pathlib import Path

from flax_resnet.errors import (
  ArgumentError,
  FieldError,
  one_line,
  quiet_aborted_reads,
  replace_problem,
)

EXIT_OK, EXIT_BAD_INPUT, EXIT_DIVERGED = 0, 2, 3  # 1 is Python's own, for a traceback
EXIT_INTERRUPTED = 128 + 2  # SIGINT's number, as a shell reports a process it stopped


class CliError(Exception):
  """A problem with a command's input, reported in one line."""


class ArgumentParser(argparse.ArgumentParser):
  """argparse whose usage errors are one line and exit code 2, like every other input error.

  Building one also silences ``quiet_aborted_reads``'s noise: every command has one.
  """

  def __init__(self, **kwargs):
    kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
    super().__init__(**kwargs)
    quiet_aborted_reads()

  def error(self, message: str):
    print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
    sys.exit(EXIT_BAD_INPUT)


def report(error: BaseException) -> int:
  """Prints ``error: MESSAGE`` on stderr; returns the bad-input exit code."""
  print(f"error: {one_line(error)}", file=sys.stderr)
  return EXIT_BAD_INPUT


def positive_int(text: str) -> int:
  """An argparse type: an integer of at least 1."""
  value = int(text)
  if value < 1:
    raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
  return value


def positive_float(text: str) -> float:
  """An argparse type: a finite number above 0."""
  value = float(text)
  if not (math.isfinite(value) and value > 0):
    raise argparse.ArgumentTypeError(f"{text} is not a finite number above 0")
  return value


def check_writable_dir(out: Path, force: bool, flag: str = "--out") -> None:
  """That directory ``out`` can be written (or replaced, with ``force``), before any work.

  The nearest existing ancestor must take a new directory: tried, not judged from
  permission bits, which root ignores and read-only file systems do not show.
  """
  if out.exists() and not out.is_dir():
    raise CliError(f"{flag} {out} is a file, not a directory; remove it or choose another path")
  if out.exists() and not force:
    raise CliError(f"{flag} {out} exists; pass --force to replace it")
  parent = out.absolute().parent
  while not parent.exists():
    parent = parent.parent
  if not parent.is_dir():
    raise CliError(f"{flag} {out}: {parent} is a file, not a directory")
  try:
    os.rmdir(tempfile.mkdtemp(prefix=".write-test-", dir=parent))
  except OSError as e:
    raise CliError(f"{flag} {out}: cannot write in {parent} ({e.strerror or e})") from None


def check_replaceable(out: Path, flag: str = "--out") -> None:
  """A ``CliError`` naming ``out`` if ``--force`` would replace something not ours there."""
  problem = replace_problem(out) if out.exists() or out.is_symlink() else None
  if problem:
    raise CliError(
      f"{flag} {out} {problem}: --force replaces only a flax-resnet checkpoint; choose another path"
    )


CONFIG_FLAGS = {"preset": "--config", "assignments": "--set"}  # by SettingError's parameter
RUN_FLAGS = {"workdir": "--workdir"}  # by ArgumentError's names: the run's own arguments


class ListFields(argparse.Action):
  """``--list-fields``: prints every config field (``config.field_listing``) and exits, as
  ``--help`` does, whatever else the command requires."""

  def __init__(self, option_strings, dest, **kwargs):
    super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

  def __call__(self, parser, namespace, values, option_string=None):
    from flax_resnet.training.config import field_listing

    print(field_listing())
    parser.exit()


def add_config_arguments(p: argparse.ArgumentParser) -> None:
  """A training command's ``--config`` (a preset; ``--preset`` alike), repeatable ``--set
  KEY=VALUE`` and ``--list-fields``. The presets named are those shipped (the registry's)."""
  from flax_resnet.training.config import preset_names  # config.py loads no JAX

  p.add_argument(
    "--config",
    "--preset",
    dest="config",
    metavar="PRESET",
    required=True,
    help=f"a preset's name ({', '.join(preset_names())}) or a preset file's path",
  )
  p.add_argument(
    "--set",
    action="append",
    default=[],
    metavar="KEY=VALUE",
    help="override a config field (repeatable); --list-fields lists them",
  )
  p.add_argument(
    "--list-fields",
    action=ListFields,
    help="list every config field --set takes, with its type, default and meaning, and exit",
  )


def with_flags(error: BaseException, flags: dict[str, str]) -> BaseException:
  """An ``ArgumentError`` said with a command's ``flags`` (by the library's parameter name);
  any other error as it is."""
  if isinstance(error, ArgumentError):
    return ValueError(error.in_flags(flags))
  return error


def in_config_flags(error: ValueError) -> ValueError:
  """``training.config``'s ``SettingError`` (its ``parameter`` and ``detail``) said with the flag
  that gave that parameter, and a ``FieldError`` with ``--set field=value`` for each field it
  names, and an ``ArgumentError`` with the flag of each run argument (``--workdir``); any
  other error as it is."""
  if isinstance(error, FieldError):
    return ValueError(error.in_flags())
  if isinstance(error, ArgumentError):
    return ValueError(error.in_flags(RUN_FLAGS))
  parameter = getattr(error, "parameter", None)
  if parameter not in CONFIG_FLAGS:
    return error
  return ValueError(f"{CONFIG_FLAGS[parameter]} {getattr(error, 'detail', '')}")
