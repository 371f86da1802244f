"""What every command-line tool of the project shares: one-line errors and the exit codes.

Exit codes (README, "Exit codes"): 0 success; 1 an unexpected error, a bug, shown with
its traceback; 2 bad input or usage, one line ``error: ...`` on stderr with nothing
written; 3 training stopped because the loss or gradient became NaN or infinite; 130
training stopped on Ctrl-C (after saving, unless pressed twice), as shells report SIGINT.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import tempfile
from pathlib import Path

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


def quiet_aborted_reads() -> None:
  """Drops what orbax's reads, still in flight, leave behind once a restore of a damaged
  checkpoint has failed: "Event loop is closed" errors from tensorstore's threads and the
  errors of orbax's read coroutines that nothing awaits any more. Hundreds of lines of
  them would follow the one-line error that names the file."""
  if getattr(sys.unraisablehook, "quiets_aborted_reads", False):
    return
  default = sys.unraisablehook

  def hook(unraisable):
    code = getattr(unraisable.object, "cr_code", None)
    closed = (unraisable.exc_type is RuntimeError
              and str(unraisable.exc_value) == "Event loop is closed")
    if not (closed or (code and "orbax" in code.co_filename)):
      default(unraisable)

  hook.quiets_aborted_reads = True
  sys.unraisablehook = hook
  # Python 3.12's asyncio.run logs the same tasks' errors at shutdown, thousands of lines.
  logging.getLogger("asyncio").addFilter(_not_an_aborted_orbax_read)


def _not_an_aborted_orbax_read(record: logging.LogRecord) -> bool:
  message = record.getMessage()
  # The same read's error, logged once its task is collected: seen under load, as a
  # 60-line traceback after the one-line warning of a damaged checkpoint.
  return not (message.startswith(("unhandled exception during asyncio.run() shutdown",
                                  "Task exception was never retrieved"))
              and "orbax" in message)


def one_line(error: BaseException) -> str:
  """An exception's message on one line."""
  return "; ".join(line.strip() for line in str(error).splitlines() if line.strip()) or (
      type(error).__name__)


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


CHECKPOINT_ENTRIES = ("metadata.json", "state")


def replace_problem(path: Path) -> str | None:
  """Why directory ``path`` may not be replaced by a new checkpoint (``--force``), or None.

  Only what holds nothing of a user's may go: an empty directory, or a flax-resnet
  checkpoint (``metadata.json`` and ``state/``, and nothing else).
  """
  if path.is_symlink():
    return "is a symbolic link"
  if not path.is_dir():
    return "is not a directory"
  entries = sorted(p.name for p in path.iterdir())
  if not entries:
    return None
  if not ((path / "metadata.json").is_file() and (path / "state").is_dir()):
    return "is not a flax-resnet checkpoint (no metadata.json and state/)"
  others = [e for e in entries if e not in CHECKPOINT_ENTRIES]
  if others:
    return (f"holds {', '.join(others[:3])}{', ...' if len(others) > 3 else ''}, which is not "
            "part of a flax-resnet checkpoint")
  return None


def check_replaceable(out: Path, flag: str = "--out") -> None:
  """A ``CliError`` naming ``out`` if ``--force`` would replace something not ours there."""
  problem = replace_problem(out) if out.exists() or out.is_symlink() else None
  if problem:
    raise CliError(f"{flag} {out} {problem}: --force replaces only a flax-resnet checkpoint; "
                   "choose another path")
