"""The episode HDF5 files between the LeRobot importer (lerobot.py writes them) and its export step
(lerobot_export.py reads them): their names, and the error both raise. Its own module so that the importer can
run the export step and the export step need not import the importer."""

from __future__ import annotations

import re
from pathlib import Path

EPISODE_FILE = "episode_{:06d}.hdf5"  # official output name


class LeRobotError(ValueError):
    """A LeRobot dataset that cannot be read as asked; the message names the file and field."""


def episode_files(hdf5_dir: str | Path) -> list[Path]:
    return sorted(p for p in Path(hdf5_dir).glob("episode_*.hdf5") if re.fullmatch(r"episode_\d+\.hdf5", p.name))
