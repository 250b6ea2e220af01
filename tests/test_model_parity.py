"""The compact decoder against transformers' ChameleonForConditionalGeneration (independent reference).

Tiny random HF models are written with `save_pretrained` and loaded through our real loader. The HF
LM head forces image-code logits to the dtype minimum, so full hidden states are compared, and logits
on the non-image columns. The action mask is checked against HF fed the literal official mask
(`reference_mask`) as a 4-D additive mask.
"""

import json
import warnings

import pytest
import torch
from reference_masks import reference_mask

from worldvla import vocab as V
from worldvla.model.config import ModelConfig
from worldvla.model.convert import config_from_hf, config_to_hf
from worldvla.model.loading import load_checkpoint, load_model
from worldvla.model.masks import dense_mask, to_additive
from worldvla.model.transformer import Transformer

transformers = pytest.importorskip("transformers")
ATOL = 1e-5
N_HEADS = 4


pytestmark = pytest.mark.usefixtures("single_torch_thread")


def hf_reference(tokenizer_json, seed=0, swin_norm=False, per_head_qk=False, impl="eager"):
    from transformers import ChameleonConfig, ChameleonForConditionalGeneration

    vocab_map = dict(json.loads(tokenizer_json.read_text())["model"]["vocab"])
    vocab_map["<image>"] = 8711  # transformers looks this name up; Chameleon's reserved08707
    cfg = ChameleonConfig(
        vocab_size=16640, hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=N_HEADS,
        num_key_value_heads=N_HEADS, max_position_embeddings=1024, swin_norm=swin_norm, vocabulary_map=vocab_map,
        vq_config={"embed_dim": 8, "latent_channels": 32, "base_channels": 32, "channel_multiplier": [1, 1],
                   "num_res_blocks": 1, "resolution": 32},
        attn_implementation=impl,
    )
    torch.manual_seed(seed)
    model = ChameleonForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "vqmodel" in name:
                continue
            if "q_norm" in name or "k_norm" in name:
                rows = N_HEADS if per_head_qk else 1  # Chameleon-7B: one shard, shared by all heads
                base = 1.0 if name.endswith("weight") else 0.0
                p.copy_((base + 0.3 * torch.randn(rows, p.shape[1])).repeat_interleave(N_HEADS // rows, 0))
            elif "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.2)
    image_ids = torch.tensor(sorted(model.model.vocabulary_mapping.image_tokens))
    return model, image_ids


def random_ids(n_rows=2, length=40, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 16640, (n_rows, length), generator=g)


@pytest.fixture(scope="module")
def hf_pair(tiny_assets, tmp_path_factory):
    hf, image_ids = hf_reference(tiny_assets.tokenizer_json)
    folder = tmp_path_factory.mktemp("hf_tiny")
    hf.save_pretrained(folder)
    return hf, load_model(folder, dtype=torch.float32), image_ids


def compare(hf, ours, ids, image_ids, hf_mask=None, our_mask=None):
    with torch.no_grad():
        ref = hf(ids, attention_mask=hf_mask, output_hidden_states=True)
        ref_hidden = hf.model(ids, attention_mask=hf_mask).last_hidden_state
        hidden = ours.forward_hidden(ids, mask=our_mask)
        logits = ours(ids, mask=our_mask)
    torch.testing.assert_close(hidden, ref_hidden, atol=ATOL, rtol=0)
    text_cols = torch.ones(logits.shape[-1], dtype=torch.bool)
    text_cols[image_ids] = False
    assert (ref.logits[..., image_ids] == torch.finfo(torch.float32).min).all()  # HF masks them
    torch.testing.assert_close(logits[..., text_cols], ref.logits[..., text_cols], atol=ATOL, rtol=0)
    return logits


def test_config_is_read_from_the_hf_config_json(hf_pair):
    _, ours, _ = hf_pair
    cfg = ours.cfg
    assert (cfg.vocab_size, cfg.dim, cfg.n_layers, cfg.n_heads, cfg.intermediate_size) == (16640, 64, 2, 4, 176)
    assert cfg.model_parallel_size == 1  # the expanded (heads, head_dim) q/k-norm rows were merged
    assert ours.layers[0].self_attn.q_norm.weight.shape == (1, 16)
    assert not cfg.mask_image_logits


@pytest.mark.parametrize("mask_kind", ["none", "additive"])
def test_logits_match_transformers_with_causal_mask(hf_pair, mask_kind):
    hf, ours, image_ids = hf_pair
    ids = random_ids()
    L = ids.shape[1]
    causal = dense_mask([], L, action_mask=True)
    our_mask = {"none": None, "additive": to_additive(causal)}[mask_kind]
    logits = compare(hf, ours, ids, image_ids, our_mask=our_mask)
    assert logits[..., image_ids].abs().max() > 0  # ours does not mask image logits
    with pytest.raises(TypeError, match="additive"):  # one mask form: a boolean mask is converted by the caller
        ours(ids, mask=causal)


def test_per_head_qk_norm_and_swin_norm(tiny_assets, tmp_path):
    hf, image_ids = hf_reference(tiny_assets.tokenizer_json, seed=3, swin_norm=True, per_head_qk=True)
    hf.save_pretrained(tmp_path)
    loaded = load_checkpoint(tmp_path, dtype=torch.float32)
    assert loaded.model.cfg.swin_norm and loaded.model.cfg.model_parallel_size == N_HEADS
    assert any(k.startswith("model.vqmodel.") for k in loaded.dropped)
    compare(hf, loaded.model, random_ids(seed=4), image_ids)


def action_sequence(seed: int, n_blocks: int = 4) -> list[int]:
    """BOS, text, one image, text, E, then n action blocks and E (an action-model sample)."""
    g = torch.Generator().manual_seed(seed)
    text = lambda n: torch.randint(16100, 16600, (n,), generator=g).tolist()
    image = [V.BOI_ID, 8812, 8812] + torch.randint(4, 8196, (6,), generator=g).tolist() + [V.EOI_ID]
    ids = [V.BOS_ID] + text(5) + image + text(3) + [V.END_OF_TURN_ID]
    for _ in range(n_blocks):
        ids += [V.ACTION_START_ID] + torch.randint(10006, 10262, (7,), generator=g).tolist() + [V.ACTION_END_ID]
    return ids + [V.END_OF_TURN_ID]


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_action_mask_matches_reference_fed_to_transformers(tiny_assets, tmp_path, impl):
    hf, image_ids = hf_reference(tiny_assets.tokenizer_json, seed=5, impl=impl)
    hf.save_pretrained(tmp_path)
    ours = load_model(tmp_path, dtype=torch.float32)
    rows = [action_sequence(7), action_sequence(8)]
    ids = torch.tensor(rows)
    ref = torch.stack([to_additive(reference_mask(r)) for r in rows])[:, None]  # (B, 1, L, L)
    ours_mask = torch.stack([dense_mask(r) for r in rows])[:, None]
    assert not torch.equal(ours_mask[0, 0], torch.tril(torch.ones_like(ours_mask[0, 0])))  # really masked
    logits = compare(hf, ours, ids, image_ids, hf_mask=ref, our_mask=to_additive(ours_mask))
    causal = ours(ids)
    assert (logits - causal).abs().max() > 1e-3  # the mask changes the action positions


def test_kv_cache_decoding_equals_full_forward():
    from worldvla.testing.tiny_model import make_tiny_model

    model = make_tiny_model(seed=2)
    ids = torch.tensor([action_sequence(11, n_blocks=3), action_sequence(12, n_blocks=3)])
    L = ids.shape[1]
    full_mask = to_additive(torch.stack([dense_mask(r) for r in ids])[:, None])  # (B, 1, L, L)
    with torch.no_grad():
        full = model(ids, mask=full_mask)
        model.setup_caches(2, L + 5)
        P = 20
        pos = torch.arange(P)
        steps = [model(ids[:, :P], input_pos=pos, mask=full_mask[..., :P, :P])]
        for t in range(P, L):  # one token at a time; keys = all L + 5 slots, the mask row padded with False
            row = torch.full((2, 1, 1, L + 5), torch.finfo(torch.float32).min)
            row[..., :L] = full_mask[:, :, t : t + 1]
            steps.append(model(ids[:, t : t + 1], input_pos=torch.tensor([t]), mask=row))
        model.clear_caches()
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=ATOL, rtol=0)


def test_causal_prefill_without_a_mask_tensor():
    from worldvla.testing.tiny_model import make_tiny_model

    model = make_tiny_model(seed=3)
    ids = random_ids(n_rows=2, length=30, seed=6)
    with torch.no_grad():
        full = model(ids)
        model.setup_caches(2, 40)
        pre = model(ids[:, :24], input_pos=torch.arange(24))  # mask=None: causal over slots [0, 24)
        causal = to_additive(torch.arange(40) <= torch.arange(24, 30)[:, None])  # (6, 40) rows over the cache
        step = model(ids[:, 24:], input_pos=torch.arange(24, 30), mask=causal)  # the cache holds the prefill's keys
        with pytest.raises(ValueError, match="causal prefill"):
            model(ids[:, :4], input_pos=torch.arange(4).repeat(2, 1))
        with pytest.raises(ValueError, match="causal prefill"):
            model(ids[:, 24:], input_pos=torch.arange(24, 30))
        model.clear_caches()
    torch.testing.assert_close(torch.cat([pre, step], 1), full, atol=ATOL, rtol=0)


def test_config_round_trip_and_presets():
    for name in ("7b", "tiny"):
        cfg = ModelConfig.preset(name)
        assert config_from_hf(config_to_hf(cfg)) == cfg
    big = ModelConfig.preset("7b")
    assert (big.dim, big.n_layers, big.head_dim, big.intermediate_size, big.vocab_size) == (4096, 32, 128, 11008, 65536)
    hf_style = {"hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 1, "vocab_size": 100,
                "intermediate_size": 32, "rope_parameters": {"rope_theta": 5e5, "rope_type": "default"}}
    assert config_from_hf(hf_style).rope_theta == 5e5
    with pytest.raises(ValueError, match="RoPE scaling"):
        config_from_hf({**hf_style, "rope_scaling": {"type": "linear", "factor": 2.0}})
    with pytest.raises(ValueError, match="unknown model preset"):
        ModelConfig.preset("13b")


def test_image_logit_masking_switch():
    cfg = ModelConfig.preset("tiny", mask_image_logits=True)
    model = Transformer(cfg).eval()
    with pytest.raises(RuntimeError, match="set_image_token_ids"):
        model(torch.zeros(1, 3, dtype=torch.long))
    model.set_image_token_ids(range(4, 8196))
    logits = model(torch.zeros(1, 3, dtype=torch.long))
    assert (logits[..., 4:8196] == torch.finfo(logits.dtype).min).all() and logits[..., 8196:].abs().sum() > 0


def test_flex_attention_block_mask_path_matches_sdpa():
    from benchmarks.flex_masks import flex_attention_in, flex_block_mask
    from worldvla.model.masks import batch_mask
    from worldvla.testing.tiny_model import make_tiny_model

    model = make_tiny_model(seed=9)
    rows = [action_sequence(21), action_sequence(22)]
    L = len(rows[0])
    ids = torch.tensor(rows)
    with torch.no_grad(), warnings.catch_warnings():  # eager flex on CPU warns once per process
        warnings.simplefilter("ignore", UserWarning)
        with flex_attention_in(flex_block_mask(rows, L, block_size=16)):
            flex = model(ids)
    with torch.no_grad():
        sdpa = model(ids, mask=to_additive(batch_mask(rows, L)))
        assert (sdpa - model(ids)).abs().max() > 1e-3  # the action mask matters here, and the kernel is back
    torch.testing.assert_close(flex, sdpa, atol=ATOL, rtol=0)


def hf_constrained_actions(hf, prompt: list[int], chunk: int) -> list[list[int]]:
    """Independent reference for the policy: transformers' model, no cache, the literal official mask
    of the running ids each step, each bin the argmax over the 256 bin ids (10006..10261)."""
    ids, blocks = list(prompt), []
    with torch.no_grad():
        for _ in range(chunk):
            ids.append(V.ACTION_START_ID)
            block = []
            for _ in range(7):
                mask = to_additive(reference_mask(ids))[None, None]
                logits = hf(torch.tensor([ids]), attention_mask=mask).logits[0, -1]
                block.append(10006 + int(logits[10006:10262].argmax()))
                ids.append(block[-1])
            ids.append(V.ACTION_END_ID)
            blocks.append(block)
    return blocks


def test_official_layout_checkpoint_predicts_like_transformers(tiny_assets, tmp_path):
    """A checkpoint as the official training saves it (transformers' save_pretrained: bf16 safetensors
    shards + index, HF Chameleon key names incl. vqmodel, per-head q/k-norm rows, the XLLMX config
    keys) loads through the real loader into the policy, whose actions equal transformers' decoding."""
    import numpy as np

    from worldvla.policy.policy import WorldVLAPolicy
    from worldvla.tokenizers import ActionTokenizer

    hf, _ = hf_reference(tiny_assets.tokenizer_json, seed=13)
    folder = tmp_path / "epoch0"
    hf.to(torch.bfloat16).save_pretrained(folder, max_shard_size="1MB")
    assert len(list(folder.glob("model-*-of-*.safetensors"))) > 1 and (folder / "model.safetensors.index.json").is_file()
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(architectures=["ChameleonXLLMXForConditionalGeneration"], z_loss_weight=1e-5, dropout=0.05)
    (folder / "config.json").write_text(json.dumps(cfg))

    policy = WorldVLAPolicy.from_pretrained(folder, tokenizer=tiny_assets.tokenizer_json.parent, chunk_size=3,
                                            resolution=128, history=2, action_stats="worldvla",
                                            decode="parallel")  # the constrained decode the reference runs
    assert policy.model.cfg.dropout == 0.05 and not policy.model.training
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (128, 128, 3), dtype=np.uint8) for _ in range(2)]
    instruction = "put the bowl on the stove"
    actions = policy.predict(instruction, frames)
    assert actions.shape == (3, 7) and np.isfinite(actions).all()

    reference = hf_from_files_fp32(folder)
    want = hf_constrained_actions(reference, policy.prompt_ids(instruction, frames), chunk=3)
    np.testing.assert_allclose(actions, ActionTokenizer().decode(np.asarray(want)))
    assert len({tuple(b) for b in want}) > 1  # the chunk is not one repeated action


def hf_from_files_fp32(folder):
    """transformers' own loader on the same files (bf16 weights upcast to fp32, as ours)."""
    from transformers import ChameleonForConditionalGeneration

    return ChameleonForConditionalGeneration.from_pretrained(folder, torch_dtype=torch.float32).eval()
