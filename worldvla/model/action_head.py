"""RynnVLA-002's continuous action head ("action transformer"), official parameter names.

Reads the backbone's final hidden states (after the last RMSNorm) of the prompt positions, appends
K*7 learned queries, projects to 1024, runs a 2-layer bidirectional post-norm TransformerEncoder,
and regresses the K x 7 normalised actions from the query outputs with
an MLP-ResNet (official_format.md §10.2). Trained with L1 against the **bin centres** of the
ground-truth action tokens (not the raw floats), weight `loss_ct_weights` = 10.

Padding: rows of a batch are right-padded with zero vectors to one length. The official trainer
calls the encoder with no key-padding mask, so in training the real positions also attend the
(projected) zero padding of shorter prompts; that is the default here (`mask_padding=False`), and
`mask_padding=True` masks it instead. In eval mode padding is always masked, so a row's prediction
does not depend on the batch; at batch 1 there is no padding and both agree exactly (no mask is
passed when no row is padded).

Parameter names (prefix `action_head.` in checkpoints): `action_token_embeddings.weight`,
`hidden_projection.*`, `transformer_encoder.layers.{i}.*`, `transformer_encoder.norm.*`,
`output_projection.model.{layer_norm1, fc1, mlp_resnet_blocks.{i}.ffn.{0,1}, layer_norm2, fc2}.*`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from worldvla import vocab as V
from worldvla.bins import N_BIN_EDGES, official_bin_centres


@dataclass
class ActionHeadConfig:
    hidden_size: int = 4096  # backbone width
    chunk_size: int = 5  # K (official `time_horizon`)
    action_dim: int = 7
    proj_dim: int = 1024  # official hidden_projection width
    num_layers: int = 2
    num_heads: int = 4
    ffn_dim: int = 4096
    dropout: float = 0.1
    mlp_blocks: int = 2
    loss_weight: float = 10.0  # official --loss_ct_weights
    mask_padding: bool = False  # training: mask the batch's zero padding (official: not masked); eval always masks


class MLPResNetBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.ffn = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.ffn(x)


class MLPResNet(nn.Module):
    def __init__(self, num_blocks: int, in_dim: int, hidden: int, out_dim: int):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(in_dim)
        self.fc1 = nn.Linear(in_dim, hidden)
        self.relu = nn.ReLU()
        self.mlp_resnet_blocks = nn.ModuleList(MLPResNetBlock(hidden) for _ in range(num_blocks))
        self.layer_norm2 = nn.LayerNorm(hidden)
        self.fc2 = nn.Linear(hidden, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.fc1(self.layer_norm1(x)))
        for block in self.mlp_resnet_blocks:
            x = block(x)
        return self.fc2(self.layer_norm2(x))


class L1RegressionActionHead(nn.Module):
    def __init__(self, cfg: ActionHeadConfig):
        super().__init__()
        self.model = MLPResNet(cfg.mlp_blocks, cfg.action_dim * cfg.proj_dim, cfg.proj_dim, cfg.action_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class ActionHead(nn.Module):
    def __init__(self, cfg: ActionHeadConfig):
        super().__init__()
        self.cfg = cfg
        n_queries = cfg.chunk_size * cfg.action_dim
        self.action_token_embeddings = nn.Embedding(1, n_queries * cfg.hidden_size)
        nn.init.normal_(self.action_token_embeddings.weight, std=0.02)
        self.hidden_projection = nn.Linear(cfg.hidden_size, cfg.proj_dim)
        layer = nn.TransformerEncoderLayer(
            cfg.proj_dim, cfg.num_heads, cfg.ffn_dim, cfg.dropout, activation="relu", batch_first=True, norm_first=False
        )
        self.transformer_encoder = nn.TransformerEncoder(
            layer, cfg.num_layers, norm=nn.LayerNorm(cfg.proj_dim), enable_nested_tensor=False
        )
        self.output_projection = L1RegressionActionHead(cfg)

    def forward(self, hidden: torch.Tensor, prefix_lens: torch.Tensor) -> torch.Tensor:
        """hidden (B, L, D) final-norm states; prefix_lens (B,) number of prompt positions used
        per row (everything before the first action-start token). Returns (B, K, 7) in [-1, 1] space."""
        cfg = self.cfg
        b, _, d = hidden.shape
        n_q = cfg.chunk_size * cfg.action_dim
        queries = self.action_token_embeddings.weight.view(n_q, d).to(hidden.dtype)  # (K*7, D)
        lens = [int(n) for n in prefix_lens.tolist()]
        total = max(lens) + n_q
        seq = hidden.new_zeros(b, total, d)  # right-padded [prompt ; queries]
        pad = torch.ones(b, total, dtype=torch.bool, device=hidden.device)  # True = padding
        for i, n in enumerate(lens):
            seq[i, :n] = hidden[i, :n]
            seq[i, n : n + n_q] = queries
            pad[i, : n + n_q] = False
        masked = (cfg.mask_padding or not self.training) and bool(pad.any())
        x = self.transformer_encoder(self.hidden_projection(seq), src_key_padding_mask=pad if masked else None)
        index = torch.tensor(lens, device=hidden.device)[:, None] + torch.arange(n_q, device=hidden.device)
        out = x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))  # (B, K*7, P)
        out = out.reshape(b, cfg.chunk_size, cfg.action_dim * cfg.proj_dim)  # (B, K, 7*P)
        return self.output_projection(out)  # (B, K, 7)


def prefix_lengths(input_ids: torch.Tensor) -> torch.Tensor:
    """Positions before the first action-start token per row (the whole row if there is none)."""
    is_start = input_ids == V.ACTION_START_ID  # (B, L)
    first = torch.where(is_start.any(1), is_start.int().argmax(1), torch.full_like(input_ids[:, 0], input_ids.shape[1]))
    return first


def selectable_rows(input_ids: torch.Tensor, world: torch.Tensor | None = None) -> torch.Tensor:
    """Official selection: rows holding more than one action-start token (action samples, K >= 2); with the
    batch's sample kinds (`world` (B,) bool), only action-model rows qualify."""
    rows = (input_ids == V.ACTION_START_ID).sum(1) > 1
    return rows if world is None else rows & ~world.to(rows.device, torch.bool)


def bin_centre_targets(labels: torch.Tensor, chunk_size: int, action_dim: int = 7) -> torch.Tensor:
    """(B, L) labels -> (B, K, 7) bin centres (normalised space) of the supervised action blocks."""
    centres = torch.from_numpy(official_bin_centres()).to(labels.device)  # fp32, as the official trainer's targets
    out = []
    for row in labels:
        starts = (row == V.ACTION_START_ID).nonzero().flatten()[:chunk_size]
        if len(starts) < chunk_size:
            raise ValueError(f"labels hold {len(starts)} action blocks, the head predicts {chunk_size}")
        ids = torch.stack([row[s + 1 : s + 1 + action_dim] for s in starts])  # (K, 7)
        index = (ids - V.ACTION_START_ID - 2).clamp(0, N_BIN_EDGES - 2)
        out.append(centres[index])
    return torch.stack(out)


def l1_to_bin_centres(pred: torch.Tensor, labels: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """The official L1 term: mean |pred - bin centres of the label action tokens|, in fp32.

    pred (n, K, 7) normalised actions of the selected rows; labels (n, L) of the same rows."""
    target = bin_centre_targets(labels, chunk_size, pred.shape[-1])  # (n, K, 7) fp32
    return (pred.float() - target).abs().mean()
