"""A FlexAttention `BlockMask` of WorldVLA's action mask (worldvla.model.masks), for benchmarks/decode.py.

Training uses the dense SDPA mask (`masks.batch_mask`); this form is kept here, outside the package, as
the measured alternative: benchmarks/decode.py ("flex") compares a training-shape forward (and backward)
with it against SDPA, and tests check it against the official rule. The model takes only additive masks;
`flex_attention_in(block_mask)` runs its full-sequence forward (`model(tokens)`) with FlexAttention
under the block mask instead, by swapping the model's attention kernel for the duration of the block.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from worldvla.model import transformer as T
from worldvla.model.masks import ActionLayout, MaskError, _as_layout, _bounds, _membership, _relations

_COMPILED: dict = {}


def flex_attention_for(device: torch.device):
    """FlexAttention: compiled on CUDA (the fused kernel; eager would materialise the L x L scores),
    eager elsewhere (CPU tests, where it is only a reference path)."""
    from torch.nn.attention.flex_attention import flex_attention  # optional kernel module: only here

    if device.type != "cuda":
        return flex_attention
    if "cuda" not in _COMPILED:
        _COMPILED["cuda"] = torch.compile(flex_attention, dynamic=False)
    return _COMPILED["cuda"]


@contextmanager
def flex_attention_in(block_mask):
    """Inside the block, a full-sequence `model(tokens)` (mask=None, no cache) attends with FlexAttention
    under `block_mask` instead of SDPA's causal kernel."""
    sdpa = T.attend

    def attend(q, k, v, mask):
        if mask is not None:
            raise ValueError("under flex_attention_in call the model with mask=None (the block mask is used)")
        return flex_attention_for(q.device)(q, k, v, block_mask=block_mask, enable_gqa=q.shape[1] != k.shape[1])

    T.attend = attend
    try:
        yield
    finally:
        T.attend = sdpa


def flex_tables(layouts: list[ActionLayout], length: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position lookup tables for the mask_mod: (B, L) index of the isolated block holding each
    query position (n_max = none) and (B, n_max + 1, L) keys denied to each isolated block.
    Requires non-overlapping blocks (always true for well-formed sequences)."""
    n_max = max(1, max(len(lay.blocks) for lay in layouts))
    qblock = torch.full((len(layouts), length), n_max, dtype=torch.long)
    positions = torch.arange(length)
    denied = torch.zeros(len(layouts), n_max + 1, length, dtype=torch.bool)
    k_in = _membership(_bounds(layouts), positions[None].expand(len(layouts), -1))  # (B, n, L)
    denied[:, :n_max] = (_relations(layouts, "cpu") @ k_in) > 0
    for b, lay in enumerate(layouts):
        ends = [-1]
        for s, e in sorted(lay.blocks):
            if s <= ends[-1]:
                raise MaskError(f"row {b}: overlapping action blocks; use the SDPA mask for this layout")
            ends.append(e)
        for i in lay.isolated():
            s, e = lay.blocks[i]
            qblock[b, s:min(e, length - 1) + 1] = i
    return qblock.to(device), denied.to(device)


def flex_mask_mod(layouts: list[ActionLayout], length: int, action_mask: bool = True, device=None):
    """The mask_mod(b, h, q, k) of FlexAttention for these layouts."""
    if not action_mask:
        return lambda b, h, q, k: q >= k
    qblock, denied = flex_tables(layouts, length, device)

    def mask_mod(b, h, q, k):
        return (q >= k) & ~denied[b, qblock[b, q], k]

    return mask_mod


def flex_block_mask(spans_or_ids_per_row, length: int, action_mask: bool = True, device="cpu", block_size: int = 128):
    """FlexAttention BlockMask (B, 1, L, L) of a right-padded batch."""
    from torch.nn.attention.flex_attention import create_block_mask  # optional kernel module: only here

    layouts = [ActionLayout(length, lay.blocks, lay.last_image_end)
               for lay in (_as_layout(x, length) for x in spans_or_ids_per_row)]
    mod = flex_mask_mod(layouts, length, action_mask, device)
    return create_block_mask(mod, len(layouts), None, length, length, device=device, BLOCK_SIZE=block_size)
