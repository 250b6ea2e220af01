"""Batching: truncate to `max_len`, right-pad input ids with 0 and labels with -100 (official_format.md §4.4)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from worldvla import vocab as V
from worldvla.data.sequence import Sample
from worldvla.spans import Span


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, L) int64, padded with PAD_ID (0)
    labels: torch.Tensor  # (B, L) int64, padded with IGNORE_INDEX (-100)
    lengths: torch.Tensor  # (B,) int64, real length of each row after truncation
    spans: list[list[Span]]  # per row; spans cut by truncation are clipped, spans past it dropped
    kinds: list[str] = field(default_factory=list)  # per row: "action" | "world" (Sample.kind)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def world_rows(self) -> torch.Tensor:
        """(B,) bool: the world-model samples of the batch (the rest are action-model samples)."""
        return torch.tensor([k == "world" for k in self.kinds], dtype=torch.bool)


def collate(samples: list[Sample], max_len: int = 4096) -> Batch:
    """L = min(max_len, longest sample); rows are cut at L and right-padded."""
    if not samples:
        raise ValueError("collate: empty batch")
    length = min(max_len, max(len(s) for s in samples))
    ids = torch.full((len(samples), length), V.PAD_ID, dtype=torch.long)  # (B, L)
    labels = torch.full((len(samples), length), V.IGNORE_INDEX, dtype=torch.long)  # (B, L)
    lengths, spans = [], []
    for b, s in enumerate(samples):
        n = min(len(s), length)
        ids[b, :n] = torch.as_tensor(s.input_ids[:n], dtype=torch.long)
        labels[b, :n] = torch.as_tensor(s.labels[:n], dtype=torch.long)
        lengths.append(n)
        spans.append([Span(sp.kind, sp.start, min(sp.end, n)) for sp in s.spans if sp.start < n])
    return Batch(ids, labels, torch.tensor(lengths, dtype=torch.long), spans, [s.kind for s in samples])
