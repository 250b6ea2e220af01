"""Scripted LIBERO expert: id parsing and rotation helpers, and one real episode in the simulator
that must succeed and come back from its raw demo file intact."""

import json

import numpy as np
import pytest

from worldvla.config import parse_ids
from worldvla.data.recording import RecordScriptedConfig
from worldvla.envs.scripted_expert import (
    ExpertConfig,
    _mat_to_axisangle,
    _minor_axis_yaw,
    _quat_xyzw_to_mat,
    _rot_z,
)


def test_parse_ids():
    assert parse_ids("0-3,7") == [0, 1, 2, 3, 7]
    assert parse_ids("5") == [5]
    assert parse_ids(2) == [2]
    for bad in ("", "a", "3-1", "1-x"):
        with pytest.raises(ValueError):
            parse_ids(bad)


def test_rotation_helpers():
    rng = np.random.default_rng(0)
    for _ in range(20):
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)
        r = _quat_xyzw_to_mat(q)
        np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
        aa = _mat_to_axisangle(r)
        angle = np.linalg.norm(aa)
        # rebuild with Rodrigues and compare
        k = aa / angle
        kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
        np.testing.assert_allclose(np.eye(3) + np.sin(angle) * kx + (1 - np.cos(angle)) * kx @ kx, r, atol=1e-9)
    np.testing.assert_allclose(_mat_to_axisangle(_rot_z(0.3)), [0, 0, 0.3], atol=1e-12)
    np.testing.assert_allclose(np.abs(_mat_to_axisangle(_rot_z(np.pi))), [0, 0, np.pi], atol=1e-6)


def test_minor_axis_yaw():
    # a 0.10 x 0.04 box turned by 30 degrees: narrow direction at 120 degrees
    corners = np.array([[x, y, 0] for x in (-0.05, 0.05) for y in (-0.02, 0.02)], dtype=float)
    pts = corners @ _rot_z(np.deg2rad(30)).T
    yaw, narrow, wide = _minor_axis_yaw(pts)
    assert abs(np.rad2deg(yaw) - 120) < 5.1 and narrow < 0.045 and wide > 0.095


@pytest.mark.sim
@pytest.mark.slow  # 36 s on the shared 2-core VM under load: a whole expert episode in the simulator
def test_expert_solves_libero_object_task_and_recording_resumes(tmp_path, monkeypatch):
    """One init state of 'pick up the alphabet soup and place it in the basket', recorded at 64 px.
    The run is interrupted after the attempt and before the task's file is written; the rerun must
    reuse the saved attempt (the expert may not run again), and a third run must skip the task."""
    from worldvla.data import recording as se
    from worldvla.data.raw_demos import read_raw_demo_file

    cfg = RecordScriptedConfig(suite="libero_object", tasks="0", episodes="0", out=str(tmp_path), resolution=64)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(se, "_merge_task", interrupted)
        with pytest.raises(KeyboardInterrupt):
            se.record_scripted_demos(cfg, progress=False)
    assert (tmp_path / ".parts" / "task_0" / "ep_0.json").is_file()
    assert not list(tmp_path.glob("*.hdf5")) and not (tmp_path / "success_report.json").exists()

    def no_expert(*args, **kwargs):
        raise AssertionError("a finished attempt was run again")

    monkeypatch.setattr(se, "run_expert", no_expert)
    report = se.record_scripted_demos(cfg, progress=False)
    task = report["tasks"]["0"]
    assert task["attempts"] == 1 and task["successes"] == 1, task
    ep = task["episodes"][0]
    assert ep["success"] and ep["steps"] < 200 and ep["demo"] == "demo_0"
    saved = json.loads((tmp_path / "success_report.json").read_text())
    assert saved["success_rate"] == 1.0 and saved["machine"]["cores"] >= 1
    assert not (tmp_path / ".parts").exists()  # merged parts are removed

    meta, demos = read_raw_demo_file(tmp_path / task["file"])
    assert meta["language_instruction"] == "pick up the alphabet soup and place it in the basket"
    (demo,) = demos
    assert len(demo) == ep["steps"] and demo.success and demo.dones[:-1].sum() == 0
    assert demo.obs["agentview_rgb"].shape == (len(demo), 64, 64, 3)
    acts = demo.actions
    lim = ExpertConfig().max_action
    assert np.abs(acts[:, :6]).max() <= lim + 1e-9
    assert set(np.unique(acts[:, 6])) == {-1.0, 1.0}  # opened and closed, exactly +-1

    class NoEnv:
        def __init__(self, *args, **kwargs):
            raise AssertionError("a finished task was opened again")

    monkeypatch.setattr("worldvla.envs.libero.LiberoEnv", NoEnv)
    assert se.record_scripted_demos(cfg, progress=False)["tasks"] == saved["tasks"]
    with pytest.raises(ValueError, match="run_key"):  # other settings into the same folder: refused
        se.record_scripted_demos(RecordScriptedConfig(**{**cfg.__dict__, "resolution": 32}), progress=False)


@pytest.mark.sim
def test_noisy_copies_record_the_noise_they_execute(tmp_path):
    """`noisy_copies=1`: each init state is attempted as is and once with N(0, action_noise) on the arm
    dims. Both start from the same settled state, so their first actions differ by exactly the noise;
    the recorded action must be the noisy one that ran (regeneration replays what is recorded), and the
    gripper is left alone."""
    from worldvla.data import recording as se
    from worldvla.data.raw_demos import read_raw_demo_file

    cfg = RecordScriptedConfig(suite="libero_object", tasks="0", episodes="0", out=str(tmp_path), resolution=64,
                               max_steps=12, keep_failures=True, noisy_copies=1, action_noise=0.3)
    report = se.record_scripted_demos(cfg, progress=False)
    task = report["tasks"]["0"]
    assert task["attempts"] == 2 and task["noisy_copies"] == 1
    assert [(e["episode"], e["copy"], e["action_noise"]) for e in task["episodes"]] == [(0, 0, 0.0), (0, 1, 0.3)]
    _, (clean, noisy) = read_raw_demo_file(tmp_path / task["file"])
    np.testing.assert_array_equal(clean.states[0], noisy.states[0])  # same init state
    first = noisy.actions[0, :6] - clean.actions[0, :6]
    assert 0.05 < np.abs(first).max() < 4 * 0.3, first  # the noise itself, in the executed action
    np.testing.assert_array_equal(clean.actions[:, 6], noisy.actions[:, 6])  # gripper untouched
    assert np.abs(noisy.actions[:, :6]).max() <= 1.0
    # DART labels: the noisy copy also stores what the expert intended; from the same first state that
    # is the clean attempt's first action, and the executed actions differ from it by the noise
    assert clean.expert_actions is None and noisy.expert_actions.shape == noisy.actions.shape
    np.testing.assert_array_equal(noisy.expert_actions[0], clean.actions[0])
    np.testing.assert_allclose(noisy.labels, noisy.expert_actions)
    assert np.abs(noisy.actions[:, :6] - noisy.expert_actions[:, :6]).min(axis=1).max() > 0
    np.testing.assert_array_equal(noisy.actions[:, 6], noisy.expert_actions[:, 6])
    with pytest.raises(ValueError, match="noisy_copies"):
        se.record_scripted_demos(RecordScriptedConfig(**{**cfg.__dict__, "out": str(tmp_path / "b"),
                                                          "noisy_copies": -1}), progress=False)


@pytest.mark.sim
def test_intended_labels_survive_regenerate_and_become_the_exported_actions(tmp_path):
    """A noisy recording replays its executed actions (the scene must follow the same path) and
    exports, per kept frame, the expert's intended action as the label; `noise_label=executed`
    stores no intended actions, so the export labels with the noisy action that ran."""
    from worldvla.data import recording as se
    from worldvla.data.raw_demos import read_raw_demo_file
    from worldvla.data.regenerate import RegenerateConfig, regenerate

    for label in ("intended", "executed"):
        raw = tmp_path / label / "raw"
        cfg = RecordScriptedConfig(suite="libero_object", tasks="0", episodes="0", out=str(raw), resolution=64,
                                   max_steps=10, keep_failures=True, noisy_copies=1, action_noise=0.3,
                                   noise_label=label)
        task = se.record_scripted_demos(cfg, progress=False)["tasks"]["0"]
        _, (_, noisy) = read_raw_demo_file(raw / task["file"])
        assert (noisy.expert_actions is not None) == (label == "intended")
        export = tmp_path / label / "export"
        regenerate(RegenerateConfig(suite="libero_object", raw_dir=raw, out_dir=tmp_path / label / "h5", resolution=64,
                                    tasks=[0], keep_failed=True, export_dir=export, export_layout="rynnvla"))
        _, (_, replayed) = read_raw_demo_file(tmp_path / label / "h5" / task["file"])
        np.testing.assert_array_equal(replayed.actions, noisy.actions)  # no no-op among noisy actions
        trj = sorted((export / task["file"].removesuffix("_demo.hdf5")).glob("trj_*"))[1]
        exported = np.stack([np.load(trj / "action" / f"action_{j}.npy") for j in range(len(replayed))])
        np.testing.assert_array_equal(exported, noisy.labels)
