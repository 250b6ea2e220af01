"""Continuous action head (RynnVLA-002): official names, padding invariance, targets, learning."""

import numpy as np
import torch

from worldvla.model.action_head import (
    ActionHead,
    ActionHeadConfig,
    action_head_loss,
    bin_centre_targets,
    prefix_lengths,
)
from worldvla.tokenizers.action import ActionTokenizer

CFG = ActionHeadConfig(hidden_size=32, chunk_size=3, proj_dim=16, num_heads=4, ffn_dim=32, dropout=0.0)


def test_parameter_names_match_official():
    names = set(ActionHead(CFG).state_dict())
    for key in [
        "action_token_embeddings.weight",
        "hidden_projection.weight",
        "transformer_encoder.layers.0.self_attn.in_proj_weight",
        "transformer_encoder.layers.1.linear2.weight",
        "transformer_encoder.norm.weight",
        "output_projection.model.layer_norm1.weight",
        "output_projection.model.fc1.weight",
        "output_projection.model.mlp_resnet_blocks.0.ffn.0.weight",
        "output_projection.model.mlp_resnet_blocks.1.ffn.1.bias",
        "output_projection.model.layer_norm2.bias",
        "output_projection.model.fc2.weight",
    ]:
        assert key in names, key
    head = ActionHead(ActionHeadConfig())  # official sizes
    assert head.action_token_embeddings.weight.shape == (1, 5 * 7 * 4096)
    assert head.output_projection.model.fc1.weight.shape == (1024, 7 * 1024)


def test_batched_equals_single_despite_padding():
    torch.manual_seed(0)
    head = ActionHead(CFG).eval()
    hidden = torch.randn(2, 12, 32)
    lens = torch.tensor([12, 7])
    both = head(hidden, lens)
    one = head(hidden[1:, :7], torch.tensor([7]))
    assert both.shape == (2, 3, 7)
    torch.testing.assert_close(both[1:], one, atol=1e-5, rtol=1e-5)


def _sample(tok, actions, prompt_len=6):
    blocks = sum((tok.encode_block(a) for a in actions), [])
    ids = [5] * prompt_len + blocks + [8710]
    labels = [-100] * prompt_len + blocks + [8710]
    return ids, labels


def test_targets_are_bin_centres_and_prefix():
    tok = ActionTokenizer()
    acts = np.random.default_rng(0).uniform(-0.3, 0.3, size=(3, 7))
    ids, labels = _sample(tok, acts)
    target = bin_centre_targets(torch.tensor([labels]), 3)[0].numpy()
    want = tok.normalize(tok.decode(tok.encode(acts)))  # centres in [-1, 1] space
    np.testing.assert_allclose(target, want, atol=1e-6)
    assert prefix_lengths(torch.tensor([ids])).item() == 6


def test_l1_loss_falls_and_skips_world_samples():
    torch.manual_seed(0)
    tok = ActionTokenizer()
    rng = np.random.default_rng(1)
    rows = [_sample(tok, rng.uniform(-0.5, 0.5, size=(3, 7))) for _ in range(4)]
    ids = torch.tensor([r[0] for r in rows])
    labels = torch.tensor([r[1] for r in rows])
    hidden = torch.randn(4, ids.shape[1], 32)
    head = ActionHead(CFG)
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    first = None
    for _ in range(200):
        loss = action_head_loss(head, hidden, ids, labels)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.3 * first
    world_ids = torch.tensor([[5] * 5 + tok.encode_block(np.zeros(7)) + [8710]])  # one action block only
    assert action_head_loss(head, torch.randn(1, world_ids.shape[1], 32), world_ids, world_ids).item() == 0.0
