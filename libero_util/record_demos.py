#!/usr/bin/env python
"""Record short noisy rollouts in LIBERO as raw demo HDF5 files (test data).

Thin wrapper over worldvla.data.cli.record_main; run with --help for every option. See data/README.md.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from worldvla.data.cli import record_main, run

if __name__ == "__main__":
    run(record_main)
