"""The grammar flag of a decode step: whether the unconstrained argmax over the whole vocabulary would
fall outside the id range [lo, hi] the step chose from, without computing the whole LM head where a
bound already decides it.

The flag is exactly what `model.logits(hidden).argmax(-1)` outside lo..hi gives. Computing it so costs
one full LM-head row per query, which on CPU makes a small model's chunk ~2x slower (benchmarks/README.md,
"Grammar check cost"). A trained model's head rows are mostly close to one another (the tokens it never
predicts drift together), so the rows outside lo..hi are split, once per weight version, into the
EXACT_ROWS farthest from their mean c (computed exactly each step) and the rest, which lie within r of
c: no logit of the rest exceeds c.h + r |h| (Cauchy-Schwarz). Where the exact rows and that bound are
clearly below the best in-range logit, or an exact row clearly above it, the flag is decided; "clearly"
is a margin of a few float rounding errors of a dot product (differently blocked matrix products round
differently). Every other query falls back to the full head row, so the flag never changes, only its
cost. The shortcut needs a host-side branch: it runs eagerly on CPU; CUDA (graphs) and compiled steps
compute the full rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

EXACT_ROWS = 256  # head rows outside the range computed exactly; the rest share one bound


@dataclass
class RangeBound:
    key: tuple  # the weight version it was made from
    rows_t: torch.Tensor  # (dim, N + 1): the N head rows outside lo..hi farthest from the centre, then the centre
    # (2, N + 1), per unit of |h|: [0] an exact row this far above the range wins (never the centre);
    # [1] below this, a row (the centre: every row it bounds) loses
    thresholds: torch.Tensor


@torch.no_grad()
def range_bound(model, lo: int, hi: int) -> RangeBound:
    weight = model.lm_head.weight
    key = (weight.data_ptr(), weight._version, weight.dtype, weight.device)
    cache = model.__dict__.setdefault("_grammar_bounds", {})
    found = cache.get((lo, hi))
    if found is not None and found.key == key:
        return found
    outside = torch.ones(weight.shape[0], dtype=torch.bool, device=weight.device)
    outside[lo : hi + 1] = False
    ids = outside.nonzero()[:, 0]
    rows = weight[ids].float()
    centre = rows.mean(0)
    dist = (rows - centre).norm(dim=-1)
    far = dist.topk(min(EXACT_ROWS, len(ids))).indices
    dist[far] = 0.0  # what is left: the rows the centre bounds
    # |fl(w.h) - w.h| <= ~dim * eps * |w| |h| for any summation order; 4x that, for every product compared
    margin = 4 * (weight.shape[1] + 2) * torch.finfo(weight.dtype).eps * float(weight.float().norm(dim=-1).max())
    thresholds = torch.tensor([[margin], [-margin]], device=weight.device).repeat(1, len(far) + 1)
    thresholds[0, -1] = torch.inf
    thresholds[1, -1] -= float(dist.max())
    rows_t = torch.cat([rows[far], centre[None]]).to(weight.dtype).T.contiguous()
    found = cache[(lo, hi)] = RangeBound(key, rows_t, thresholds.to(weight.dtype))
    return found


def usable(model, hidden: torch.Tensor) -> bool:
    return (hidden.device.type == "cpu" and hasattr(model, "lm_head") and not model.cfg.mask_image_logits
            and not torch.compiler.is_compiling())


def outside_range(model, hidden: torch.Tensor, lo: int, hi: int, best: torch.Tensor) -> torch.Tensor:
    """Whether the free argmax of each query in `hidden` (..., dim) lies outside lo..hi; `best` (...) is the
    largest logit among lo..hi (as the step computed it)."""
    if not usable(model, hidden):
        free = model.logits(hidden).argmax(-1)
        return (free < lo) | (free > hi)
    bound = range_bound(model, lo, hi)
    h = hidden.reshape(-1, hidden.shape[-1])
    # each bounded logit's gap to the best in-range logit, in units of |h| (as few ops as can be: every step)
    gap = torch.addmm(best.reshape(-1, 1), h, bound.rows_t, beta=-1)
    gap.div_(torch.linalg.vector_norm(h, dim=-1, keepdim=True))
    worst = (gap.unsqueeze(1) - bound.thresholds).amax(-1)  # (Q, 2)
    flag = worst[:, 0] > 0  # an exact row clearly above the range: outside
    decided = (worst[:, 1] < 0).logical_or_(flag)  # or every row clearly below it: inside
    if not bool(decided.all()):
        unsure = ~decided
        free = model.logits(h[unsure]).argmax(-1)
        flag[unsure] = (free < lo) | (free > hi)
    return flag.view(hidden.shape[:-1])
