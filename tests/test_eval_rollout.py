"""The episode loop against a toy env: budget, history, open-loop chunks, gripper, errors, deviations."""

import numpy as np
import pytest

from worldvla.eval.config import EvalConfig, parse_shard
from worldvla.eval.fake_env import FakeEnv
from worldvla.eval.protocol import EpisodeKey, all_episodes, deviations, shard_episodes
from worldvla.eval.rollout import RolloutOptions, episode, run_episode
from worldvla.eval.scripted import HashPolicy, SequencePolicy
from worldvla.policy.interface import check_chunk, policy_info

KEY = EpisodeKey("libero_goal", 1, 4)


class RecordingEnv(FakeEnv):
    """FakeEnv that never succeeds and logs the actions it receives and the wait steps asked for."""

    def __init__(self, *a, success_at: int | None = None, **k):
        super().__init__("libero_goal", 1, *a, **k)
        self.actions, self.waits, self.success_at = [], [], success_at

    def reset(self, episode, wait_steps=10):
        self.waits.append(wait_steps)
        return super().reset(episode, wait_steps)

    def step(self, action):
        self.actions.append(np.array(action))
        obs, r, _, info = super().step(action)
        done = self.success_at is not None and len(self.actions) >= self.success_at
        return obs, r, done, info


def drive(env, opts, policy):
    return run_episode(env, KEY, opts, lambda q: policy.predict_batch([q.instruction], [q.images],
                                                                      None if q.wrists is None else [q.wrists],
                                                                      None if q.state is None else [q.state])[0])


def test_budget_excludes_wait_steps_and_executes_whole_chunks():
    env = RecordingEnv()
    actions = np.random.default_rng(0).uniform(-1, 1, (40, 7))
    pol = SequencePolicy(actions, chunk_size=5)
    rec = drive(env, RolloutOptions(max_steps=12, wait_steps=10), pol)
    assert rec["status"] == "failure" and rec["steps"] == 12 and rec["queries"] == 3
    assert env.waits == [10]  # the wait steps are the env's reset, not the budget
    np.testing.assert_array_equal(np.stack(env.actions), actions[:12])  # chunks of 5, 5, then 2 of the third


def test_history_first_query_has_one_frame_then_previous_env_step():
    env = RecordingEnv()
    pol = SequencePolicy(np.zeros((30, 7)), chunk_size=3, history=2)
    gen = episode(env, KEY, RolloutOptions(max_steps=9, history=2))
    q, lens = next(gen), []
    try:
        while True:
            lens.append(len(q.images))
            np.testing.assert_array_equal(q.images[-1], env._obs()["agentview_image"][::-1, ::-1])
            q = gen.send(pol.predict_batch([q.instruction], [q.images])[0])
    except StopIteration:
        pass
    assert lens == [1, 2, 2]


def test_history_frame_is_the_previous_env_step_not_the_previous_query():
    env = RecordingEnv()
    gen = episode(env, KEY, RolloutOptions(max_steps=20, history=2))
    next(gen)
    chunk = np.zeros((4, 7))
    chunk[:, 0] = [1.0, 2.0, 3.0, 4.0]  # x moves every step: frames differ
    q2 = gen.send(chunk)
    env2 = RecordingEnv()
    env2.reset(KEY.trial)
    for a in chunk[:3]:
        obs_prev, *_ = env2.step(a)
    obs_now, *_ = env2.step(chunk[3])
    np.testing.assert_array_equal(q2.images[0], obs_prev["agentview_image"][::-1, ::-1])
    np.testing.assert_array_equal(q2.images[1], obs_now["agentview_image"][::-1, ::-1])


def test_success_stops_mid_chunk():
    env = RecordingEnv(success_at=7)
    rec = drive(env, RolloutOptions(max_steps=50), SequencePolicy(np.zeros((50, 7)), chunk_size=5))
    assert rec["status"] == "success" and rec["success"] and rec["steps"] == 7 and len(env.actions) == 7


@pytest.mark.parametrize("invert", [False, True])
def test_gripper_sign_passes_through_unless_inverted(invert):
    env = RecordingEnv()
    acts = np.zeros((5, 7))
    acts[:, 6] = [1, 1, -1, 1, -1]
    drive(env, RolloutOptions(max_steps=5, invert_gripper=invert), SequencePolicy(acts, chunk_size=5))
    sent = np.stack(env.actions)[:, 6]
    np.testing.assert_array_equal(sent, -acts[:, 6] if invert else acts[:, 6])


def test_execute_steps_replans_early():
    env = RecordingEnv()
    pol = SequencePolicy(np.zeros((40, 7)), chunk_size=5)
    rec = drive(env, RolloutOptions(max_steps=6, execute_steps=2), pol)
    assert rec["queries"] == 3 and rec["steps"] == 6


def test_bad_policy_output_is_an_error_not_a_failure():
    env = RecordingEnv()

    class Broken(HashPolicy):
        def predict_batch(self, *a, **k):
            return [np.full((5, 7), np.nan)]

    rec = drive(env, RolloutOptions(max_steps=10), Broken())
    assert rec["status"] == "error" and not rec["success"] and "non-finite" in rec["error"]
    assert "Traceback" in rec["traceback"]
    with pytest.raises(ValueError, match="shape"):
        check_chunk(np.zeros((5, 6)))


def test_wrist_and_state_are_sent_only_when_used():
    env = RecordingEnv()
    gen = episode(env, KEY, RolloutOptions(max_steps=5))
    q = next(gen)
    assert q.wrists is None and q.state is None
    gen = episode(env, KEY, RolloutOptions(max_steps=5, send_wrist=True, send_state=True))
    q = next(gen)
    assert len(q.wrists) == 1 and q.state.shape == (8,)


def test_fingerprint_is_deterministic():
    pol = HashPolicy()
    a = drive(RecordingEnv(), RolloutOptions(max_steps=15), pol)
    b = drive(RecordingEnv(), RolloutOptions(max_steps=15), pol)
    c = run_episode(RecordingEnv(), EpisodeKey("libero_goal", 1, 5), RolloutOptions(max_steps=15),
                    lambda q: pol.predict_batch([q.instruction], [q.images])[0])
    assert a["fingerprint"] == b["fingerprint"] != c["fingerprint"]


def test_sharding_partitions_the_episodes():
    cfg = EvalConfig(suites=["libero_goal", "libero_10"], num_trials=7)
    keys = all_episodes(cfg, lambda s: 3)
    assert len(keys) == 42 and keys == sorted(keys)
    shards = [shard_episodes(keys, f"{i}/4") for i in range(4)]
    assert sorted(k for s in shards for k in s) == keys
    assert {len(s) for s in shards} == {10, 11}
    with pytest.raises(ValueError, match="i/n"):
        parse_shard("4/4")


def test_first_trial_selects_held_out_init_states_and_is_flagged():
    cfg = EvalConfig(suites=["libero_object"], tasks=[0], num_trials=20, first_trial=30)
    keys = all_episodes(cfg, lambda s: 10)
    assert [k.trial for k in keys] == list(range(30, 50))  # init states 30..49, e.g. never trained on
    info = policy_info(HashPolicy(chunk_size=5, history=2, resolution=256))
    assert any("first_trial=30" in f for f in deviations(cfg, info, lambda s: 10))
    with pytest.raises(ValueError, match="first_trial >= 0"):
        EvalConfig(first_trial=-1)


def test_protocol_defaults_have_no_deviations_and_every_knob_is_flagged():
    info = policy_info(HashPolicy(chunk_size=5, history=2, resolution=256))
    assert deviations(EvalConfig(), info, lambda s: 10) == []
    cfg = EvalConfig(max_steps=10, num_trials=3, tasks=[0], wait_steps=5, seed=1, resolution=128,
                     rotate180=False, history=1, execute_steps=2, invert_gripper=True)
    flags = deviations(cfg, info, lambda s: 10)
    assert len(flags) == 11, flags
    for word in ("max_steps", "num_trials", "tasks", "wait_steps", "seed", "rotated", "history",
                 "execute_steps", "gripper", "resized"):
        assert any(word in f for f in flags), (word, flags)


def test_rng_chain_reproduces_the_single_process_order(tmp_path):
    from worldvla.eval.rng_chain import ChainedEnv, ResetRngChain

    def official(trials):  # one process: env.seed(0), then trials in order
        env, out = FakeEnv("libero_goal", 0), []
        np.random.seed(0)
        for j in range(trials):
            env.reset(j)
            out.append(env.goal.copy())
        return out

    ref = official(6)
    chain = ResetRngChain(0, tmp_path / "cache")
    env = ChainedEnv(FakeEnv("libero_goal", 0), chain)
    np.random.seed(123)  # whatever the process did before must not matter
    for j in (4, 5, 2, 0):  # out of order: fast-forward, then memory
        env.reset(j)
        np.testing.assert_array_equal(env.env.goal, ref[j])
    assert chain.fast_forwards == 4
    fresh = ResetRngChain(0, tmp_path / "cache")  # another worker or a resumed run: from the cache
    env2 = ChainedEnv(FakeEnv("libero_goal", 0), fresh)
    env2.reset(5)
    np.testing.assert_array_equal(env2.env.goal, ref[5])
    assert fresh.fast_forwards == 0


def test_work_blocks_cover_all_episodes_in_trial_order():
    from worldvla.eval.protocol import work_blocks

    keys = [EpisodeKey(s, t, j) for s in ("a", "b") for t in range(2) for j in range(10)]
    for workers in (1, 3, 8):
        blocks = work_blocks(keys, workers)
        assert sorted(k for b in blocks for k in b) == sorted(keys)
        assert len(blocks) >= min(workers, 4 * 10)
        for b in blocks:
            assert len({(k.suite, k.task) for k in b}) == 1 and [k.trial for k in b] == sorted(k.trial for k in b)
            assert [k.trial for k in b] == list(range(b[0].trial, b[0].trial + len(b)))
    assert [b[0].trial for b in work_blocks(keys, 8)][:4] == [0, 0, 0, 0]  # first runs of every task first


@pytest.mark.parametrize("quat", [[0.1, -0.7, 0.2, -0.68], [0.3, 0.1, -0.2, -0.93], [-0.2, 0.5, 0.1, 0.84]])
def test_state_is_robosuites_quat2axisangle_unflipped(quat):
    """Official state: eef pos + robosuite's own quat2axisangle of the quaternion as given (w < 0 is not
    flipped: the angle exceeds pi, as in the official training data) + gripper qpos, in float64."""
    import robosuite.utils.transform_utils as T

    from worldvla.eval.rollout import observe

    q = np.asarray(quat) / np.linalg.norm(quat)
    img = np.zeros((8, 8, 3), np.uint8)
    raw = {"agentview_image": img, "robot0_eye_in_hand_image": img, "robot0_eef_pos": np.array([0.1, -0.2, 1.0]),
           "robot0_eef_quat": q.copy(), "robot0_gripper_qpos": np.array([0.03, -0.03])}
    state = observe(raw, RolloutOptions(max_steps=1)).state
    expect = np.concatenate([raw["robot0_eef_pos"], T.quat2axisangle(q.copy()), raw["robot0_gripper_qpos"]])
    assert state.dtype == np.float64 and state.shape == (8,)
    np.testing.assert_array_equal(state, expect)
    np.testing.assert_array_equal(raw["robot0_eef_quat"], q)  # the observation is not modified
    if q[3] < 0:
        assert np.linalg.norm(state[3:6]) > np.pi