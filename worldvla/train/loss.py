"""WorldVLA's joint loss: next-token cross entropy with image codes down-weighted, plus z-loss.

Official form (default; official_format.md §4.3): shifted CE over the full vocabulary in fp32 with a
per-class weight vector w (w = 1, except w[3:8195] = 0.04, the image-code classes, slice kept off by
one as in the official code), reduced as a weighted mean  sum_i w[y_i] nll_i / sum_i w[y_i]  over all
supervised positions of the micro-batch; plus z_loss_weight * mean_i logsumexp(logits_i)^2.

Paper form (`form="paper"`): L_action + world_weight * L_world, each a plain mean over the supervised
positions of its own samples (a sample is a world-model sample when an image start 8197 is among its
labels), plus the same z term.

Either way the action CE, world CE (unweighted means) and z term are reported separately.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

from worldvla import vocab as V
from worldvla.config import check_literals
from worldvla.train.config import LossForm


@dataclass
class LossConfig:
    world_weight: float = 0.04  # official CE class weight of image-code targets (WorldVLA "w004")
    z_loss_weight: float = 1e-5  # official z-loss weight
    form: LossForm = "official"  # official (class-weighted mean) | paper (L_action + w * L_world)
    image_code_slice: tuple[int, int] = V.IMAGE_CODE_LOSS_SLICE  # class ids [lo, hi) given world_weight
    chunk: int = 0  # > 0: positions per chunk of chunked_lse_target (0 = the whole logits in one fp32 copy)

    def __post_init__(self) -> None:
        check_literals(self)


@dataclass
class LossOutput:
    total: torch.Tensor  # what to backpropagate
    ce: torch.Tensor  # the CE part of total (weighted mean, or action + w * world)
    action_ce: torch.Tensor | None  # mean CE over action-sample targets (None: no such targets)
    world_ce: torch.Tensor | None  # mean CE over world-sample targets
    z_loss: torch.Tensor  # mean squared log-partition over supervised positions (unweighted)
    n_action: int  # supervised positions in action samples
    n_world: int  # supervised positions in world samples


def class_weights(cfg: LossConfig, vocab_size: int, device=None) -> torch.Tensor:
    w = torch.ones(vocab_size, device=device)
    lo, hi = cfg.image_code_slice
    w[lo:hi] = cfg.world_weight
    return w


def world_rows(labels: torch.Tensor) -> torch.Tensor:
    """(B,) bool: rows whose targets include an image (world-model samples); the rule Sample applies to
    samples built from bare ids and labels, for callers that pass no `world` rows (Batch.world_rows)."""
    return (labels == V.BOI_ID).any(dim=1)


def _lse_target(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logits = logits.float()
    return torch.logsumexp(logits, dim=-1), logits.gather(-1, target[..., None])[..., 0]


def chunked_lse_target(logits: torch.Tensor, target: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(logsumexp, target logit), each fp32 of shape logits.shape[:-1], of logits (B, T, V) or packed (N, V)
    read `chunk` positions at a time. Each chunk's fp32 copy is recomputed in backward (non-reentrant
    checkpoint), so only one chunk's copy exists at a time instead of the whole fp32 tensor; the values
    are the unchunked ones."""
    dim = logits.dim() - 2  # the positions: T of (B, T, V), N of (N, V)
    # split, not slices: one backward node concatenates the chunks' gradients (slices would each add a
    # zero-filled full-size gradient)
    parts = [checkpoint(_lse_target, piece, idx, use_reentrant=False)
             for piece, idx in zip(logits.split(chunk, dim=dim), target.split(chunk, dim=dim))]
    return torch.cat([p[0] for p in parts], dim=dim), torch.cat([p[1] for p in parts], dim=dim)


def predicting_positions(labels: torch.Tensor) -> torch.Tensor:
    """(B, L) bool: the positions whose logits the loss reads (position t predicts label t + 1)."""
    at = torch.zeros_like(labels, dtype=torch.bool)
    at[:, :-1] = labels[:, 1:] != V.IGNORE_INDEX
    return at


def compute_loss(logits: torch.Tensor, labels: torch.Tensor, cfg: LossConfig | None = None,
                 world: torch.Tensor | None = None) -> LossOutput:
    """logits (B, L, V) for inputs (B, L), or (N, V) packed at `predicting_positions(labels)` (the model's
    `at=`: the same loss, the only logits it reads); labels (B, L) aligned with the inputs (-100 = ignored);
    `world` (B,) bool: the world-model rows, the batch's sample kinds (None: read from the labels)."""
    cfg = cfg or LossConfig()
    at = predicting_positions(labels)
    if logits.dim() == 2:
        if logits.shape[0] != int(at.sum()):
            raise ValueError(f"packed logits {tuple(logits.shape)}: expected one row per supervised label ({int(at.sum())})")
        picked = logits  # (N, V)
    elif logits.shape[:2] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} disagree on (B, L)")
    else:
        picked = logits[at]
    target = labels[:, 1:][at[:, :-1]]  # (N,) the supervised labels, in the same order
    n_valid = target.numel()
    # fp32 per chunk of positions when cfg.chunk > 0 (the logits stay in their dtype), else all at once
    lse, target_logit = chunked_lse_target(picked, target, cfg.chunk) if cfg.chunk > 0 else _lse_target(picked, target)
    nll = lse - target_logit  # (N,)
    zero = logits.sum().float() * 0.0  # keeps the graph when nothing is supervised
    z = lse.pow(2).sum() / n_valid if n_valid else zero

    is_world = (world_rows(labels) if world is None else world.to(labels.device, torch.bool))  # (B,)
    world = is_world[:, None].expand_as(at)[at]  # (N,) the kind of each supervised label
    action = ~world
    n_world, n_action = int(world.sum()), int(action.sum())
    world_ce = (nll * world).sum() / n_world if n_world else None
    action_ce = (nll * action).sum() / n_action if n_action else None

    if cfg.form == "official":
        w = class_weights(cfg, picked.shape[-1], picked.device)[target]  # (N,)
        ce = (w * nll).sum() / w.sum() if n_valid else zero
    else:
        ce = (action_ce if action_ce is not None else zero) + cfg.world_weight * (
            world_ce if world_ce is not None else zero)
    total = ce + cfg.z_loss_weight * z
    return LossOutput(total, ce, action_ce, world_ce, z, n_action, n_world)
