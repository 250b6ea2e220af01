"""WorldVLA's attention mask: causal, plus "an action block does not see earlier action blocks".

Official rule (`generate_att_mask_3`, official_format.md §5), per sequence of length L:
1. start from the causal (lower-triangular) mask;
2. pair image starts (8197) with image ends (8196) and action starts (10004) with action ends (15004)
   in order; one missing end becomes L-1, one surplus end is dropped, anything else is an error;
3. last_image_end = end of the last image pair (-1 without images);
4. for each action block (s, e) with s > last_image_end and each action block (s', e') with e' < s:
   mask[s..e, s'..e'] = False (inclusive).

The two forms the package uses (both checked in tests against a literal transcription of the official
loops, tests/reference_masks.py):
- `ActionLayout` (worldvla.model.layout): the blocks of one sequence, from token ids or `Span` metadata;
- `dense_mask` / `batch_mask`: full (L, L) / (B, 1, L, L) boolean masks, the SDPA path for training
  (causal fill + one row-slice update per isolated block: ~20 ms at L = 4096 on one CPU core);
- `RowMasker` / `mask_rows(layouts, q_pos, S)`: (B, 1, Lq, S) rows for arbitrary query positions over
  S cache slots, built as causal & ~(Q R K) from block memberships: the cached-decoding path;
- `to_additive`: the 0 / dtype-min float form of a boolean mask, the only mask form the model takes.
`action_mask=False` everywhere gives the plain causal mask (the paper's no-action-mask ablation).
A FlexAttention BlockMask of the same rule is benchmarked in benchmarks/flex_masks.py (training uses SDPA).
"""

from __future__ import annotations

import numpy as np
import torch

from worldvla.model.layout import ActionLayout
from worldvla.spans import SpanError as MaskError  # noqa: F401 (re-exported)
from worldvla.spans import spans_from_ids  # noqa: F401 (re-exported)


def _is_span(item) -> bool:
    """Duck-typed `Span` check (kind/start/end), so this module imports without the data package."""
    return all(hasattr(item, a) for a in ("kind", "start", "end"))


def _as_layout(item, length: int | None) -> ActionLayout:
    if isinstance(item, ActionLayout):
        return item
    items = list(item.tolist() if isinstance(item, (torch.Tensor, np.ndarray)) else item)
    if items and _is_span(items[0]) or (not items and length is not None):
        if length is None:
            raise ValueError("building a mask from spans needs the sequence length L")
        return ActionLayout.from_spans(items, length)
    return ActionLayout.from_ids(items)


def _bounds(layouts: list[ActionLayout], device=None) -> torch.Tensor:
    """(B, n_max, 2) inclusive block bounds; absent blocks are the empty range [-1, -2]."""
    n_max = max(1, max(len(lay.blocks) for lay in layouts))
    bounds = torch.tensor([-1, -2]).repeat(len(layouts), n_max, 1)  # (B, n_max, 2)
    for b, lay in enumerate(layouts):
        if lay.blocks:
            bounds[b, : len(lay.blocks)] = torch.tensor(lay.blocks, dtype=torch.long)
    return bounds.to(device)


def _membership(bounds: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """(B, n_max, P) float: 1 where positions[b, p] lies inside block n of row b."""
    p = positions[:, None, :]  # (B, 1, P)
    return ((p >= bounds[..., :1]) & (p <= bounds[..., 1:])).float()  # (B, n_max, P)


def _relations(layouts: list[ActionLayout], device) -> torch.Tensor:
    n_max = max(1, max(len(lay.blocks) for lay in layouts))
    rel = torch.zeros(len(layouts), n_max, n_max)
    for b, lay in enumerate(layouts):
        n = len(lay.blocks)
        rel[b, :n, :n] = torch.from_numpy(lay.relation()).float()
    return rel.to(device)


class RowMasker:
    """Boolean attention rows for arbitrary query positions over key slots 0..S-1.

    Row q equals row q of the full mask of the sequence each layout describes (keys past a layout's
    length are causal-only): causal & ~(Q R K), with Q/K block memberships and R the block relation.
    The key side (R K) is computed once, so a decode step costs one small (Lq x n) @ (n x S) product.
    """

    def __init__(self, layouts, num_keys: int, action_mask: bool = True, device=None):
        self.layouts = [layouts] if isinstance(layouts, ActionLayout) else list(layouts)
        self.num_keys = num_keys
        self.keys = torch.arange(num_keys, device=device)
        self.active = action_mask and any(lay.isolated() for lay in self.layouts)
        if self.active:
            self.bounds = _bounds(self.layouts, device)
            k_in = _membership(self.bounds, self.keys[None].expand(len(self.layouts), -1))  # (B, n, S)
            self.denied_keys = _relations(self.layouts, device) @ k_in  # (B, n, S): > 0 = denied to block n

    def causal_below(self, position: int) -> bool:
        """True if every row's queries before `position` get plain causal rows (no isolated block starts
        before it): a prefill of those positions needs no mask tensor."""
        return not self.active or all(lay.blocks[i][0] >= position for lay in self.layouts for i in lay.isolated())

    def __call__(self, q_pos: torch.Tensor) -> torch.Tensor:
        """q_pos (B, Lq) or (Lq,) -> (B, 1, Lq, S) bool."""
        q_pos = torch.as_tensor(q_pos, dtype=torch.long, device=self.keys.device)
        if q_pos.ndim == 1:
            q_pos = q_pos[None].expand(len(self.layouts), -1)  # (B, Lq)
        allowed = self.keys[None, None, :] <= q_pos[..., None]  # (B, Lq, S) causal
        if self.active:
            q_in = _membership(self.bounds, q_pos)  # (B, n, Lq)
            allowed &= (q_in.transpose(1, 2) @ self.denied_keys) == 0  # (B, Lq, S)
        return allowed[:, None]  # (B, 1, Lq, S)


def mask_rows(layouts, q_pos: torch.Tensor, num_keys: int, action_mask: bool = True) -> torch.Tensor:
    """(B, 1, Lq, S) boolean rows for query positions `q_pos` (see RowMasker)."""
    q_pos = torch.as_tensor(q_pos, dtype=torch.long)
    return RowMasker(layouts, num_keys, action_mask, q_pos.device)(q_pos)


def _full_mask(layout: ActionLayout, length: int, action_mask: bool) -> torch.Tensor:
    """(L, L) bool: causal, then each isolated block's rows lose the keys of the blocks it may not see."""
    mask = torch.ones(length, length, dtype=torch.bool).tril_()
    if not action_mask:
        return mask
    rel = layout.relation()
    for i in layout.isolated():
        s, e = layout.blocks[i]
        denied = torch.zeros(length, dtype=torch.bool)
        for j in np.flatnonzero(rel[i]):
            denied[layout.blocks[j][0] : layout.blocks[j][1] + 1] = True
        mask[s : e + 1] &= ~denied
    return mask


def dense_mask(spans_or_ids, length: int | None = None, action_mask: bool = True) -> torch.Tensor:
    """(L, L) boolean mask (True = may attend) of one sequence, from its `Span`s (+ L) or its token ids.

    Cost: one causal L x L fill plus K row slices (a few ms at L = 4096), cheap enough for the data path."""
    layout = _as_layout(spans_or_ids, length)
    return _full_mask(layout, layout.length if length is None else length, action_mask)


def batch_mask(spans_or_ids_per_row, length: int, action_mask: bool = True) -> torch.Tensor:
    """(B, 1, L, L) boolean masks of a right-padded batch (padding is causal-only, as officially)."""
    return torch.stack([_full_mask(_as_layout(x, length), length, action_mask) for x in spans_or_ids_per_row])[:, None]


def to_additive(mask: torch.Tensor | None, dtype: torch.dtype = torch.float32) -> torch.Tensor | None:
    """Boolean mask -> additive float mask (0 where allowed, finfo(dtype).min elsewhere), in the dtype the
    attention runs in (the model's; bf16 under bf16 training). None (plain causal) stays None."""
    if mask is None:
        return None
    out = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    return out.masked_fill_(~mask, torch.finfo(dtype).min)
