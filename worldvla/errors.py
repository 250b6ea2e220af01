"""Errors about a file the user gave us, printed by the CLIs as one line (no traceback).

`InputFileError` carries the file and, where there is one, the field; its message always starts
with the file, so a user sees which of many inputs to fix. `exit_on_input_errors` is the one wrapper
every CLI's `main` goes through: an expected failure is one `error:` line and exit status 2.
"""

from __future__ import annotations

import functools
import os
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


BAD_INPUT_EXIT = 2  # argparse's status for a bad command line; every CLI uses it for any bad input


def exit_on_input_errors(main, *extra: type[Exception]):
    """Wrap a CLI `main`: an InputFileError, ConfigError, DataError (or one of `extra`) ends the program with
    one line, `error: <message>`, on stderr and exit status 2 instead of a traceback.
    WORLDVLA_TRACEBACK=1 lets the exception through (to debug the message's cause)."""
    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except (InputFileError, ConfigError, DataError, *extra) as err:
            if os.environ.get("WORLDVLA_TRACEBACK"):
                raise
            print("error: " + " ".join(str(err).splitlines()), file=sys.stderr)  # one line, even for a long list
            raise SystemExit(BAD_INPUT_EXIT) from None

    return wrapper
