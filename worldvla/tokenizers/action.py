"""Action (and proprio-state) tokenisation: min/max normalisation to [-1, 1] and 256-edge bins.

Formulas from the official item processors (official_format.md §2, §10.1):
    norm  = clip(2 (a - min) / (max - min + 1e-8) - 1, -1, 1)
    d     = numpy.digitize(norm, linspace(-1, 1, 256))          # 1..256 (256 only at norm == 1)
    token = d + start_id + 1                                     # actions: 10006..10261
    decode: index = clip(token - start_id - 1 - 1, 0, 254) -> bin centre -> un-normalise
Precision as the official code, so that executed actions are bit-identical to its eval: encoding
bins with numpy fp64 edges (its item processor), decoding reads bin centres computed in torch fp32
(its `decode_token_ids_to_actions`), and un-normalisation runs `(v + 1) / 2` in the centres' fp32
and the rest in fp64 against the fp64 min/max arrays, numpy's promotion in its `unnorm_min_max`.
The statistics are data (a JSON file next to a checkpoint); the official hard-coded sets are
provided as named presets so the released checkpoints and data keep working.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from worldvla import vocab
from worldvla.bins import N_BIN_EDGES, official_bin_centres

log = logging.getLogger(__name__)

NORM_EPS = 1e-8  # official denominator epsilon
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

    @property
    def dim(self) -> int:
        return len(self.min)

    @classmethod
    def from_data(cls, values: np.ndarray) -> "NormStats":
        """Statistics of a (N, D) array of raw values."""
        values = np.asarray(values, dtype=np.float64)
        if values.ndim != 2 or not np.isfinite(values).all():
            raise ValueError(f"need a finite (N, D) array, got shape {values.shape}")
        return cls(tuple(values.min(0).tolist()), tuple(values.max(0).tolist()))

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"min": list(self.min), "max": list(self.max)}, indent=2))

    @classmethod
    def from_json(cls, path: str | Path) -> "NormStats":
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


class BinTokenizer:
    """Maps (..., D) float vectors to (..., D) token ids and back, official binning."""

    def __init__(self, stats: NormStats, start_id: int, end_id: int, name: str = "values"):
        self.stats = stats
        self.start_id = start_id
        self.end_id = end_id
        self.name = name
        self._min = np.asarray(stats.min, dtype=np.float64)
        self._range = np.asarray(stats.max, dtype=np.float64) - self._min + NORM_EPS
        self.edges = np.linspace(-1.0, 1.0, N_BIN_EDGES)  # fp64, as the official encoder (np.digitize)
        self.centers = official_bin_centres()  # (255,) fp32, as the official decoder
        self.num_clipped = 0  # running count of values outside [min, max]

    @property
    def dim(self) -> int:
        return self.stats.dim

    @property
    def first_bin_id(self) -> int:
        return self.start_id + 2  # d = 1

    @property
    def last_bin_id(self) -> int:
        return self.start_id + 1 + N_BIN_EDGES  # d = 256

    @property
    def block_len(self) -> int:
        return self.dim + 2

    def _check(self, values: np.ndarray) -> np.ndarray:
        values = np.asarray(values, dtype=np.float64)
        if values.ndim == 0 or values.shape[-1] != self.dim:
            raise ValueError(f"{self.name} must have shape (..., {self.dim}), got {values.shape}")
        if not np.isfinite(values).all():
            bad = np.argwhere(~np.isfinite(values))[0].tolist()
            raise ValueError(f"{self.name} contain NaN/inf (first at index {bad})")
        return values

    def normalize(self, values: np.ndarray) -> np.ndarray:
        values = self._check(values)
        norm = 2.0 * (values - self._min) / self._range - 1.0
        outside = int(((norm < -1.0) | (norm > 1.0)).sum())
        if outside:
            self.num_clipped += outside
            log.debug("%d %s outside the normalisation range were clipped", outside, self.name)
        return np.clip(norm, -1.0, 1.0)

    def unnormalize(self, norm: np.ndarray) -> np.ndarray:
        """[-1, 1] -> raw units (float64). fp32 input (bin centres, the action head's output) keeps
        fp32 for `(v + 1) / 2`, as numpy does in the official eval; anything else runs in fp64."""
        norm = np.asarray(norm)
        if norm.dtype != np.float32:
            norm = norm.astype(np.float64)
        half = (norm + norm.dtype.type(1.0)) / norm.dtype.type(2.0)
        return half.astype(np.float64) * self._range + self._min

    def encode(self, values: np.ndarray) -> np.ndarray:
        """(..., D) raw values -> (..., D) int64 token ids."""
        digit = np.digitize(self.normalize(values), self.edges)  # 1..256
        return digit.astype(np.int64) + self.start_id + 1

    def decode(self, ids: np.ndarray) -> np.ndarray:
        """(..., D) token ids -> (..., D) raw values at bin centres (out-of-range ids clip)."""
        ids = np.asarray(ids, dtype=np.int64)
        if ids.ndim == 0 or ids.shape[-1] != self.dim:
            raise ValueError(f"{self.name} token ids must have shape (..., {self.dim}), got {ids.shape}")
        index = np.clip(ids - self.start_id - 1 - 1, 0, N_BIN_EDGES - 2)
        return self.unnormalize(self.centers[index])

    def encode_block(self, vector: np.ndarray) -> list[int]:
        """One vector -> [start, D bin ids, end]."""
        return [self.start_id, *self.encode(np.asarray(vector).reshape(self.dim)).tolist(), self.end_id]

    def half_bin(self) -> np.ndarray:
        """Largest round-trip error per dimension (raw units)."""
        return self._range / (N_BIN_EDGES - 1)


class ActionTokenizer(BinTokenizer):
    """7-D LIBERO actions <-> ids 10006..10261, blocks [10004, 7 ids, 15004]."""

    def __init__(self, stats: NormStats = WORLDVLA_ACTION_STATS):
        if stats.dim != ACTION_DIM:
            raise ValueError(f"action stats must be {ACTION_DIM}-D, got {stats.dim}")
        super().__init__(stats, vocab.ACTION_START_ID, vocab.ACTION_END_ID, name="actions")


class StateTokenizer(BinTokenizer):
    """8-D proprio state <-> ids 15506..15761, blocks [15504, 8 ids, 16004] (RynnVLA-002)."""

    def __init__(self, stats: NormStats = RYNNVLA_STATE_STATS):
        if stats.dim != STATE_DIM:
            raise ValueError(f"state stats must be {STATE_DIM}-D, got {stats.dim}")
        super().__init__(stats, vocab.STATE_START_ID, vocab.STATE_END_ID, name="states")
