"""What the library and the commands share about failures: one-line messages, the rule for
what a new checkpoint may replace, and the silencing of what orbax's aborted reads leave behind.

Library code raises with these; only the commands (``cli.py``) turn errors into exit codes.
"""

from __future__ import annotations

import logging
import string
import sys
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any


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
    closed = (
      unraisable.exc_type is RuntimeError and str(unraisable.exc_value) == "Event loop is closed"
    )
    if not (closed or (code and "orbax" in code.co_filename)):
      default(unraisable)

  hook.quiets_aborted_reads = True  # type: ignore[attr-defined]  # the mark read above
  sys.unraisablehook = hook
  # Python 3.12's asyncio.run logs the same tasks' errors at shutdown, thousands of lines.
  logging.getLogger("asyncio").addFilter(_not_an_aborted_orbax_read)


def _not_an_aborted_orbax_read(record: logging.LogRecord) -> bool:
  message = record.getMessage()
  # The same reads' errors, logged once their task or gathering future is collected: seen
  # under load, as 60-line tracebacks after the one-line error that names the checkpoint.
  # A gathering future's line names no file, so its exception's traceback is read too.
  aborted = "exception was never retrieved" in message.partition("\n")[0] or message.startswith(
    "unhandled exception during asyncio.run() shutdown"
  )
  return not (aborted and ("orbax" in message or _raised_in_orbax(record.exc_info)))


def _raised_in_orbax(exc_info: Any) -> bool:
  error = exc_info[1] if exc_info else None
  seen = set()
  while isinstance(error, BaseException) and id(error) not in seen:
    seen.add(id(error))
    if any("orbax" in frame.filename for frame in traceback.extract_tb(error.__traceback__)):
      return True
    error = error.__cause__ or error.__context__
  return False


class MissingExtra(ImportError, ValueError):
  """What was asked needs an optional dependency that is not installed; the message names
  the extra that installs it (``pip install 'flax-resnet[torch]'``). Also a ``ValueError``:
  the commands report it in one line as any other problem with what they were asked."""


def one_line(error: BaseException) -> str:
  """An exception's message on one line."""
  return "; ".join(line.strip() for line in str(error).splitlines() if line.strip()) or (
    type(error).__name__
  )


class FieldError(ValueError):
  """A problem with the values of config fields, in a ``template`` whose placeholders name
  them: ``{key}`` is ``fields[key]``, a (field, value) pair, said ``config field=value``
  here (library errors name the fields) and ``--set field=value`` by a command
  (``in_flags``), which has the user set it."""

  def __init__(self, template: str, **fields: tuple[str, Any]):
    self.template, self.fields = template, fields
    said = {key: f"{name}={value!r}" for key, (name, value) in fields.items()}
    super().__init__("config " + template.format(**said))

  def in_flags(self) -> str:
    """The message with each field as the ``--set field=value`` that gives it."""
    said = {key: f"--set {name}={as_set(value)}" for key, (name, value) in self.fields.items()}
    return self.template.format(**said)


def as_set(value: Any) -> str:
  """``value`` as ``--set`` parses it back: tuples comma-separated, lower-case booleans."""
  if isinstance(value, (list, tuple)):
    return ",".join(map(str, value))
  if value is None or isinstance(value, bool):
    return str(value).lower()
  return str(value)


def literal(text: str) -> str:
  """``text`` (an inner error's message) safe inside a ``FieldError``'s template."""
  return text.replace("{", "{{").replace("}", "}}")


CHECKPOINT_ENTRIES = ("metadata.json", "state")


def replace_problem(path: Path) -> str | None:
  """Why directory ``path`` may not be replaced by a new checkpoint, or None.

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
    return (
      f"holds {', '.join(others[:3])}{', ...' if len(others) > 3 else ''}, which is not "
      "part of a flax-resnet checkpoint"
    )
  return None


class ArgumentError(ValueError):
  """A problem with an argument that a command gives from a flag of its own (``workdir`` of
  ``training.trainer.run``), in a ``template`` whose ``{name}`` placeholders name such
  arguments: said ``name`` here (library errors name the parameter) and as the command's
  flag by ``in_flags``. Every other brace of the template is doubled (``literal``)."""

  def __init__(self, template: str):
    self.template = template
    self.names = [name for _, name, _, _ in string.Formatter().parse(template) if name]
    super().__init__(template.format_map({name: name for name in self.names}))

  def in_flags(self, flags: Mapping[str, str]) -> str:
    """The message with each argument named by its flag in ``flags`` (by parameter name)."""
    return self.template.format_map({name: flags.get(name, name) for name in self.names})
