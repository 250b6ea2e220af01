#!/usr/bin/env python
"""LeRobot v2.x or v3.0 dataset -> one HDF5 per episode (RynnVLA-002 layout) + action/state min/max JSON; resumable.

Thin wrapper over worldvla.data.lerobot.main; run with --help for every option. See docs/lerobot.md.
Example:
    python data/lerobot_to_hdf5.py --input data/raw/libero_lerobot --out data/processed/libero_lerobot_hdf5 \
        --episodes 0-9 --front-key observation.images.image --wrist-key observation.images.wrist_image
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from worldvla.data.lerobot import main

if __name__ == "__main__":
    main()
