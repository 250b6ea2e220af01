"""Normalisation statistics: per-dimension min/max, the official hard-coded sets as named presets.

Ground floor (numpy only), so that the Recipe (worldvla/recipe.py) can validate and resolve the
statistics it names without importing the tokenizers; worldvla.tokenizers re-exports these names.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ACTION_DIM = 7  # dx dy dz, drx dry drz (axis-angle), gripper (-1 open, +1 close)
STATE_DIM = 8  # eef pos (3), eef axis-angle (3), gripper qpos (2)


@dataclass(frozen=True)
class NormStats:
    """Per-dimension min/max used to map values to [-1, 1]."""

    min: tuple[float, ...]
    max: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.min) != len(self.max):
            raise ValueError(f"min has {len(self.min)} entries, max has {len(self.max)}")
        for i, (lo, hi) in enumerate(zip(self.min, self.max)):
            if not (np.isfinite(lo) and np.isfinite(hi)):
                raise ValueError(f"min[{i}]={lo}, max[{i}]={hi}: statistics must be finite numbers")
            if lo > hi:
                raise ValueError(f"min[{i}]={lo} > max[{i}]={hi}: every min must be <= its max")
            if lo == hi:  # every value would map to one bin: the dimension collapses
                raise ValueError(f"min[{i}] == max[{i}] = {lo}: a dimension without range cannot be normalised")

    @property
    def dim(self) -> int:
        return len(self.min)

    @classmethod
    def from_data(cls, values: np.ndarray) -> NormStats:
        """Statistics of a (N, D) array of raw values."""
        values = np.asarray(values, dtype=np.float64)
        if values.ndim != 2 or not np.isfinite(values).all():
            raise ValueError(f"need a finite (N, D) array, got shape {values.shape}")
        return cls(tuple(values.min(0).tolist()), tuple(values.max(0).tolist()))

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"min": list(self.min), "max": list(self.max)}, indent=2))

    @classmethod
    def from_json(cls, path: str | Path) -> NormStats:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
            return cls(tuple(map(float, data["min"])), tuple(map(float, data["max"])))
        except FileNotFoundError:
            raise FileNotFoundError(f"normalisation stats not found: {path}") from None
        except (KeyError, TypeError) as err:
            raise ValueError(f"{path}: expected {{'min': [...], 'max': [...]}} ({err})") from None
        except ValueError as err:  # invalid JSON, or min > max / NaN from __post_init__
            raise ValueError(f"{path}: {err}") from None


# Official hard-coded statistics (official_format.md §2.1 and §10.1).
WORLDVLA_ACTION_STATS = NormStats(
    (-0.9375, -0.9375, -0.9375, -0.32571429, -0.375, -0.375, -1.0),
    (0.9375, 0.9375, 0.9375, 0.375, 0.375, 0.375, 1.0),
)
RYNNVLA_ACTION_STATS = NormStats(
    (-0.9375, -0.9375, -0.9375, -0.24214286, -0.375, -0.36428571, -1.0),
    (0.9375, 0.9375, 0.9375, 0.34821429, 0.375, 0.375, 1.0),
)
RYNNVLA_STATE_STATS = NormStats(
    (-0.4827807, -0.3309336, 0.00812818, 1.00279467, -3.63125079, -1.84273835, -0.00545302, -0.04201502),
    (0.210313803, 0.390426440, 1.47277813, 3.72486417, 3.56188956, 1.38632160, 0.0423214189, 0.00131260958),
)
STATS_PRESETS = {
    "worldvla": WORLDVLA_ACTION_STATS,
    "rynnvla_action": RYNNVLA_ACTION_STATS,
    "rynnvla_state": RYNNVLA_STATE_STATS,
}


def load_stats(spec: str | Path) -> NormStats:
    """A preset name (`worldvla`, `rynnvla_action`, `rynnvla_state`) or a JSON file path."""
    if str(spec) in STATS_PRESETS:
        return STATS_PRESETS[str(spec)]
    return NormStats.from_json(spec)
