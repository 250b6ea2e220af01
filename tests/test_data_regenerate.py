"""Regeneration logic against a fake simulator: no-op filter, replay order, success filter, resume, export."""

import json

import numpy as np
import pytest
from PIL import Image

from worldvla.data.raw_demos import RawDemo, RawDemoError, read_raw_demo_file, write_raw_demo_file
from worldvla.data.regenerate import RegenerateConfig, is_noop, noop_keep_mask, regenerate, replay_demo
from worldvla.envs.libero import quat2axisangle

RES = 8
QUAT = np.array([0.1, -0.7, 0.2, -0.68])  # w < 0: axis-angle angle above pi (no sign normalisation)
QUAT = QUAT / np.linalg.norm(QUAT)


class FakeEnv:
    """Deterministic stand-in for a LIBERO env: state = (steps taken, xyz); done after `succeed_at` steps."""

    calls = 0

    def __init__(self, suite="libero_goal", task_id=0, resolution=RES, env_seed=0, succeed_at=3):
        self.res, self.succeed_at = resolution, succeed_at
        FakeEnv.calls += 0

    def _obs(self):
        n = int(self.state[0])
        img = np.zeros((self.res, self.res, 3), np.uint8)
        img[0, :, 0] = n  # top row carries the step count: a 180-degree rotation moves it to the bottom
        return {"agentview_image": img, "robot0_eye_in_hand_image": img + 1,
                "robot0_eef_pos": self.state[1:4].copy(), "robot0_eef_quat": QUAT.copy(),
                "robot0_gripper_qpos": np.array([0.02, -0.02]) * n, "robot0_joint_pos": np.full(7, n, float)}

    def settle(self, init_state, wait_steps, seed=None):
        FakeEnv.calls += 1
        self.state = np.asarray(init_state, dtype=np.float64).copy()
        self.state[0] = 0
        return self._obs()

    def step(self, action):
        self.state[0] += 1
        self.state[1:4] += np.asarray(action)[:3]
        done = self.state[0] >= self.succeed_at
        return self._obs(), float(done), bool(done), {}

    def sim_state(self):
        return self.state.copy()

    def model_xml(self):
        return "<fake/>"


def fake_factory(suite, task_id, resolution, env_seed):
    return FakeEnv(suite, task_id, resolution, env_seed, succeed_at=3 if task_id == 0 else 99)


def _a(*head, grip):
    out = np.zeros(7)
    out[: len(head)] = head
    out[6] = grip
    return out


CRAFTED = np.stack([
    _a(grip=1),  # 0: first, still -> dropped (no previous kept gripper to differ from)
    _a(grip=-1),  # 1: still, no kept action yet -> dropped (a "previous raw action" rule would keep it)
    _a(0.1, grip=-1),  # 2: moves -> kept
    _a(grip=-1),  # 3: still, same gripper as kept #2 -> dropped
    _a(5e-5, grip=1),  # 4: still but gripper changes -> kept
    _a(0, 0, 0, 0, 0, 9e-5, grip=1),  # 5: still (norm 9e-5), same gripper -> dropped
    _a(1e-4, grip=1),  # 6: norm exactly 1e-4 is not below the threshold -> kept
    _a(grip=-1),  # 7: gripper differs from kept #6 -> kept
    _a(grip=-1),  # 8: dropped
])
EXPECTED_KEEP = [False, False, True, False, True, False, True, True, False]


def test_noop_filter_on_crafted_sequence():
    assert noop_keep_mask(CRAFTED).tolist() == EXPECTED_KEEP
    assert is_noop(_a(grip=1), None) and not is_noop(_a(grip=1), _a(0.5, grip=-1))


def raw_demo(actions, name=""):
    n = len(actions)
    states = np.zeros((n, 4))
    states[0, 1:4] = [0.5, 0.0, 1.0]
    return RawDemo(actions, states, "<raw/>", name=name)


def test_replay_records_obs_before_each_kept_action():
    env = FakeEnv(succeed_at=4)
    res = replay_demo(env, raw_demo(CRAFTED), wait_steps=10)
    kept = CRAFTED[EXPECTED_KEEP]
    assert res.n_raw == 9 and res.n_kept == 4 and res.n_noops == 5 and res.success
    np.testing.assert_array_equal(res.demo.actions, kept)
    # frame j is the observation before kept action j: the env had taken j steps
    assert res.demo.obs["agentview_rgb"][:, 0, 0, 0].tolist() == [0, 1, 2, 3]
    assert res.demo.states[:, 0].tolist() == [0, 1, 2, 3]
    np.testing.assert_allclose(res.demo.obs["ee_pos"][1], [0.6, 0.0, 1.0])
    np.testing.assert_allclose(res.demo.obs["ee_ori"][0], quat2axisangle(QUAT))
    assert res.demo.dones.tolist() == [0, 0, 0, 1]
    assert not replay_demo(FakeEnv(succeed_at=5), raw_demo(CRAFTED)).success


def test_replay_names_demo_with_nan_action():
    actions = CRAFTED.copy()
    actions[3, 2] = np.nan
    with pytest.raises(RawDemoError, match=r"x_demo.hdf5:demo_7: non-finite action .* step 3"):
        replay_demo(FakeEnv(), raw_demo(actions, "demo_7"), where="x_demo.hdf5:demo_7")


@pytest.fixture(scope="module")
def task_names():
    from worldvla.envs.libero import get_suite

    suite = get_suite("libero_goal")
    return [suite.get_task(i).name for i in range(2)]


def _write_raw(raw_dir, task_names):
    for tid, name in enumerate(task_names):
        demos = [raw_demo(CRAFTED) for _ in range(3)]
        demos[1] = raw_demo(CRAFTED[:5])  # only 2 kept actions: fails (succeed_at=3)
        write_raw_demo_file(raw_dir / f"{name}_demo.hdf5", {"language_instruction": name.replace("_", " ")}, demos)


def test_regenerate_success_filter_resume_and_export(tmp_path, task_names):
    raw, out, exp = tmp_path / "raw", tmp_path / "out", tmp_path / "exp"
    _write_raw(raw, task_names)
    cfg = RegenerateConfig(suite="libero_goal", raw_dir=raw, out_dir=out, resolution=RES, tasks=[0, 1],
                           image_compression="none")
    FakeEnv.calls = 0
    regenerate(cfg, env_factory=fake_factory)
    assert FakeEnv.calls == 6
    meta, demos = read_raw_demo_file(out / f"{task_names[0]}_demo.hdf5")
    assert [d.name for d in demos] == ["demo_0", "demo_2"]  # demo_1 failed on replay; names keep their index
    assert meta["resolution"] == RES and meta["env_args"]["env_kwargs"]["camera_heights"] == RES
    assert meta["language_instruction"] == task_names[0].replace("_", " ")
    _, none_kept = read_raw_demo_file(out / f"{task_names[1]}_demo.hdf5")  # task 1 never succeeds
    assert none_kept == []
    info = json.loads((out / "libero_goal_metainfo.json").read_text())
    assert info[task_names[0]]["demo_1"] == {"demo": "demo_1", "success": False, "kept": False, "n_raw": 5,
                                             "n_kept": 2, "n_noops": 3}
    # resume: nothing is replayed again; one removed result is redone
    FakeEnv.calls = 0
    regenerate(cfg, env_factory=fake_factory)
    assert FakeEnv.calls == 0
    (out / ".parts" / task_names[0] / "demo_2.json").unlink()
    regenerate(cfg, env_factory=fake_factory)
    assert FakeEnv.calls == 1
    _, again = read_raw_demo_file(out / f"{task_names[0]}_demo.hdf5")
    np.testing.assert_array_equal(again[1].obs["agentview_rgb"], demos[1].obs["agentview_rgb"])
    # keep_failed keeps the failed demo (test data only)
    cfg2 = RegenerateConfig(suite="libero_goal", raw_dir=raw, out_dir=tmp_path / "out2", resolution=RES, tasks=[0],
                            keep_failed=True, export_dir=exp)
    regenerate(cfg2, env_factory=fake_factory)
    _, all3 = read_raw_demo_file(tmp_path / "out2" / f"{task_names[0]}_demo.hdf5")
    assert [d.name for d in all3] == ["demo_0", "demo_1", "demo_2"]
    # export: rotated PNGs, raw actions, protocol state
    trj = exp / task_names[0] / "trj_2"
    assert sorted(p.name for p in trj.iterdir()) == ["action", "ee_state", "eef_gripper_state", "gripper_state",
                                                     "imgs", "imgs_third_view", "imgs_wrist", "robot_state"]
    demo = all3[2]
    for j in range(len(demo)):
        third = np.asarray(Image.open(trj / "imgs" / f"image_{j}.png"))
        np.testing.assert_array_equal(third, demo.obs["agentview_rgb"][j][::-1, ::-1])
        assert third[-1, 0, 0] == j  # the step counter row is now at the bottom
        np.testing.assert_array_equal(np.asarray(Image.open(trj / "imgs_third_view" / f"image_{j}.png")), third)
        wrist = np.asarray(Image.open(trj / "imgs_wrist" / f"image_{j}.png"))
        np.testing.assert_array_equal(wrist, demo.obs["eye_in_hand_rgb"][j][::-1, ::-1])
        np.testing.assert_array_equal(np.load(trj / "action" / f"action_{j}.npy"), demo.actions[j])
        state = np.load(trj / "eef_gripper_state" / f"eef_gripper_state_{j}.npy")
        expect = np.concatenate([demo.obs["ee_pos"][j], quat2axisangle(QUAT), demo.obs["gripper_states"][j]])
        np.testing.assert_allclose(state, expect)
    assert not (exp / ".tmp").exists()


def test_regenerate_with_two_workers(tmp_path, task_names):
    raw = tmp_path / "raw"
    _write_raw(raw, task_names)
    out1, out2 = tmp_path / "w1", tmp_path / "w2"
    for out, workers in ((out1, 1), (out2, 2)):
        regenerate(RegenerateConfig(suite="libero_goal", raw_dir=raw, out_dir=out, resolution=RES, tasks=[0, 1],
                                    workers=workers), env_factory=fake_factory)
    for name in task_names:
        _, a = read_raw_demo_file(out1 / f"{name}_demo.hdf5")
        _, b = read_raw_demo_file(out2 / f"{name}_demo.hdf5")
        assert [d.name for d in a] == [d.name for d in b]
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x.obs["agentview_rgb"], y.obs["agentview_rgb"])


def test_missing_raw_files_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no raw demo files for libero_goal"):
        regenerate(RegenerateConfig(suite="libero_goal", raw_dir=tmp_path, out_dir=tmp_path / "o", tasks=[0]),
                   env_factory=fake_factory)


def test_export_errors_name_file_and_demo(tmp_path):
    from worldvla.data.export import ExportConfig, export

    h5 = tmp_path / "h5"
    demo = raw_demo(CRAFTED[:3])
    demo.robot_states = np.zeros((3, 9))
    write_raw_demo_file(h5 / "some_task_demo.hdf5", {"language_instruction": "x"}, [demo, raw_demo(CRAFTED[:2])])
    with pytest.raises(RawDemoError, match=r"some_task_demo\.hdf5:demo_0: missing image dataset obs/agentview_rgb"):
        export(ExportConfig(hdf5_dir=h5, save_dir=tmp_path / "exp"))
    assert not (tmp_path / "exp" / "some_task" / "trj_0").exists()  # no half-written trajectory
    data = (h5 / "some_task_demo.hdf5").read_bytes()
    (h5 / "some_task_demo.hdf5").write_bytes(data[: len(data) // 3])
    with pytest.raises(RawDemoError, match=r"some_task_demo\.hdf5: cannot open as HDF5 \(truncated"):
        export(ExportConfig(hdf5_dir=h5, save_dir=tmp_path / "exp"))


def test_regenerate_then_export_keeps_ee_states_exactly(tmp_path, task_names):
    """The exported state files are the regenerated obs/ee_states + obs/gripper_states bit for bit, and
    the orientation is robosuite's own quat2axisangle of the (w < 0) quaternion, not a sign-flipped one."""
    import robosuite.utils.transform_utils as T

    raw, out, exp = tmp_path / "raw", tmp_path / "out", tmp_path / "exp"
    _write_raw(raw, task_names[:1])
    regenerate(RegenerateConfig(suite="libero_goal", raw_dir=raw, out_dir=out, resolution=RES, tasks=[0],
                                export_dir=exp), env_factory=fake_factory)
    _, demos = read_raw_demo_file(out / f"{task_names[0]}_demo.hdf5")
    official_ori = T.quat2axisangle(QUAT.copy())
    assert np.linalg.norm(official_ori) > np.pi  # angle 2 acos(w) > pi for w < 0; a w >= 0 flip gives < pi
    for demo in demos:
        trj = exp / task_names[0] / f"trj_{int(demo.name.split('_')[1])}"
        for j in range(len(demo)):
            ee = np.load(trj / "ee_state" / f"ee_state_{j}.npy")
            assert ee.dtype == demo.obs["ee_states"].dtype
            np.testing.assert_array_equal(ee, demo.obs["ee_states"][j])
            np.testing.assert_array_equal(np.load(trj / "gripper_state" / f"gripper_state_{j}.npy"),
                                          demo.obs["gripper_states"][j])
            np.testing.assert_array_equal(ee[3:], official_ori)


def test_export_of_an_official_file_reads_the_stored_obs_states(tmp_path):
    """An officially regenerated file: obs/ee_states is copied, even where robot_states says otherwise
    (the official script takes frame 0's robot_states from the source file)."""
    from worldvla.data.export import ExportConfig, export

    rng = np.random.default_rng(0)
    n = 3
    demo = raw_demo(CRAFTED[:n])
    img = rng.integers(0, 255, (n, RES, RES, 3), dtype=np.uint8)
    ee = rng.normal(size=(n, 6)) * 2
    grip = rng.normal(size=(n, 2))
    demo.obs = {"agentview_rgb": img, "eye_in_hand_rgb": img, "ee_pos": ee[:, :3], "ee_ori": ee[:, 3:],
                "ee_states": ee, "gripper_states": grip, "joint_states": np.zeros((n, 7))}
    demo.robot_states = rng.normal(size=(n, 9))  # not consistent with ee_states: must not be used
    write_raw_demo_file(tmp_path / "h5" / "t_demo.hdf5", {"language_instruction": "x"}, [demo])
    export(ExportConfig(hdf5_dir=tmp_path / "h5", save_dir=tmp_path / "exp", layout="rynnvla"))
    trj = tmp_path / "exp" / "t" / "trj_0"
    for j in range(n):
        np.testing.assert_array_equal(np.load(trj / "ee_state" / f"ee_state_{j}.npy"), ee[j])
        np.testing.assert_array_equal(np.load(trj / "eef_gripper_state" / f"eef_gripper_state_{j}.npy"),
                                      np.concatenate([ee[j], grip[j]]))
        np.testing.assert_array_equal(np.load(trj / "robot_state" / f"robot_state_{j}.npy"), demo.robot_states[j])


def test_replay_copies_frame_0_states_from_the_raw_demo():
    """Issue 23 item 2: as the official script, frame 0's states / robot_states are the raw demo's own values
    (the settled env differs from them); later frames and every frame's obs are the env's."""
    source = raw_demo(CRAFTED)
    source.states[0, 0] = 7.0  # the settled FakeEnv state has a step count of 0 here
    source.robot_states = np.arange(len(CRAFTED) * 9, dtype=np.float64).reshape(-1, 9)
    res = replay_demo(FakeEnv(succeed_at=4), source, wait_steps=10)
    np.testing.assert_array_equal(res.demo.states[0], source.states[0])
    np.testing.assert_array_equal(res.demo.robot_states[0], source.robot_states[0])
    assert res.demo.states[1:, 0].tolist() == [1, 2, 3]
    assert res.demo.robot_states[1, 2:5].tolist() == pytest.approx([0.6, 0.0, 1.0])  # eef pos after step 1
    assert res.demo.obs["agentview_rgb"][0, 0, 0, 0] == 0  # the image is the settled env's


def _write_official_regenerated(path, n=3):
    """An HDF5 as the official regenerate script writes it: `data` without attrs, demos without attrs."""
    import h5py

    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        g = f.create_group("data").create_group("demo_0")
        obs = g.create_group("obs")
        obs.create_dataset("gripper_states", data=rng.normal(size=(n, 2)))
        obs.create_dataset("joint_states", data=rng.normal(size=(n, 7)))
        ee = rng.normal(size=(n, 6))
        obs.create_dataset("ee_states", data=ee)
        obs.create_dataset("ee_pos", data=ee[:, :3])
        obs.create_dataset("ee_ori", data=ee[:, 3:])
        obs.create_dataset("agentview_rgb", data=rng.integers(0, 255, (n, RES, RES, 3), dtype=np.uint8))
        obs.create_dataset("eye_in_hand_rgb", data=rng.integers(0, 255, (n, RES, RES, 3), dtype=np.uint8))
        g.create_dataset("actions", data=CRAFTED[:n])
        g.create_dataset("states", data=rng.normal(size=(n, 5)))
        g.create_dataset("robot_states", data=rng.normal(size=(n, 9)))
        g.create_dataset("rewards", data=np.zeros(n))
        g.create_dataset("dones", data=np.array([0] * (n - 1) + [1], dtype=np.uint8))
    return ee


def test_export_reads_an_official_regenerated_file_without_attrs(tmp_path):
    """Issue 23 item 2: the official regenerate script writes no `data` attrs; the task comes from the file
    name (`<task words joined by _>_demo.hdf5`), as the official save script takes it."""
    from worldvla.data.export import ExportConfig, export
    from worldvla.data.raw_demos import RawDemoFile

    h5 = tmp_path / "h5"
    h5.mkdir()
    path = h5 / "put_the_bowl_on_the_plate_demo.hdf5"
    ee = _write_official_regenerated(path)
    with RawDemoFile(path) as f:
        assert f.meta["language_instruction"] == "put the bowl on the plate" and f.names == ["demo_0"]
    export(ExportConfig(hdf5_dir=h5, save_dir=tmp_path / "exp", layout="both"))
    trj = tmp_path / "exp" / "put_the_bowl_on_the_plate" / "trj_0"
    assert sorted(p.name for p in (trj / "imgs").iterdir()) == ["image_0.png", "image_1.png", "image_2.png"]
    np.testing.assert_array_equal(np.load(trj / "ee_state" / "ee_state_2.npy"), ee[2])
    other = tmp_path / "no_suffix.hdf5"
    _write_official_regenerated(other)
    with pytest.raises(RawDemoError, match=r"no_suffix\.hdf5: data attr problem_info lacks language_instruction, "
                                           r"and the file name is not <task words>_demo\.hdf5"):
        RawDemoFile(other)


def test_intended_labels_follow_the_noop_filter_and_are_what_export_writes(tmp_path, task_names):
    """A noisy recording (DART) replays the actions that ran; the expert's intended actions follow
    them through the no-op filter, through the HDF5 files, and are the exported `action_<j>.npy`."""
    intended = CRAFTED + np.array([0.01, -0.02, 0.03, 0, 0, 0, 0])  # a label distinct from every executed row
    demo = raw_demo(CRAFTED)
    demo.expert_actions = intended
    raw, out, exp = tmp_path / "raw", tmp_path / "out", tmp_path / "exp"
    write_raw_demo_file(raw / f"{task_names[0]}_demo.hdf5", {"language_instruction": "x"}, [demo])
    np.testing.assert_array_equal(read_raw_demo_file(raw / f"{task_names[0]}_demo.hdf5")[1][0].expert_actions,
                                  intended)
    regenerate(RegenerateConfig(suite="libero_goal", raw_dir=raw, out_dir=out, tasks=[0], resolution=RES,
                                export_dir=exp, export_layout="rynnvla"), env_factory=fake_factory)
    (replayed,) = read_raw_demo_file(out / f"{task_names[0]}_demo.hdf5")[1]
    np.testing.assert_array_equal(replayed.actions, CRAFTED[EXPECTED_KEEP])  # what ran is replayed
    np.testing.assert_array_equal(replayed.expert_actions, intended[EXPECTED_KEEP])
    trj = exp / task_names[0] / "trj_0"
    exported = np.stack([np.load(trj / "action" / f"action_{j}.npy") for j in range(4)])
    np.testing.assert_array_equal(exported, intended[EXPECTED_KEEP])
    bad = raw_demo(CRAFTED)
    bad.expert_actions = intended[:3]
    with pytest.raises(RawDemoError, match="expert_actions"):
        bad.validate("x")
