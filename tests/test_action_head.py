"""Continuous action head (RynnVLA-002): official names, padding invariance, targets, learning."""

import dataclasses

import numpy as np
import pytest
import torch

from worldvla.model.action_head import ActionHead, ActionHeadConfig, bin_centre_targets, prefix_lengths
from worldvla.model.config import ModelConfig
from worldvla.model.transformer import Transformer
from worldvla.tokenizers.action import ActionTokenizer
from worldvla.train.continuous import WithActionHead, head_l1

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
    """head_l1, the term training adds (worldvla.train.modeling), on what WithActionHead gives it: training the
    head alone on a fixed tiny backbone brings it down, and a batch without action samples contributes 0."""
    torch.manual_seed(0)
    tok = ActionTokenizer()
    rng = np.random.default_rng(1)
    rows = [_sample(tok, rng.uniform(-0.5, 0.5, size=(3, 7))) for _ in range(4)]
    ids = torch.tensor([r[0] for r in rows])
    ids[:, :6] = torch.from_numpy(rng.integers(10, 8000, (4, 6)))  # prompts that differ: the head reads them
    labels = torch.tensor([r[1] for r in rows])
    backbone = Transformer(ModelConfig.preset("tiny")).requires_grad_(False)
    model = WithActionHead(backbone, ActionHead(dataclasses.replace(CFG, hidden_size=backbone.cfg.dim)))
    no_logits = torch.zeros_like(ids, dtype=torch.bool)  # the head's term only
    opt = torch.optim.Adam(model.action_head.parameters(), lr=3e-3)
    first = None
    for _ in range(200):
        loss, n_rows = head_l1(model(ids, at=no_logits)[1], labels, CFG.chunk_size)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert n_rows == 4 and loss.item() < 0.3 * first
    world_ids = torch.tensor([[5] * 5 + tok.encode_block(np.zeros(7)) + [8710]])  # one action block only
    loss, n_rows = head_l1(model(world_ids)[1], world_ids, CFG.chunk_size)
    assert n_rows == 0 and loss.item() == 0.0


def _padded_direct(head, hidden, lens):
    """The official training computation written out: [prompt ; K*7 queries] per row, right-padded with
    zero vectors, projected, then a fresh `torch.nn.TransformerEncoder` (official constructor arguments,
    the head's weights) called with NO mask; the query outputs go through the MLP-ResNet."""
    cfg = head.cfg
    n_q = cfg.chunk_size * cfg.action_dim
    queries = head.action_token_embeddings.weight.view(n_q, cfg.hidden_size)
    rows = [torch.cat([hidden[i, :n], queries]) for i, n in enumerate(lens)]
    width = max(r.shape[0] for r in rows)
    padded = torch.stack([torch.cat([r, torch.zeros(width - r.shape[0], cfg.hidden_size)]) for r in rows])
    layer = torch.nn.TransformerEncoderLayer(d_model=cfg.proj_dim, nhead=cfg.num_heads, dim_feedforward=cfg.ffn_dim,
                                             batch_first=True, dropout=cfg.dropout)
    encoder = torch.nn.TransformerEncoder(encoder_layer=layer, num_layers=cfg.num_layers,
                                          norm=torch.nn.LayerNorm(cfg.proj_dim))
    encoder.load_state_dict(head.transformer_encoder.state_dict())
    encoder.train()
    out = encoder(head.hidden_projection(padded))
    picked = torch.stack([out[i, n: n + n_q] for i, n in enumerate(lens)])
    return head.output_projection(picked.reshape(len(lens), cfg.chunk_size, -1))


def test_training_forward_attends_the_padding_like_the_official_encoder():
    torch.manual_seed(0)
    head = ActionHead(CFG).train()  # dropout 0: deterministic training forward
    hidden = torch.randn(3, 12, 32)
    lens = [12, 7, 4]
    got = head(hidden, torch.tensor(lens))
    want = _padded_direct(head, hidden, lens)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    masked = ActionHead(dataclasses.replace(CFG, mask_padding=True))
    masked.load_state_dict(head.state_dict())
    masked.train()
    other = masked(hidden, torch.tensor(lens))
    torch.testing.assert_close(other[0], got[0], atol=1e-6, rtol=1e-6)  # the longest row has no padding
    assert (other[1:] - got[1:]).abs().max() > 1e-3  # the padded rows differ with the mask
    one = [head(hidden[i: i + 1, :n], torch.tensor([n])) for i, n in enumerate(lens)]
    torch.testing.assert_close(masked(hidden, torch.tensor(lens)), torch.cat(one), atol=1e-5, rtol=1e-5)


def test_eval_is_batch_invariant_with_either_setting_and_agrees_at_batch_one():
    torch.manual_seed(1)
    hidden = torch.randn(3, 10, 32)
    lens = [10, 6, 3]
    heads = {}
    for mask in (False, True):
        head = ActionHead(dataclasses.replace(CFG, mask_padding=mask))
        if heads:
            head.load_state_dict(heads[False].state_dict())
        heads[mask] = head.eval()
    for head in heads.values():
        batched = head(hidden, torch.tensor(lens))
        one = torch.cat([head(hidden[i: i + 1, :n], torch.tensor([n])) for i, n in enumerate(lens)])
        torch.testing.assert_close(batched, one, atol=1e-5, rtol=1e-5)
    x = hidden[1:2, :6]
    assert torch.equal(heads[False](x, torch.tensor([6])), heads[True](x, torch.tensor([6])))  # batch 1: identical
    heads[False].train()
    assert torch.equal(heads[False](x, torch.tensor([6])), heads[True](x, torch.tensor([6])))  # no padding: no mask


def test_mask_padding_is_a_train_config_field_recorded_with_the_head():
    from worldvla.config import ConfigError, parse_cli
    from worldvla.train.config import TrainConfig
    from worldvla.train.continuous import head_config

    assert TrainConfig().model.action_head_mask_padding is False  # official default
    cfg = parse_cli(TrainConfig, ["model.action_head_mask_padding=true"])
    hc = head_config({}, 32, 3, 10.0, cfg.model.action_head_mask_padding)
    assert hc.mask_padding is True and dataclasses.asdict(hc)["mask_padding"] is True  # -> worldvla.json action_head
    with pytest.raises(ConfigError, match="model.action_head_mask_padding"):
        head_config({"mask_padding": True}, 32, 3, 10.0)
