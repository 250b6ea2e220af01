"""ActionLayout: where the action blocks of one sequence are, and which of them the action mask isolates
(the block structure behind every mask of worldvla.model.masks, read from ids or from `Span`s)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from worldvla import vocab as V
from worldvla.spans import Span, id_array
from worldvla.spans import pair_blocks as _pairs


@dataclass(frozen=True)
class ActionLayout:
    """Inclusive action blocks of one sequence (official pairing order) and the last image end."""

    length: int
    blocks: tuple[tuple[int, int], ...]
    last_image_end: int = -1

    @classmethod
    def from_spans(cls, spans: Sequence[Span], length: int) -> ActionLayout:
        """Spans past `length` are clipped (a truncated block ends at L-1, as an unmatched start does)."""
        clip = lambda s: (s.start, min(s.end, length) - 1)
        images = [clip(s) for s in spans if s.kind == "image" and s.start < length]
        blocks = tuple(clip(s) for s in spans if s.kind == "action" and s.start < length)
        return cls(length, blocks, images[-1][1] if images else -1)

    @classmethod
    def from_ids(cls, ids, open_until: int | None = None) -> ActionLayout:
        """Same pairing as `spans_from_ids`, without building Span objects.

        `open_until=S`: a layout over S slots in which an unclosed block or image extends to S - 1. For
        every later query position q < S whose ids add no start/end token, its rows equal the rows of
        the official rule applied to ids[:q + 1] (there the open span ends at q: it holds q either way,
        and no block after it exists to be denied). So a decoder rebuilds it only at start/end tokens."""
        arr = id_array(ids)
        end = None if open_until is None else open_until - 1
        images = _pairs(arr, V.BOI_ID, V.EOI_ID, "image", end)
        blocks = tuple(_pairs(arr, V.ACTION_START_ID, V.ACTION_END_ID, "action", end))
        return cls(len(arr) if open_until is None else open_until, blocks, images[-1][1] if images else -1)

    def isolated(self) -> list[int]:
        """Indices of blocks that may not see earlier blocks (start after the last image)."""
        return [i for i, (s, _) in enumerate(self.blocks) if s > self.last_image_end]

    def relation(self) -> np.ndarray:
        """(n_blocks, n_blocks) bool: R[i, j] = block i is isolated and block j ends before i starts."""
        n = len(self.blocks)
        rel = np.zeros((n, n), dtype=bool)
        for i in self.isolated():
            rel[i] = [e < self.blocks[i][0] for _, e in self.blocks]
        return rel
