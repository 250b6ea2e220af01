"""The proprio state's orientation is robosuite's quat2axisangle, unflipped, wherever worldvla computes it."""

import numpy as np
import pytest

robosuite_T = pytest.importorskip("robosuite.utils.transform_utils")


def quats(n=200, seed=0):
    q = np.random.default_rng(seed).normal(size=(n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    q[: n // 2, 3] = -np.abs(q[: n // 2, 3])  # half with w < 0
    return np.concatenate([q, [[0, 0, 0, 1.0], [0, 0, 0, -1.0], [0, 0, 1.0, 0], [0.6, 0, 0, -0.8]]])


def test_quat2axisangle_equals_robosuites_bit_for_bit():
    from worldvla.envs.libero import quat2axisangle

    for q in quats():
        given = q.copy()
        ours = quat2axisangle(given)
        np.testing.assert_array_equal(ours, robosuite_T.quat2axisangle(q.copy()))
        np.testing.assert_array_equal(given, q)  # robosuite clips in place; ours leaves the input alone


def test_w_below_zero_is_not_flipped():
    from worldvla.envs.libero import quat2axisangle

    q = np.array([0.6, 0.0, 0.0, -0.8])  # rotation by 2 acos(-0.8) = 4.996 rad about +x
    ori = quat2axisangle(q)
    np.testing.assert_array_equal(ori, robosuite_T.quat2axisangle(q.copy()))
    assert ori[0] > np.pi  # the flip would give -(2 pi - 4.996) = -1.287
    assert not np.allclose(ori, quat2axisangle(-q))


def test_regenerated_obs_record_uses_the_official_formula():
    from worldvla.data.raw_demos import obs_record

    img = np.zeros((4, 4, 3), np.uint8)
    for q in quats(20, seed=1):
        raw = {"agentview_image": img, "robot0_eye_in_hand_image": img, "robot0_eef_pos": np.array([0.1, 0.2, 0.3]),
               "robot0_eef_quat": q.copy(), "robot0_gripper_qpos": np.array([0.01, -0.01]),
               "robot0_joint_pos": np.zeros(7)}
        rec = obs_record(raw)
        ref = robosuite_T.quat2axisangle(q.copy())
        np.testing.assert_array_equal(rec["ee_ori"], ref)
        np.testing.assert_array_equal(rec["ee_states"], np.concatenate([[0.1, 0.2, 0.3], ref]))


def test_export_without_obs_states_rebuilds_them_unflipped(tmp_path):
    from worldvla.data.export import proprio_states
    from worldvla.data.raw_demos import RawDemo

    q = quats(10, seed=2)[:10]
    rs = np.concatenate([np.full((10, 2), 0.02), np.full((10, 3), 0.5), q], axis=1)
    demo = RawDemo(np.zeros((10, 7)), np.zeros((10, 3)), "<x/>", robot_states=rs)
    ee, grip = proprio_states(demo, "t")
    for j in range(10):
        np.testing.assert_array_equal(ee[j, 3:], robosuite_T.quat2axisangle(q[j].copy()))
    np.testing.assert_array_equal(grip, rs[:, :2])
