#!/usr/bin/env python
"""Action-model and world-model conversation JSONs with the official train / val_ind / val_ood split.

Thin wrapper over worldvla.data.cli.conversations_main; run with --help for every option. See data/README.md.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from worldvla.data.cli import conversations_main, run

if __name__ == "__main__":
    run(conversations_main)
