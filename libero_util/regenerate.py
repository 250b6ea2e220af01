#!/usr/bin/env python
"""Replay raw LIBERO demos: drop no-ops and failed demos, re-render at 256/512 px, per-task HDF5 (+ optional PNG/npy export).

Thin wrapper over worldvla.data.cli.regenerate_main; run with --help for every option. See data/README.md.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from worldvla.data.cli import regenerate_main, run

if __name__ == "__main__":
    run(regenerate_main)
