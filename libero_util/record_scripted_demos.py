#!/usr/bin/env python
"""Record scripted-expert demos of LIBERO tasks as raw LIBERO demo HDF5 files.

Thin wrapper over worldvla.data.record_scripted (also `worldvla record-demos`); run with --help for
every option. See docs/scripted_expert.md.
Example:
    python libero_util/record_scripted_demos.py suite=libero_object tasks=0-9 episodes=0-9 \\
        out=data/raw/libero_object resolution=128
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from worldvla.data.record_scripted import main

if __name__ == "__main__":
    sys.exit(main())
