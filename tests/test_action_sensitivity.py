"""World-model action sensitivity (`worldvla imagine sensitivity=true`): toy world models behind the
`imagine(start_views, actions)` interface of eval/imagine.run.

- a world model that ignores the action (it repeats the start frame) has a gap of exactly zero;
- one that paints the action into the image, on trajectories whose recorded frames are that painting
  (plus a fixed offset), is better with the true actions: a positive PSNR and SSIM gap at every horizon;
- shuffling is seeded, never the identity, and independent of the batch;
- the real tiny world model runs the three variants through the CLI.
"""

import json

import numpy as np
import pytest
from PIL import Image

from worldvla.eval import imagine as IM
from worldvla.eval.video_metrics.report import action_gap

R, H = 32, 4


def paint(action: np.ndarray) -> np.ndarray:
    """An image whose left half encodes the action's x and right half its gripper."""
    img = np.zeros((R, R, 3), dtype=np.float64)
    img[:, : R // 2] = 128 + 120 * action[0]
    img[:, R // 2:] = 128 + 120 * action[6]
    return img


def _export(root, n_traj=3, n_frames=H + 1):
    """Trajectories whose frame j+1 is paint(action j) + 10 (the world model's fixed error)."""
    rng = np.random.default_rng(3)
    for t in range(n_traj):
        trj = root / "lift_the_cube" / f"trj_{t}"
        (trj / "action").mkdir(parents=True)
        (trj / "imgs").mkdir()
        acts = np.concatenate([rng.uniform(-0.9, 0.9, (n_frames, 6)), rng.choice([-1.0, 1.0], (n_frames, 1))], axis=1)
        for j in range(n_frames):
            frame = paint(acts[j - 1]) + 10 if j else np.full((R, R, 3), 50.0)
            Image.fromarray(np.clip(frame, 0, 255).astype(np.uint8)).save(trj / "imgs" / f"image_{j}.png")
            np.save(trj / "action" / f"action_{j}.npy", acts[j])


def ignores_action(start, actions):
    return np.repeat(start[:, None], actions.shape[1], axis=1)


def copies_action(start, actions):
    b, h = actions.shape[:2]
    out = np.stack([[paint(actions[i, t]) for t in range(h)] for i in range(b)])  # (B, H, R, R, 3)
    return np.clip(out, 0, 255).astype(np.uint8)[:, :, None]  # one view


def _run(tmp_path, world_model, **kw):
    _export(tmp_path / "data")
    cfg = IM.ImagineConfig(data_dir=str(tmp_path / "data"), split="all", horizon=H, batch_size=2, sensitivity=True,
                           suite="toy", out_dir=str(tmp_path / "out"), **kw)
    IM.run(cfg, imagine=world_model)
    return json.loads((tmp_path / "out" / "toy_metrics.json").read_text())


def test_a_world_model_that_ignores_the_action_has_zero_gap(tmp_path):
    report = _run(tmp_path, ignores_action)
    assert set(report["results"]) == {"inf", "inf_shuffled_actions", "inf_zero_actions"}
    gaps = report["action_sensitivity"]["inf"]
    for variant in ("shuffled_actions", "zero_actions"):
        g = gaps[variant]
        assert g["num_clips"] == 3
        assert g["summary"] == {"psnr": 0.0, "ssim": 0.0}
        assert g["per_frame"]["psnr"] == [0.0] * H and g["per_frame"]["ssim"] == [0.0] * H
    md = (tmp_path / "out" / "toy_metrics.md").read_text()
    assert "Action sensitivity" in md and "| inf | shuffled_actions | 3 | 0.00 | 0.00 |" in md
    assert (tmp_path / "out" / "toy_action_gap_vs_horizon.png").is_file()


def test_a_world_model_that_copies_the_action_has_a_positive_gap(tmp_path):
    report = _run(tmp_path, copies_action)
    res = report["results"]
    for variant in ("shuffled_actions", "zero_actions"):
        g = report["action_sensitivity"]["inf"][variant]
        assert g["summary"]["psnr"] > 3 and g["summary"]["ssim"] > 0  # the true actions explain the frames
        assert all(v > 0 for v in g["per_frame"]["psnr"]) and len(g["per_frame"]["psnr"]) == H
        expected = res["inf"]["summary"]["psnr"] - res[f"inf_{variant}"]["summary"]["psnr"]
        assert g["summary"]["psnr"] == pytest.approx(expected)


def test_shuffling_is_seeded_never_identity_and_batch_independent():
    acts = np.arange(3 * 7, dtype=float).reshape(3, 7)
    for seed in range(20):
        s = IM.shuffled_actions(acts, seed, "task__trj_0")
        assert not np.array_equal(s, acts) and sorted(map(tuple, s)) == sorted(map(tuple, acts))
    assert np.array_equal(IM.shuffled_actions(acts, 1, "a"), IM.shuffled_actions(acts, 1, "a"))
    both = IM.action_variants(np.stack([acts, acts + 1]), ["a", "b"], 1)["shuffled_actions"]
    assert np.array_equal(both[1], IM.action_variants((acts + 1)[None], ["b"], 1)["shuffled_actions"][0])
    with pytest.raises(ValueError, match="horizon >= 2"):
        IM.shuffled_actions(acts[:1], 0, "x")
    assert action_gap({"inf": {"summary": {"psnr": 1.0}}}) == {}  # no variant rows: no gap section


@pytest.mark.usefixtures("single_torch_thread")
def test_cli_with_the_tiny_world_model(tmp_path, tiny_assets):
    from worldvla.testing.tiny_model import write_tiny_checkpoint

    ckpt = write_tiny_checkpoint(tmp_path / "ckpt", tiny_assets, resolution=R * 2)
    root = tmp_path / "data" / "a_task" / "trj_0"
    (root / "action").mkdir(parents=True)
    (root / "imgs").mkdir()
    rng = np.random.default_rng(0)
    for j in range(3):
        Image.fromarray(rng.integers(0, 256, (2 * R, 2 * R, 3), dtype=np.uint8)).save(root / "imgs" / f"image_{j}.png")
        np.save(root / "action" / f"action_{j}.npy", rng.uniform(-0.5, 0.5, 7))
    assert IM.main([f"checkpoint={ckpt}", f"data_dir={tmp_path / 'data'}", "split=all", "horizon=2",
                    "sensitivity=true", "feed_back=tokens", "suite=s", f"out_dir={tmp_path / 'out'}"]) == 0
    report = json.loads((tmp_path / "out" / "s_metrics.json").read_text())
    assert set(report["action_sensitivity"]["inf"]) == {"shuffled_actions", "zero_actions"}
    assert len(report["action_sensitivity"]["inf"]["zero_actions"]["per_frame"]["psnr"]) == 2
