import numpy as np
import pytest

from worldvla.tokenizers.action import (
    RYNNVLA_STATE_STATS,
    WORLDVLA_ACTION_STATS,
    ActionTokenizer,
    NormStats,
    StateTokenizer,
    load_stats,
)


def test_official_ids_at_bin_edges():
    tok = ActionTokenizer()
    lo, hi = np.array(WORLDVLA_ACTION_STATS.min), np.array(WORLDVLA_ACTION_STATS.max)
    mid = (lo + hi) / 2
    # norm -1 -> digitize 1 -> 10006; norm 0 -> 128 -> 10133 (official_format.md §2.2)
    assert tok.encode(lo).tolist() == [10006] * 7
    assert tok.encode(mid).tolist() == [10133] * 7
    # the official +1e-8 in the denominator puts the raw max just below norm 1 -> digitize 255 -> 10260;
    # only norm == 1.0 exactly (a clipped value above max) reaches the extra bin 256 -> 10261
    assert tok.encode(hi).tolist() == [10260] * 7
    assert tok.encode(hi + 0.1).tolist() == [10261] * 7
    # gripper convention: -1 open -> first bin, +1 close -> bin 255, no inversion
    a = np.zeros(7)
    a[6] = -1.0
    assert tok.encode(a)[6] == 10006
    a[6] = 1.0
    assert tok.encode(a)[6] == 10260
    assert tok.encode_block(mid) == [10004] + [10133] * 7 + [15004]


def test_decode_formula_matches_official():
    tok = ActionTokenizer()
    centers = (np.linspace(-1, 1, 256)[:-1] + np.linspace(-1, 1, 256)[1:]) / 2
    ids = np.array([10006, 10133, 10260, 10261, 10004, 15004, 10005])
    norm = centers[np.clip(ids - 10005 - 1, 0, 254)]
    lo, hi = np.array(WORLDVLA_ACTION_STATS.min), np.array(WORLDVLA_ACTION_STATS.max)
    want = (norm + 1) / 2 * (hi - lo + 1e-8) + lo
    np.testing.assert_allclose(tok.decode(ids), want)
    assert np.isclose(tok.decode(np.full(7, 10261))[6], centers[-1])  # the +1 edge decodes to 0.99608


@pytest.mark.parametrize("stats", [WORLDVLA_ACTION_STATS, NormStats((-2,) * 7, (3,) * 7)])
def test_round_trip_within_half_bin(rng, stats):
    tok = ActionTokenizer(stats)
    lo, hi = np.array(stats.min), np.array(stats.max)
    x = rng.uniform(lo, hi, size=(4000, 7))
    x[:7] = np.diag(hi) + (1 - np.eye(7)) * lo  # include the exact edges
    err = np.abs(tok.decode(tok.encode(x)) - x)
    assert (err <= tok.half_bin() / 2 * 1.0000001 + 1e-12).all()
    assert tok.num_clipped == 0


def test_out_of_range_clipped_and_counted():
    tok = ActionTokenizer()
    x = np.zeros((2, 7))
    x[0, 0], x[1, 3] = 5.0, -9.0
    ids = tok.encode(x)
    assert ids[0, 0] == 10261 and ids[1, 3] == 10006
    assert tok.num_clipped == 2


def test_errors():
    tok = ActionTokenizer()
    with pytest.raises(ValueError, match="NaN"):
        tok.encode(np.array([0, 0, np.nan, 0, 0, 0, 1.0]))
    with pytest.raises(ValueError, match=r"\(\.\.\., 7\)"):
        tok.encode(np.zeros(6))
    with pytest.raises(ValueError, match="7-D"):
        ActionTokenizer(RYNNVLA_STATE_STATS)


def test_stats_json_roundtrip_and_from_data(tmp_path, rng):
    data = rng.normal(size=(100, 7))
    stats = NormStats.from_data(data)
    assert np.allclose(stats.min, data.min(0)) and np.allclose(stats.max, data.max(0))
    stats.to_json(tmp_path / "action_stats.json")
    assert load_stats(tmp_path / "action_stats.json") == stats
    assert load_stats("worldvla") == WORLDVLA_ACTION_STATS
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_stats(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text('{"min": [1]}')
    with pytest.raises(ValueError, match="bad.json"):
        load_stats(tmp_path / "bad.json")


def test_state_tokenizer_ids():
    tok = StateTokenizer()
    block = tok.encode_block(np.array(RYNNVLA_STATE_STATS.min))
    assert block == [15504] + [15506] * 8 + [16004]
    assert tok.encode(np.array(RYNNVLA_STATE_STATS.max) + 1).tolist() == [15761] * 8


def _official_env_actions(token_ids, min_values, max_values):
    """The official eval written out (WorldVLA eval_solver_libero_256.py / RynnVLA-002
    eval_solver_libero_*_w_state.py): bin centres in torch fp32 from the generated ids, moved to numpy
    with `.cpu().float().numpy()`, then `unnorm_min_max` against fp64 `np.array` constants."""
    import torch

    dis_action = torch.as_tensor(token_ids)
    bins = torch.linspace(-1, 1, 256, device=dis_action.device)
    bin_centers = (bins[:-1] + bins[1:]) / 2.0
    discretized = dis_action - 1 - 10004
    discretized = torch.clamp(discretized - 1, min=0, max=bin_centers.shape[0] - 1).long()
    action = bin_centers[discretized].cpu().float().detach().numpy()
    min_values, max_values = np.array(min_values), np.array(max_values)
    return (action + 1) / 2 * (max_values - min_values + 1e-8) + min_values


@pytest.mark.parametrize("preset", ["worldvla", "rynnvla_action"])
def test_executed_actions_equal_the_official_fp32_formula_bit_for_bit(preset):
    from worldvla.policy.interface import check_chunk

    stats = load_stats(preset)
    tok = ActionTokenizer(stats)
    ids = np.arange(10000, 10270).reshape(-1, 1).repeat(7, 1)  # every bin, the extra edge bin, out-of-range ids
    ids[:, 3] = ids[::-1, 3]
    want = np.stack([_official_env_actions(row, stats.min, stats.max) for row in ids])
    got = check_chunk(tok.decode(ids))  # what the rollout hands to env.step
    assert got.dtype == want.dtype == np.float64
    assert np.array_equal(got, want)  # bit for bit, not close
    assert [list(map(float, r)) for r in got] == [r.tolist() for r in want]  # and as the lists env.step receives
    fp64 = (np.linspace(-1, 1, 256)[:-1] + np.linspace(-1, 1, 256)[1:]) / 2  # the old fp64 centres
    old = (fp64[np.clip(ids - 10006, 0, 254)] + 1) / 2 * tok._range + tok._min
    assert not np.array_equal(old, want)  # the test can tell the two apart


def test_continuous_output_unnormalises_like_the_official_eval():
    """The head's fp32 output goes through `(a + 1) / 2` in fp32, then fp64, as in the official eval."""
    rng = np.random.default_rng(3)
    norm = rng.uniform(-1, 1, size=(10, 7)).astype(np.float32)
    stats = load_stats("rynnvla_action")
    lo, hi = np.array(stats.min), np.array(stats.max)
    want = (norm + 1) / 2 * (hi - lo + 1e-8) + lo
    assert np.array_equal(ActionTokenizer(stats).unnormalize(norm), want)
    assert not np.array_equal(ActionTokenizer(stats).unnormalize(norm.astype(np.float64)), want)
