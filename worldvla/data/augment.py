"""Training-time augmentation of tokenised samples (off by default: the official recipe has none).

State jitter: RynnVLA-002's 8-D proprio state enters the action prompt as one bin token per dimension
(256 bins over the statistics' range: 2.7 mm per bin for x). A token is a category to the model, so
a small policy trained on a few demonstrations can key its actions on exact state tokens; one bin off
the demonstrated path (measured: the 2 mm between a regenerated frame 0 and the eval's frame 0) then
flips a predicted action from -0.93 to +0.93. Moving each state token by a few bins at random teaches
the model that neighbouring bins mean nearly the same state. Only prompt tokens move: the state is
never a target.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from worldvla import vocab as V
from worldvla.data.sequence import Sample
from worldvla.tokenizers.action import StateTokenizer

_STATE = StateTokenizer()
STATE_BIN_IDS = (_STATE.first_bin_id, _STATE.last_bin_id)  # inclusive range of the state's bin tokens


def jitter_state(sample: Sample, bins: int, rng: np.random.Generator) -> Sample:
    """`sample` with every unsupervised state bin token moved by a uniform integer in [-bins, bins]
    (kept inside the bin range); the same object when `bins` is 0 or it holds no state."""
    if bins <= 0:
        return sample
    ids = np.asarray(sample.input_ids)
    lo, hi = STATE_BIN_IDS
    at = np.flatnonzero((ids >= lo) & (ids <= hi) & (np.asarray(sample.labels) == V.IGNORE_INDEX))
    if not len(at):
        return sample
    ids = ids.copy()
    ids[at] = np.clip(ids[at] + rng.integers(-bins, bins + 1, len(at)), lo, hi)
    return replace(sample, input_ids=ids.tolist())
