"""The tests' oracle for WorldVLA's attention mask: a literal transcription of the official loops
(`generate_att_mask_3`, docs/official_format.md §5) on one sequence of token ids.

Deliberately slow and written independently of worldvla.model.masks (its own pairing loop), so the
package's fast forms (training SDPA masks, decode rows) are checked against the official rule and not
against themselves. benchmarks/baselines.py also uses it: the official per-step mask is the baseline
the decoders are timed against.
"""

from __future__ import annotations

import numpy as np
import torch

from worldvla import vocab as V
from worldvla.model.masks import MaskError


def official_pairs(ids: list[int], start_id: int, end_id: int, what: str) -> list[tuple[int, int]]:
    """Starts and ends paired in order; one missing end becomes L-1, one surplus end is dropped."""
    starts = [i for i, t in enumerate(ids) if t == start_id]
    ends = [i for i, t in enumerate(ids) if t == end_id]
    if len(starts) == len(ends) + 1:
        ends.append(len(ids) - 1)
    elif len(ends) == len(starts) + 1:
        ends.pop()
    if len(starts) != len(ends):
        raise MaskError(f"{len(starts)} {what} starts vs {len(ends)} ends: not pairable (official rule)")
    return list(zip(starts, ends))


def reference_mask(ids) -> torch.Tensor:
    """(L, L) bool, True = may attend: causal, and every action block after the last image loses the
    keys of the action blocks that end before it starts (inclusive bounds, as the official loops)."""
    ids = np.asarray(ids.cpu() if isinstance(ids, torch.Tensor) else ids, dtype=np.int64).reshape(-1).tolist()
    L = len(ids)
    mask = torch.tril(torch.ones(L, L)).bool()
    images = official_pairs(ids, V.BOI_ID, V.EOI_ID, "image")
    actions = official_pairs(ids, V.ACTION_START_ID, V.ACTION_END_ID, "action")
    last_image_end = images[-1][1] if images else -1
    for s, e in actions:
        if s > last_image_end:
            for ps, pe in [(ps, pe) for ps, pe in actions if pe < s]:
                mask[s:e + 1, ps:pe + 1] = False
    return mask
