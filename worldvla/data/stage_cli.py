"""What every data-stage CLI shares: its log format, and the failures it reports as one `error:` line."""

from __future__ import annotations

import logging

from worldvla.errors import exit_on_input_errors

# Expected failures of a data stage (a bad value, a missing or existing file, an id out of range): one line
# and exit status 2 (worldvla.errors.exit_on_input_errors); WORLDVLA_TRACEBACK=1 shows the traceback.
STAGE_ERRORS = (FileNotFoundError, FileExistsError, ValueError, IndexError, KeyError)


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [%(name)s] %(message)s", datefmt="%H:%M:%S")


def run(fn, argv=None, *extra: type[Exception]):
    """Call a stage's `cli(argv)` through the one error wrapper, with the data stages' expected failures."""
    return exit_on_input_errors(fn, *STAGE_ERRORS, *extra)(argv)
