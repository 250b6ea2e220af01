"""Raw LIBERO demo files: round trip, validation errors, and a recorder run in the real simulator."""

import numpy as np
import pytest

from worldvla.data.raw_demos import (
    OBS_KEYS,
    RawDemo,
    RawDemoError,
    RawDemoFile,
    raw_demo_filename,
    read_raw_demo_file,
    write_raw_demo_file,
)
from worldvla.data.recording import noisy_script


def synthetic_demo(n=6, res=16, seed=0, success=True) -> RawDemo:
    rng = np.random.default_rng(seed)
    obs = {
        "agentview_rgb": rng.integers(0, 255, (n, res, res, 3), dtype=np.uint8),
        "eye_in_hand_rgb": rng.integers(0, 255, (n, res, res, 3), dtype=np.uint8),
        "ee_pos": rng.normal(size=(n, 3)), "ee_ori": rng.normal(size=(n, 3)),
        "gripper_states": rng.normal(size=(n, 2)), "joint_states": rng.normal(size=(n, 7)),
    }
    obs["ee_states"] = np.concatenate([obs["ee_pos"], obs["ee_ori"]], axis=1)
    dones = np.zeros(n, dtype=np.uint8)
    dones[-1] = success
    return RawDemo(rng.normal(size=(n, 7)), rng.normal(size=(n, 11)), "<mujoco/>", None, obs, None, dones,
                   robot_states=rng.normal(size=(n, 9)))


META = {"problem_info": {"problem_name": "libero_kitchen_tabletop_manipulation", "language_instruction": "do it"},
        "env_args": {"type": 1}, "bddl_file_name": "x.bddl", "task_name": "do_it"}


def test_round_trip_numeric_order(tmp_path):
    demos = [synthetic_demo(n=3 + i, seed=i) for i in range(12)]
    path = write_raw_demo_file(tmp_path / raw_demo_filename("do_it"), META, demos)
    assert path.name == "do_it_demo.hdf5" and not list(tmp_path.glob("*.tmp*"))
    meta, back = read_raw_demo_file(path)
    assert meta["language_instruction"] == "do it" and meta["env_args"] == {"type": 1}
    assert meta["num_demos"] == 12 and meta["total"] == sum(len(d) for d in demos)
    assert [d.name for d in back] == [f"demo_{i}" for i in range(12)]  # numeric, not lexicographic
    for a, b in zip(demos, back):
        np.testing.assert_array_equal(a.actions, b.actions)
        np.testing.assert_array_equal(a.init_state, b.states[0])
        np.testing.assert_array_equal(a.init_state, b.init_state)
        assert b.model_xml == "<mujoco/>" and b.success
        assert set(b.obs) == set(OBS_KEYS)
        np.testing.assert_array_equal(a.obs["agentview_rgb"], b.obs["agentview_rgb"])
    _, light = read_raw_demo_file(path, load_obs=False)
    assert light[0].obs is None


def test_nan_action_names_demo(tmp_path):
    demo = synthetic_demo()
    demo.actions[2, 4] = np.nan
    with pytest.raises(RawDemoError, match=r"demo_0.*step 2, dim 4"):
        write_raw_demo_file(tmp_path / "a_demo.hdf5", META, [demo])
    # a file written by someone else with a NaN: the reader names file and demo
    import h5py

    path = write_raw_demo_file(tmp_path / "b_demo.hdf5", META, [synthetic_demo(), synthetic_demo()])
    with h5py.File(path, "r+") as f:
        f["data/demo_1/actions"][3, 0] = np.nan
    with pytest.raises(RawDemoError, match=r"b_demo\.hdf5:demo_1.*step 3"):
        read_raw_demo_file(path)


def test_truncated_file_is_named(tmp_path):
    path = write_raw_demo_file(tmp_path / "t_demo.hdf5", META, [synthetic_demo(n=40, res=64)])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(RawDemoError, match="t_demo.hdf5"):
        read_raw_demo_file(path)


def test_missing_language_is_an_error(tmp_path):
    with pytest.raises(RawDemoError, match="language_instruction"):
        write_raw_demo_file(tmp_path / "x_demo.hdf5", {"problem_info": {}}, [synthetic_demo()])
    with pytest.raises(RawDemoError, match="not found"):
        RawDemoFile(tmp_path / "nope.hdf5")


def test_noisy_script_has_noops():
    fn = noisy_script(seed=1, n_steps=10)
    acts = [fn(t, {}) for t in range(11)]
    assert acts[-1] is None
    assert np.linalg.norm(acts[4][:6]) == 0 and np.linalg.norm(acts[3][:6]) > 0


@pytest.mark.sim
def test_record_rollout_in_simulator(tmp_path):
    from worldvla.data.raw_demos import task_meta_from_env
    from worldvla.data.recording import record_rollout
    from worldvla.envs.libero import LiberoEnv, quat2axisangle

    env = LiberoEnv("libero_goal", 0, resolution=64)
    try:
        demo = record_rollout(env, noisy_script(seed=0, n_steps=6), episode=0, max_steps=20)
        meta = task_meta_from_env(env)
    finally:
        env.close()
    assert len(demo) == 6 and demo.states.shape[0] == 6 and demo.obs["agentview_rgb"].shape == (6, 64, 64, 3)
    np.testing.assert_array_equal(demo.init_state, demo.states[0])
    assert "<mujoco" in demo.model_xml
    # robot_states = gripper(2) + eef_pos(3) + eef_quat(4); ee_ori is robosuite's axis-angle of that quaternion
    np.testing.assert_allclose(demo.robot_states[:, 2:5], demo.obs["ee_pos"])
    np.testing.assert_allclose(demo.obs["ee_ori"][0], quat2axisangle(demo.robot_states[0, 5:9]))
    path = write_raw_demo_file(tmp_path / raw_demo_filename(meta["task_name"]), meta, [demo])
    meta2, back = read_raw_demo_file(path)
    assert meta2["language_instruction"] == "open the middle drawer of the cabinet"
    assert meta2["bddl_file_name"].endswith(".bddl")
    np.testing.assert_array_equal(back[0].states, demo.states)
