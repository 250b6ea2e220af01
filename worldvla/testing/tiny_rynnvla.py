"""Random tiny RynnVLA-002 checkpoints: wrist view + proprio state in the prompt, and a continuous
action head stored as `action_head.*` tensors next to the backbone, as a RynnVLA-002 training export.

The head is small (width 32) but has the official layout (2 encoder layers, MLP-ResNet output), so
`WorldVLAPolicy.from_pretrained(..., action_mode="continuous")` runs the real loading and inference path.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from worldvla.model.action_head import ActionHead, ActionHeadConfig
from worldvla.model.loading import save_model
from worldvla.testing.fixtures import TinyAssets
from worldvla.testing.tiny_model import make_tiny_model, tiny_config, write_tiny_checkpoint

TINY_HEAD = {"proj_dim": 32, "num_layers": 2, "num_heads": 4, "ffn_dim": 64, "mlp_blocks": 2, "dropout": 0.0}


def make_tiny_action_head(chunk_size: int, seed: int = 0, **overrides) -> ActionHead:
    """A random head reading the tiny backbone's hidden states (eval mode)."""
    torch.manual_seed(seed + 1)
    cfg = ActionHeadConfig(hidden_size=tiny_config(**overrides).dim, chunk_size=chunk_size, **TINY_HEAD)
    head = ActionHead(cfg)
    with torch.no_grad():  # official init std 0.02 would give near-constant queries on a width-64 backbone
        head.action_token_embeddings.weight.normal_(0.0, 1.0)
    return head.eval()


def write_tiny_rynnvla_checkpoint(directory: str | Path, assets: TinyAssets, chunk_size: int = 5,
                                  resolution: int = 256, seed: int = 0, history: int = 2,
                                  action_mode: str = "discrete", **model_overrides) -> Path:
    """Tiny checkpoint with wrist + state (RynnVLA-002 action statistics) and an action head.

    `action_mode` is the default written to worldvla.json (evaluation can override it)."""
    directory = write_tiny_checkpoint(directory, assets, chunk_size=chunk_size, resolution=resolution, seed=seed,
                                      history=history, action_stats="rynnvla_action", with_state=True,
                                      with_wrist=True, **model_overrides)
    head = make_tiny_action_head(chunk_size, seed, **model_overrides)
    extras = {f"action_head.{k}": v for k, v in head.state_dict().items()}
    save_model(make_tiny_model(seed, **model_overrides), directory, extras=extras)  # same backbone, plus the head
    settings_path = directory / "worldvla.json"
    settings = json.loads(settings_path.read_text())
    settings["action_mode"] = action_mode
    settings["action_head"] = {"num_heads": head.cfg.num_heads}
    settings_path.write_text(json.dumps(settings, indent=1))
    return directory
