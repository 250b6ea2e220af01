"""Where the media blocks of a token sequence are: `Span` and the one rule that finds them from ids.

The rule is the official attention-mask code's (docs/official_format.md §5): per kind, the begin and
end tokens are paired in order; one missing end becomes the last position, one surplus end is dropped,
any other mismatch is an error. The model's mask, the official pretokenized records and the samples
built by `worldvla.data.sequence.SequenceBuilder` (which records its spans directly, the same ones
this rule finds) all meet here, at the ground floor, so that no layer needs a higher one for it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from worldvla import vocab as V


@dataclass(frozen=True)
class Span:
    kind: str  # "image" | "action" | "state"
    start: int  # first position (the block's begin token)
    end: int  # one past the last position (the block's end token is end - 1)


class SpanError(ValueError):
    """Start/end tokens that the official pairing rule rejects."""


# (begin id, end id) of each kind of block.
SPAN_IDS = {"image": (V.BOI_ID, V.EOI_ID), "action": (V.ACTION_START_ID, V.ACTION_END_ID),
            "state": (V.STATE_START_ID, V.STATE_END_ID)}


def id_array(ids) -> np.ndarray:
    """A flat int64 array of a list, numpy array or (CPU or GPU) torch tensor of ids."""
    if hasattr(ids, "cpu"):  # a torch tensor, without importing torch here
        ids = ids.cpu().numpy()
    return np.asarray(ids, dtype=np.int64).reshape(-1)


def pair_blocks(ids: np.ndarray, start_id: int, end_id: int, what: str,
                open_end: int | None = None) -> list[tuple[int, int]]:
    """(start, end) positions, both inclusive, of the blocks of one kind, paired by the official rule.

    `open_end`: where a block without its end token ends (default: the last position)."""
    starts = np.flatnonzero(ids == start_id).tolist()
    ends = np.flatnonzero(ids == end_id).tolist()
    if len(starts) == len(ends) + 1:
        ends.append(len(ids) - 1 if open_end is None else open_end)  # missing end -> last position
    elif len(ends) == len(starts) + 1:
        ends.pop()  # surplus end dropped
    if len(starts) != len(ends):
        raise SpanError(f"{len(starts)} {what} starts vs {len(ends)} ends: not pairable (official rule)")
    return list(zip(starts, ends))


def spans_from_ids(ids, kinds=("image", "action", "state")) -> list[Span]:
    """The spans (end exclusive) of the given kinds, in position order, paired by the official rule."""
    arr = id_array(ids)
    spans = [Span(kind, s, e + 1) for kind in kinds for s, e in pair_blocks(arr, *SPAN_IDS[kind], kind)]
    return sorted(spans, key=lambda s: s.start)
