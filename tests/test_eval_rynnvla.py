"""RynnVLA-002 evaluation: wrist view + proprio state in the prompt, discrete and continuous action modes
(the action head), the mode flag through the CLI, the policy server and the output files.
(A real LIBERO episode in both modes is in test_eval_libero_sim.py.)"""

import json

import numpy as np
import pytest
import torch

from worldvla import vocab as V
from worldvla.policy.policy import WorldVLAPolicy
from worldvla.testing.tiny_model import one_torch_thread, write_tiny_checkpoint
from worldvla.testing.tiny_rynnvla import write_tiny_rynnvla_checkpoint
from worldvla.tokenizers.action import RYNNVLA_ACTION_STATS, RYNNVLA_STATE_STATS

K = 3
RES = 64  # the fixture VQ-GAN at 64 px keeps these tests fast


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from worldvla.testing.fixtures import make_tiny_assets

    root = tmp_path_factory.mktemp("rynn")
    return write_tiny_rynnvla_checkpoint(root / "ckpt", make_tiny_assets(root / "assets"), chunk_size=K, resolution=RES)


@pytest.fixture(scope="module")
def policies(ckpt):
    with one_torch_thread():
        yield {m: WorldVLAPolicy.from_pretrained(ckpt, action_mode=m) for m in ("discrete", "continuous")}


def frames(rng, n):
    return [rng.integers(0, 256, (RES, RES, 3), dtype=np.uint8) for _ in range(n)]


def state(rng):
    lo, hi = np.array(RYNNVLA_STATE_STATS.min), np.array(RYNNVLA_STATE_STATS.max)
    return (lo + rng.random(8) * (hi - lo)).astype(np.float32)


def blocks(ids, start, end):
    """(first position, tokens) of every [start ... end] block in `ids`."""
    out, i = [], 0
    while start in ids[i:]:
        s = ids.index(start, i)
        e = ids.index(end, s)
        out.append((s, ids[s: e + 1]))
        i = e + 1
    return out


def test_prompt_has_state_then_interleaved_third_and_wrist_views(policies, rng):
    pol = policies["discrete"]
    third, wrist, st = frames(rng, 2), frames(rng, 2), state(rng)
    ids = pol.prompt_ids("open the drawer", third, wrist, st)
    assert ids[0] == V.BOS_ID and ids[-1] == V.END_OF_TURN_ID
    # state block: official binning written out here (official_format.md §10.1)
    lo, hi = np.array(RYNNVLA_STATE_STATS.min), np.array(RYNNVLA_STATE_STATS.max)
    norm = np.clip(2 * (st.astype(np.float64) - lo) / (hi - lo + 1e-8) - 1, -1, 1)
    want_state = [V.STATE_START_ID, *(np.digitize(norm, np.linspace(-1, 1, 256)) + V.STATE_START_ID + 1), V.STATE_END_ID]
    (s_pos, s_block), = blocks(ids, V.STATE_START_ID, V.STATE_END_ID)
    assert s_block == want_state
    images = blocks(ids, V.BOI_ID, V.EOI_ID)
    order = [third[0], wrist[0], third[1], wrist[1]]  # [third_t-1, wrist_t-1, third_t, wrist_t]
    assert [b for _, b in images] == [pol.images.image_to_tokens(im) for im in order]
    assert s_pos < images[0][0]  # "<|state|>" precedes the images in the human turn
    first = pol.prompt_ids("open the drawer", third[1:], wrist[1:], st)  # first query: one frame pair
    assert [b for _, b in blocks(first, V.BOI_ID, V.EOI_ID)] == [pol.images.image_to_tokens(im) for im in (third[1], wrist[1])]
    with pytest.raises(ValueError, match="wrist"):
        pol.prompt_ids("x", third, None, st)
    with pytest.raises(ValueError, match="state"):
        pol.prompt_ids("x", third, wrist, None)


def test_continuous_equals_head_on_prompt_states_denormalised(policies, rng):
    """Reference: backbone on the bare prompt, head on all its positions, min/max formula by hand."""
    pol = policies["continuous"]
    assert pol.action_mode == "continuous" and pol.chunk_size == K
    third, wrist, st = frames(rng, 2), frames(rng, 2), state(rng)
    got = pol.predict("put the bowl on the plate", third, wrist, st)
    ids = pol.prompt_ids("put the bowl on the plate", third, wrist, st)
    with torch.no_grad(), one_torch_thread():
        hidden = pol.model.forward_hidden(torch.tensor([ids]))
        norm = pol.action_head(hidden, torch.tensor([len(ids)]))[0].double().numpy()
    lo, hi = np.array(RYNNVLA_ACTION_STATS.min), np.array(RYNNVLA_ACTION_STATS.max)
    want = (norm + 1) / 2 * (hi - lo + 1e-8) + lo
    assert got.shape == (K, 7)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)  # the policy ran L + 1 positions (10004 appended)
    # and it is not the discrete path: those actions sit on bin centres, these do not
    tok = policies["discrete"].action_tok
    disc = policies["discrete"].predict("put the bowl on the plate", third, wrist, st)
    np.testing.assert_array_equal(tok.decode(tok.encode(disc)), disc)
    assert not np.allclose(tok.decode(tok.encode(got)), got)


@pytest.mark.parametrize("mode", ["discrete", "continuous"])
def test_batching_does_not_change_actions(policies, rng, mode):
    pol = policies[mode]
    texts = ["open the drawer", "turn on the stove and put the moka pot on it", "open the drawer"]
    thirds = [frames(rng, 2), frames(rng, 1), frames(rng, 2)]
    wrists = [frames(rng, len(t)) for t in thirds]
    states = [state(rng) for _ in texts]
    with one_torch_thread():
        both = pol.predict_batch(texts, thirds, wrists, states)
        alone = [pol.predict(t, th, w, s) for t, th, w, s in zip(texts, thirds, wrists, states)]
    for a, b in zip(both, alone):
        np.testing.assert_array_equal(a, b)  # bitwise: the evaluation's results must not depend on batching


def test_continuous_needs_a_head_and_a_matching_chunk(tmp_path, tiny_assets):
    plain = write_tiny_checkpoint(tmp_path / "plain", tiny_assets, chunk_size=K, resolution=RES,
                                  with_state=True, with_wrist=True)
    with pytest.raises(ValueError, match=r"plain has no action_head\.\* tensors"):
        WorldVLAPolicy.from_pretrained(plain, action_mode="continuous")
    with pytest.raises(ValueError, match="action_mode"):
        WorldVLAPolicy.from_pretrained(plain, action_mode="regression")
    rynn = write_tiny_rynnvla_checkpoint(tmp_path / "rynn", tiny_assets, chunk_size=K, resolution=RES)
    with pytest.raises(ValueError, match="predicts 3 actions per chunk"):
        WorldVLAPolicy.from_pretrained(rynn, action_mode="continuous", chunk_size=5)
    settings = json.loads((rynn / "worldvla.json").read_text())
    settings["action_head"] = {"num_heads": 4, "proj_dim": 48}
    (rynn / "worldvla.json").write_text(json.dumps(settings))
    with pytest.raises(ValueError, match="proj_dim=48 but the tensors say 32"):
        WorldVLAPolicy.from_pretrained(rynn, action_mode="continuous")


def test_head_sizes_are_read_from_its_tensors():
    from worldvla.model.action_head import ActionHead, ActionHeadConfig
    from worldvla.policy.continuous import head_config_from_tensors

    cfg = ActionHeadConfig(hidden_size=24, chunk_size=4, proj_dim=16, num_layers=3, num_heads=2, ffn_dim=40,
                           mlp_blocks=1, dropout=0.0)
    got = head_config_from_tensors(ActionHead(cfg).state_dict(), {"num_heads": 2})
    assert got == cfg


def run_cli(ckpt, out, *extra):
    from worldvla.eval.libero import main

    try:  # bad input ends the CLI with SystemExit(2): return that status, as a shell sees it
        return main([f"policy={ckpt}", "env_factory=worldvla.eval.fake_env:FakeEnv", "suites=[libero_goal]",
                     "tasks=[0]", "num_trials=2", "max_steps=6", "num_workers=0", "policy_threads=1", "videos=none",
                     f"output_dir={out}", *extra])
    except SystemExit as exit_:
        return exit_.code


def test_cli_runs_both_modes_and_records_the_mode(ckpt, tmp_path, capsys):
    fingerprints = {}
    for mode in ("discrete", "continuous"):
        out = tmp_path / mode
        assert run_cli(ckpt, out, f"policy.recipe.action_mode={mode}", "expect_wrist=true", "expect_state=true") == 0
        run = json.loads((out / "run.json").read_text())
        assert run["config"]["policy"]["recipe"]["action_mode"] == mode and run["policy"]["action_mode"] == mode
        assert run["policy"]["uses_wrist"] and run["policy"]["uses_state"]
        recs = [json.loads(x) for x in (out / "episodes.jsonl").read_text().splitlines()]
        assert len(recs) == 2 and all(r["status"] != "error" for r in recs), recs
        fingerprints[mode] = {r["fingerprint"] for r in recs}
    assert not fingerprints["discrete"] & fingerprints["continuous"]  # the modes executed different actions
    assert run_cli(ckpt, tmp_path / "continuous", "policy.recipe.action_mode=discrete") == 2  # resume with the other mode: refused
    assert "different settings" in capsys.readouterr().err
    assert run_cli(ckpt, tmp_path / "x", "expect_wrist=false") == 2
    assert "reads the wrist view" in capsys.readouterr().err


def test_server_round_trip_in_continuous_mode(ckpt, rng):
    pytest.importorskip("websockets")
    from worldvla.policy.interface import PolicySource, load_policy
    from worldvla.serve.server import PolicyServer

    with one_torch_thread():
        policy = load_policy(PolicySource(str(ckpt), recipe={"action_mode": "continuous"}))
        server = PolicyServer(policy, port=0)
        url = server.start_in_thread()
        try:
            remote = load_policy(PolicySource(url, recipe={"action_mode": "continuous"}))
            assert remote.action_mode == "continuous" and remote.uses_wrist and remote.uses_state
            texts = ["open the drawer", "turn on the stove"]
            thirds, wrists = [frames(rng, 1), frames(rng, 2)], [frames(rng, 1), frames(rng, 2)]
            states = [state(rng) for _ in texts]
            got = remote.predict_batch(texts, thirds, wrists, states)
            want = [policy.predict(t, th, w, s) for t, th, w, s in zip(texts, thirds, wrists, states)]
            with pytest.raises(ValueError, match="runs action_mode=continuous"):
                load_policy(PolicySource(url, recipe={"action_mode": "discrete"}))
            remote.close()
        finally:
            server.stop()
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
