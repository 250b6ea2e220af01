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

import logging

import numpy as np

from worldvla import vocab
from worldvla.bins import N_BIN_EDGES, official_bin_centres
from worldvla.stats import (  # noqa: F401  (re-exported: the statistics live at the ground floor)
    ACTION_DIM,
    RYNNVLA_ACTION_STATS,
    RYNNVLA_STATE_STATS,
    STATE_DIM,
    STATS_PRESETS,
    WORLDVLA_ACTION_STATS,
    NormStats,
    load_stats,
)

log = logging.getLogger(__name__)

NORM_EPS = 1e-8  # official denominator epsilon


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
