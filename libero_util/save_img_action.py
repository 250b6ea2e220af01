#!/usr/bin/env python
"""Regenerated HDF5 -> official <task>/trj_<i>/{action, imgs, imgs_third_view, imgs_wrist, eef_gripper_state, ...} folders.

Thin wrapper over worldvla.data.cli.export_main; run with --help for every option. See data/README.md.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from worldvla.data.cli import export_main, run

if __name__ == "__main__":
    run(export_main)
