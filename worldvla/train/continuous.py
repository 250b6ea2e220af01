"""RynnVLA-002's continuous action head trained jointly with the backbone (`model.action_head: true`).

`WithActionHead` holds the backbone's modules and the head under the official checkpoint names
(`model.*`, `lm_head.*`, `action_head.*`; official_format.md §10.2), so the exported state dict is the
RynnVLA-002 layout with no renaming, and FSDP / DDP / activation checkpointing see one ordinary module
whose `forward` is the only entry point (their hooks run on `__call__`).

Per micro-batch: the backbone's final-norm hidden states feed the LM head (cross entropy, as without
the head) and, for the rows holding more than one action-start token (official selection: action
samples with K >= 2), the head, whose (K, 7) output is compared by L1 with the bin centres of the
ground-truth action tokens. The total loss is CE + `train.action_head_weight` * L1 (+ z-loss).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from worldvla.config import ConfigError
from worldvla.model.action_head import (
    ActionHead,
    ActionHeadConfig,
    l1_to_bin_centres,
    prefix_lengths,
    selectable_rows,
)
from worldvla.policy.continuous import head_tensors, load_head_tensors


@dataclass
class HeadOutput:
    pred: torch.Tensor | None  # (n, K, 7) normalised actions of the selected rows; None when no row qualifies
    rows: torch.Tensor  # (B,) bool: rows the head read
    idle: torch.Tensor | None = None  # no row qualified: 0 x the head's output on a dummy input (see forward)


def head_config(overrides: dict, hidden_size: int, chunk_size: int, loss_weight: float,
                mask_padding: bool = False) -> ActionHeadConfig:
    """ActionHeadConfig of a run: official sizes, `overrides` (model.action_head_config) on top; the backbone
    width, the chunk K, the L1 weight and the padding mask always come from the model, data.recipe.chunk_size,
    train.action_head_weight and model.action_head_mask_padding."""
    fixed = {"hidden_size", "chunk_size", "loss_weight", "mask_padding"}
    names = {f.name for f in dataclasses.fields(ActionHeadConfig)} - fixed
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ConfigError(f"model.action_head_config: unknown field(s) {unknown}; valid: {sorted(names)} "
                          "(hidden_size and chunk_size follow the model and data.recipe.chunk_size; the loss weight is "
                          "train.action_head_weight; the padding mask is model.action_head_mask_padding)")
    return ActionHeadConfig(**{**overrides, "hidden_size": hidden_size, "chunk_size": chunk_size,
                               "loss_weight": loss_weight, "mask_padding": mask_padding})


class WithActionHead(nn.Module):
    """A `Transformer` plus an `ActionHead`; `forward(tokens, mask) -> (logits, HeadOutput)`."""

    def __init__(self, transformer: nn.Module, head: ActionHead):
        super().__init__()
        self.model = transformer.model  # the same module objects: parameters registered once, official names
        self.lm_head = transformer.lm_head
        self.action_head = head
        self.cfg = transformer.cfg
        object.__setattr__(self, "core", transformer)  # not a child: its parameters are the ones above

    @property
    def layers(self) -> nn.ModuleList:
        return self.model.layers

    def forward(self, tokens: torch.Tensor, mask=None, world: torch.Tensor | None = None,
                at: torch.Tensor | None = None) -> tuple[torch.Tensor, HeadOutput]:
        """`world` (B,) bool: the batch's world-model rows (sample kinds); the head reads only action rows.
        `at` (B, L) bool: LM logits of those positions only, packed (N, V) (Transformer.forward)."""
        hidden = self.core.forward_hidden(tokens, mask=mask)  # (B, L, D) after the final RMSNorm
        logits = self.core.logits(hidden if at is None else hidden[at])  # (B, L, V) or (N, V)
        rows = selectable_rows(tokens, world)  # (B,)
        if bool(rows.any()):
            return logits, HeadOutput(self.action_head(hidden[rows], prefix_lengths(tokens[rows])), rows)  # (n, K, 7)
        # No action sample in this micro-batch: run the head on one position anyway, at weight 0, so that every
        # process gets (zero) gradients for every head parameter and FSDP / DDP / ZeRO-3 reduce the same tensors.
        one = torch.ones(1, dtype=torch.long, device=tokens.device)
        return logits, HeadOutput(None, rows, self.action_head(hidden[:1, :1], one).sum() * 0.0)


def head_l1(out: HeadOutput, labels: torch.Tensor, chunk_size: int) -> tuple[torch.Tensor, int]:
    """(mean L1 between the head's output and the bin centres of the label action tokens, rows used).

    0 (attached to every head parameter) and 0 rows when no row of the micro-batch is an action sample."""
    if out.pred is None:
        return out.idle, 0
    try:
        l1 = l1_to_bin_centres(out.pred, labels[out.rows], chunk_size)
    except ValueError as err:
        raise ValueError(f"action head: {err}; data.recipe.chunk_size must be the K the shards were made with") from None
    return l1, int(out.rows.sum())


def load_head_weights(head: ActionHead, extras: dict, source: str) -> bool:
    """Copy `action_head.*` tensors of an init checkpoint into `head`; False when it has none (random init)."""
    tensors = head_tensors(extras)
    if not tensors:
        return False
    load_head_tensors(head, tensors, f"model.init_from={source}", "model.action_head_config")
    return True
