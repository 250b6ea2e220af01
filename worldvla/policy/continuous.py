"""Continuous action mode of `WorldVLAPolicy`: RynnVLA-002's action head on the backbone's prompt states.

Official inference (official_format.md §10.2): the prompt ids plus one appended action-start token
(10004) go through the backbone once; the head reads the final-norm hidden states of every position
before that 10004 (the whole prompt, its trailing 8710 included) and regresses K x 7 actions in the
normalised [-1, 1] space, which the policy de-normalises with the checkpoint's action statistics.

The head's sizes are read off its tensors (`action_head.*` in the checkpoint); only the number of
attention heads is not visible in the weights and comes from worldvla.json `action_head.num_heads`
(official: 4). Prompts are batched per length, so no row is ever padded: a query's actions do not
depend on which other queries share its batch (the backbone is batched per length; the small head runs
per query, since its encoder's CPU kernels gave results differing at 1e-7 between batch sizes).
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from dataclasses import fields

import numpy as np
import torch

from worldvla import vocab as V
from worldvla.model.action_head import ActionHead, ActionHeadConfig, prefix_lengths

log = logging.getLogger(__name__)

PREFIX = "action_head."


def head_config_from_tensors(tensors: dict[str, torch.Tensor], settings: dict | None = None,
                             where: str = "checkpoint") -> ActionHeadConfig:
    """ActionHeadConfig whose shapes match `tensors` (keys without the `action_head.` prefix)."""
    settings = dict(settings or {})
    unknown = set(settings) - {f.name for f in fields(ActionHeadConfig)}
    if unknown:
        raise ValueError(f"{where}: worldvla.json action_head has unknown field(s) {sorted(unknown)}")
    need = ("action_token_embeddings.weight", "hidden_projection.weight", "transformer_encoder.layers.0.linear1.weight",
            "output_projection.model.fc2.weight")
    missing = [k for k in need if k not in tensors]
    if missing:
        raise ValueError(f"{where}: action head tensors incomplete, missing {[PREFIX + k for k in missing]}")
    proj_dim, hidden = tensors["hidden_projection.weight"].shape
    action_dim = tensors["output_projection.model.fc2.weight"].shape[0]
    n_queries, rest = divmod(tensors["action_token_embeddings.weight"].numel(), hidden)
    if rest or n_queries % action_dim:
        raise ValueError(f"{where}: {PREFIX}action_token_embeddings.weight has "
                         f"{tensors['action_token_embeddings.weight'].numel()} values, not K x {action_dim} x {hidden}")
    layers = {int(m.group(1)) for k in tensors if (m := re.match(r"transformer_encoder\.layers\.(\d+)\.", k))}
    blocks = {int(m.group(1)) for k in tensors if (m := re.match(r"output_projection\.model\.mlp_resnet_blocks\.(\d+)\.", k))}
    shapes = {"hidden_size": int(hidden), "chunk_size": n_queries // action_dim, "action_dim": int(action_dim),
              "proj_dim": int(proj_dim), "num_layers": len(layers),
              "ffn_dim": int(tensors["transformer_encoder.layers.0.linear1.weight"].shape[0]), "mlp_blocks": len(blocks)}
    for k, v in shapes.items():
        if k in settings and settings[k] != v:
            raise ValueError(f"{where}: worldvla.json action_head.{k}={settings[k]} but the tensors say {v}")
    settings.update(shapes)
    settings["dropout"] = 0.0  # inference
    cfg = ActionHeadConfig(**settings)
    if proj_dim % cfg.num_heads:
        raise ValueError(f"{where}: action head width {proj_dim} is not divisible by num_heads={cfg.num_heads}")
    return cfg


def head_tensors(extras: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The `action_head.*` tensors of a checkpoint, keys without the prefix (empty: it has no head)."""
    return {k[len(PREFIX):]: t for k, t in extras.items() if k.startswith(PREFIX)}


def load_head_tensors(head: ActionHead, tensors: dict[str, torch.Tensor], where: str, layout: str = "its layout") -> None:
    """Load a checkpoint's head tensors into `head` (the one loader of inference and training init), or say
    which tensors do not fit."""
    try:
        missing, unexpected = head.load_state_dict(tensors, strict=False)
    except RuntimeError as err:  # a shape mismatch
        raise ValueError(f"{where}: action head tensors do not fit {layout}: {err}") from None
    if missing or unexpected:
        raise ValueError(f"{where}: action head tensors do not match {layout} "
                         f"(missing {missing[:4]}, unexpected {unexpected[:4]})")


def build_action_head(extras: dict[str, torch.Tensor], settings: dict | None, where: str,
                      device, dtype: torch.dtype) -> ActionHead:
    """The checkpoint's action head in eval mode, or a clear error if the checkpoint has none."""
    tensors = head_tensors(extras)
    if not tensors:
        raise ValueError(f"{where} has no {PREFIX}* tensors: it was trained without the continuous action head; "
                         "use policy.recipe.action_mode=discrete")
    cfg = head_config_from_tensors(tensors, settings, where)
    head = ActionHead(cfg)
    load_head_tensors(head, tensors, where)
    log.info("%s: continuous action head, K=%d, %d layers, width %d, %d heads", where, cfg.chunk_size,
             cfg.num_layers, cfg.proj_dim, cfg.num_heads)
    return head.to(device=device, dtype=dtype).eval()


@torch.no_grad()
def predict_normalised(model, head: ActionHead, prompts: list[list[int]]) -> list[np.ndarray]:
    """(K, 7) normalised actions per prompt; prompts of equal length share one forward pass."""
    if head.cfg.hidden_size != model.cfg.dim:
        raise ValueError(f"action head reads width {head.cfg.hidden_size}, the backbone has {model.cfg.dim}")
    out: list[np.ndarray | None] = [None] * len(prompts)
    by_length: dict[int, list[int]] = defaultdict(list)
    for i, p in enumerate(prompts):
        by_length[len(p)].append(i)
    for rows in by_length.values():
        ids = torch.tensor([list(prompts[i]) + [V.ACTION_START_ID] for i in rows], device=model.device)
        hidden = model.forward_hidden(ids)  # causal: the appended 10004 does not change earlier positions
        hidden = hidden.to(next(head.parameters()).dtype)
        lens = prefix_lengths(ids)
        for j, i in enumerate(rows):  # the head one row at a time: its encoder's kernels vary with batch size
            # fp32, as the official `.cpu().float().numpy()`: un-normalisation then matches it bit for bit
            out[i] = head(hidden[j: j + 1], lens[j: j + 1])[0].float().cpu().numpy()
    return out
