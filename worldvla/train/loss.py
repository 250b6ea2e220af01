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

from worldvla import vocab as V

LOSS_FORMS = ("official", "paper")


@dataclass
class LossConfig:
    world_weight: float = 0.04  # official CE class weight of image-code targets (WorldVLA "w004")
    z_loss_weight: float = 1e-5  # official z-loss weight
    form: str = "official"  # official (class-weighted mean) | paper (L_action + w * L_world)
    image_code_slice: tuple[int, int] = V.IMAGE_CODE_LOSS_SLICE  # class ids [lo, hi) given world_weight

    def __post_init__(self) -> None:
        if self.form not in LOSS_FORMS:
            raise ValueError(f"loss form {self.form!r}; valid: {LOSS_FORMS}")


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
        picked = logits.float()  # (N, V)
    elif logits.shape[:2] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} disagree on (B, L)")
    else:
        picked = logits[at].float()
    target = labels[:, 1:][at[:, :-1]]  # (N,) the supervised labels, in the same order
    n_valid = target.numel()
    lse = torch.logsumexp(picked, dim=-1)  # (N,)
    nll = lse - picked.gather(-1, target[:, None])[:, 0]
    zero = logits.sum() * 0.0  # keeps the graph when nothing is supervised
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
