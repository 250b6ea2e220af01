"""What every data-stage CLI shares: its log format, and one `error:` line for an expected failure."""

from __future__ import annotations

import logging
import os
import sys


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [%(name)s] %(message)s", datefmt="%H:%M:%S")


def run(fn, argv=None):
    """Call a stage; expected failures (bad input, missing file) print one `error:` line and exit 1.
    Set WORLDVLA_TRACEBACK=1 to see the traceback."""
    try:
        return fn(argv)
    except (FileNotFoundError, FileExistsError, ValueError, IndexError, KeyError) as err:
        if os.environ.get("WORLDVLA_TRACEBACK"):
            raise
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
