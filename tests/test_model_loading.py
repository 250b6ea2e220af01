"""Checkpoints in the official layouts load through the real loader; the policy predicts from them."""

import json
import shutil

import numpy as np
import pytest
import torch

from worldvla.model import convert
from worldvla.model.loading import load_checkpoint, load_model, read_state_dict, resolve_source, save_model
from worldvla.testing.tiny_model import make_tiny_model, write_tiny_checkpoint
from worldvla.tokenizers import ActionTokenizer

INSTRUCTION = "put the bowl on the stove"


pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def ckpt(tiny_assets, tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", tiny_assets, chunk_size=5)


@pytest.fixture(scope="module")
def policy(ckpt):
    from worldvla.policy.policy import WorldVLAPolicy

    return WorldVLAPolicy.from_pretrained(ckpt, device="cpu")


def frames(seed, n=2, side=256):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for _ in range(n)]


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_tiny_checkpoint_layout(ckpt):
    names = {p.name for p in ckpt.iterdir()}
    assert {"config.json", "model.safetensors", "worldvla.json", "tokenizer"} <= names
    assert {p.name for p in (ckpt / "tokenizer").iterdir()} == {"text_tokenizer.json", "vqgan.yaml", "vqgan.ckpt"}
    cfg = json.loads((ckpt / "config.json").read_text())
    assert cfg["model_type"] == "chameleon" and cfg["hidden_size"] == 64 and cfg["vocab_size"] == 16640
    settings = json.loads((ckpt / "worldvla.json").read_text())
    assert settings["chunk_size"] == 5 and settings["history"] == 2 and settings["resolution"] == 256
    keys = set(read_state_dict(ckpt))
    assert keys == set(convert.expected_keys(load_model(ckpt).cfg))
    assert read_state_dict(ckpt)["model.layers.0.self_attn.q_norm.weight"].shape == (1, 16)  # official shape


def test_policy_predicts_denormalised_chunks(policy):
    assert (policy.chunk_size, policy.history, policy.resolution) == (5, 2, 256)
    imgs = frames(0)
    actions = policy.predict(INSTRUCTION, imgs)
    assert actions.shape == (5, 7) and np.isfinite(actions).all()
    tokens = policy.predict_tokens([policy.prompt_ids(INSTRUCTION, imgs)])[0]
    np.testing.assert_allclose(actions, ActionTokenizer().decode(tokens))  # worldvla stats, bin centres
    first = policy.predict(INSTRUCTION, imgs[-1:])  # first query of an episode: one frame
    assert first.shape == (5, 7)
    assert len(policy.prompt_ids(INSTRUCTION, frames(1, n=3))) == len(policy.prompt_ids(INSTRUCTION, imgs))


def test_policy_batches_equal_one_at_a_time(policy):
    episodes = [frames(1), frames(2, n=1), frames(3)]
    texts = [INSTRUCTION, "open the top drawer of the cabinet", "turn on the stove"]
    batch = policy.predict_batch(texts, episodes)
    single = [policy.predict(t, e) for t, e in zip(texts, episodes)]
    for a, b in zip(batch, single):
        np.testing.assert_array_equal(a, b)


def test_policy_decode_modes_agree(ckpt):
    from worldvla.policy.policy import WorldVLAPolicy

    imgs = frames(4)
    par = WorldVLAPolicy.from_pretrained(ckpt, decode="parallel").predict(INSTRUCTION, imgs)
    seq = WorldVLAPolicy.from_pretrained(ckpt, decode="sequential").predict(INSTRUCTION, imgs)
    np.testing.assert_array_equal(par, seq)
    with pytest.raises(ValueError, match="decode"):
        WorldVLAPolicy.from_pretrained(ckpt, decode="beam")


def test_imagine_returns_an_image(policy):
    img = policy.imagine(frames(5, n=1)[0], np.zeros(7))
    assert img.shape == (256, 256, 3) and img.dtype == np.uint8


def test_sharded_bin_and_prefixed_official_layouts(tmp_path):
    model = make_tiny_model(seed=3)
    save_model(model, tmp_path / "sharded", max_shard_bytes=1_500_000)
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    assert same_weights(load_model(tmp_path / "sharded"), model)

    # pytorch_model.bin with wrapper prefixes, a VQ model, an action head and per-head (HF >= 4.45) q/k norms
    state = {f"_orig_mod.{k}": v for k, v in model.state_dict().items()}
    for k in list(state):
        if "_norm." in k and "self_attn" in k:
            state[k] = state[k].expand(4, -1).clone()  # (n_heads, head_dim), identical rows
    state["model.vqmodel.quantize.embedding.weight"] = torch.zeros(3, 2)
    state["action_head.hidden_projection.weight"] = torch.ones(2, 2)
    folder = tmp_path / "bin"
    folder.mkdir()
    shutil.copy(tmp_path / "sharded" / "config.json", folder)
    torch.save(state, folder / "pytorch_model.bin")
    loaded = load_checkpoint(folder)
    assert same_weights(loaded.model, model) and loaded.model.cfg.model_parallel_size == 1
    assert list(loaded.extras) == ["action_head.hidden_projection.weight"]
    assert loaded.dropped == ["model.vqmodel.quantize.embedding.weight"]

    # 1-D (head_dim,) q/k norm parameters are broadcast to the shard rows
    flat = {k: (v[0] if "_norm." in k and "self_attn" in k else v) for k, v in model.state_dict().items()}
    torch.save(flat, folder / "pytorch_model.bin")
    assert same_weights(load_model(folder), model)

    del flat["model.layers.1.mlp.up_proj.weight"]
    torch.save(flat, folder / "pytorch_model.bin")
    with pytest.raises(KeyError, match="missing.*up_proj"):
        load_model(folder)


def test_load_options(ckpt):
    model = load_model(ckpt, dtype=torch.bfloat16, dropout=0.05)
    assert model.dtype == torch.bfloat16 and model.cfg.dropout == 0.05
    assert not model.training
    with pytest.raises(TypeError, match="override"):
        load_model(ckpt, n_experts=4)


def test_official_checkpoint_without_settings(ckpt, tmp_path):
    """Released checkpoints have only config.json + weights: tokenizer and settings come as arguments."""
    from worldvla.policy.policy import WorldVLAPolicy

    official = tmp_path / "official"
    official.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(ckpt / name, official)
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        WorldVLAPolicy.from_pretrained(official)
    pol = WorldVLAPolicy.from_pretrained(official, tokenizer=ckpt / "tokenizer", chunk_size=3, resolution=256,
                                         action_stats="rynnvla_action", decode="parallel")  # auto: official
    assert pol.chunk_size == 3 and pol.predict(INSTRUCTION, frames(6)).shape == (3, 7)
    with pytest.raises(TypeError, match="unknown policy setting"):
        WorldVLAPolicy.from_pretrained(official, tokenizer=ckpt / "tokenizer", chunks=3)


def test_tokenizer_hash_is_checked(ckpt, tmp_path):
    from worldvla.policy.policy import WorldVLAPolicy

    copy = tmp_path / "copy"
    shutil.copytree(ckpt, copy)
    settings = json.loads((copy / "worldvla.json").read_text())
    settings["text_tokenizer_sha256"] = "0" * 64
    (copy / "worldvla.json").write_text(json.dumps(settings))
    with pytest.raises(ValueError, match="not the tokenizer"):
        WorldVLAPolicy.from_pretrained(copy)


def test_unreachable_sources_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="hub"):
        resolve_source("no-such-owner-xyz/no-such-model")  # tests run with HF_HUB_OFFLINE=1
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(tmp_path)


def test_unconstrained_policy_mode_parses_blocks(ckpt, monkeypatch):
    from worldvla.model import free_decode as FD
    from worldvla.model import generate as G
    from worldvla.policy.policy import WorldVLAPolicy

    pol = WorldVLAPolicy.from_pretrained(ckpt, decode="unconstrained")
    pol.max_new_tokens = 4  # a random model emits no complete [10004 ... 15004] block this soon
    with pytest.raises(RuntimeError, match="no complete action block"):
        pol.predict(INSTRUCTION, frames(7))
    good = [G.V.ACTION_START_ID, *range(10100, 10107), G.V.ACTION_END_ID]
    short = [G.V.ACTION_START_ID, 10100, 10101, G.V.ACTION_END_ID]  # malformed: skipped
    scripted = good + short + [G.V.ACTION_START_ID, *range(10200, 10207), G.V.ACTION_END_ID, G.V.END_OF_TURN_ID]
    monkeypatch.setattr(FD, "generate_greedy", lambda *a, **k: [scripted])
    actions = pol.predict(INSTRUCTION, frames(7))
    want = ActionTokenizer().decode(np.array([list(range(10100, 10107)), list(range(10200, 10207))]))
    np.testing.assert_allclose(actions, want)
