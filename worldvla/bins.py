"""The official 256-edge binning of actions and states into tokens, at the ground floor.

Both the action tokenizer (worldvla.tokenizers.action) and the RynnVLA-002 action head's training
targets (worldvla.model.action_head) decode bins to values with these centres, so they live below both.
"""

from __future__ import annotations

import numpy as np

N_BIN_EDGES = 256  # official: np.linspace(-1, 1, 256)


def official_bin_centres() -> np.ndarray:
    """(255,) float32 bin centres exactly as the official decode computes them: torch fp32
    `linspace(-1, 1, 256)`, then `(edges[:-1] + edges[1:]) / 2` in fp32 (not fp64 rounded to fp32)."""
    import torch  # kept local: the ground floor imports without torch

    edges = torch.linspace(-1.0, 1.0, N_BIN_EDGES, dtype=torch.float32)
    return ((edges[:-1] + edges[1:]) / 2.0).numpy()
