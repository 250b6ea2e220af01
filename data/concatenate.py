#!/usr/bin/env python
"""Concatenate pretokenized world-model and action-model sets into one training index.

Thin wrapper over worldvla.data.cli.concat_main; run with --help for every option. See data/README.md.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from worldvla.data.cli import concat_main, run

if __name__ == "__main__":
    run(concat_main)
