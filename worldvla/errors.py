"""Errors about a file the user gave us, printed by the CLIs as one line (no traceback).

`InputFileError` carries the file and, where there is one, the field; its message always starts
with the file, so a user sees which of many inputs to fix.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

from worldvla.config import ConfigError


class InputFileError(ValueError):
    """A file is missing, corrupt, truncated, unsafe or holds a bad value; names the file (and field)."""

    def __init__(self, path: str | Path, message: str, field: str | None = None):
        self.path, self.field = Path(path), field
        where = f"{path}: {field}: " if field else f"{path}: "
        super().__init__(where + message)


class DataError(RuntimeError):
    """A training set that cannot be opened or does not match the config; names the entry
    (raised by worldvla/train/data.py, defined here so every CLI prints it as one line)."""


def exit_on_input_errors(main, *extra: type[Exception]):
    """Wrap a CLI `main`: an InputFileError, ConfigError, DataError (or one of `extra`) ends the program with
    `error: <message>` on stderr and exit status 2 instead of a traceback."""
    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except (InputFileError, ConfigError, DataError, *extra) as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper
