"""End to end in the real simulator, through the CLIs: record -> regenerate (+ export) -> conversations ->
pretokenize -> concatenate, for two suites at 256 and 512 px, with the tiny VQ-GAN."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
STEPS = 8  # raw actions per demo; the noisy script makes step 4 an exact no-op


def cli(script: str, *args) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    res = subprocess.run([sys.executable, str(REPO / script), *map(str, args)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=400, check=False)
    assert res.returncode == 0, f"{script} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"


@pytest.mark.sim
@pytest.mark.slow
@pytest.mark.parametrize("suite,res,wrist", [("libero_goal", 256, True), ("libero_object", 512, False)])
def test_pipeline_end_to_end(suite, res, wrist, tiny_assets, tmp_path):
    from worldvla.data.cli import record_main
    from worldvla.data.datasets import PretokenizedDataset
    from worldvla.data.raw_demos import read_raw_demo_file
    from worldvla.tokenizers import image_token_count

    raw, h5, exp, convs, tok = (tmp_path / d for d in ("raw", "h5", "exp", "convs", "tok"))
    ref = None
    if wrist:  # record in-process at the target size, and keep the env for an independent reference frame
        from worldvla.data.raw_demos import raw_demo_filename, task_meta_from_env, write_raw_demo_file
        from worldvla.data.recording import noisy_script, record_rollout, settle
        from worldvla.envs.libero import LiberoEnv, format_obs

        env = LiberoEnv(suite, 0, resolution=res)
        try:
            raw_demos = [record_rollout(env, noisy_script(seed=i, n_steps=STEPS), episode=i, max_steps=STEPS)
                         for i in range(2)]
            raw_demo = raw_demos[0]
            raw_file = write_raw_demo_file(raw / raw_demo_filename(env.task.name), task_meta_from_env(env), raw_demos)
            # what the eval loop sees in this state (LiberoEnv + format_obs: rotated images, 8-D state), with
            # the fixture placement regenerate uses for demo_0 (its per-demo RNG seed)
            from worldvla.data.regenerate import replay_seed

            ref = format_obs(settle(env, raw_demo.states[0], 10, seed=replay_seed(0, "demo_0")))
        finally:
            env.close()
    else:  # through the recording CLI, at the raw datasets' 128 px
        [raw_file] = record_main([f"suite={suite}", "tasks=[0]", "n_demos=1", f"steps={STEPS}", "resolution=128",
                                  f"out_dir={raw}"])
    task = raw_file.name[: -len("_demo.hdf5")]

    # regenerate + export (noisy demos do not succeed: keep_failed is for test data only)
    regen = ["libero_util/regenerate.py", f"suite={suite}", f"raw_dir={raw}", f"out_dir={h5}", f"resolution={res}",
             "tasks=[0]", "keep_failed=true", f"export_dir={exp}"]
    cli(*regen)
    meta, demos = read_raw_demo_file(h5 / raw_file.name)
    demo = demos[0]
    n_traj = len(demos)
    if n_traj > 1:  # a resumed run replays demo_1 first in a fresh env: same result as after demo_0
        for f in (h5 / ".parts" / raw_file.name[: -len("_demo.hdf5")]).glob("demo_1.*"):
            f.unlink()
        cli(*regen)
        _, again = read_raw_demo_file(h5 / raw_file.name)
        for key in ("agentview_rgb", "eye_in_hand_rgb", "ee_states"):
            np.testing.assert_array_equal(again[1].obs[key], demos[1].obs[key], err_msg=key)
    assert demo.name == "demo_0" and len(demo) == STEPS - 1  # the exact no-op was dropped
    assert demo.obs["agentview_rgb"].shape == (STEPS - 1, res, res, 3) and meta["resolution"] == res
    info = json.loads((h5 / f"{suite}_metainfo.json").read_text())[task]["demo_0"]
    assert info["n_raw"] == STEPS and info["n_noops"] == 1 and info["kept"]
    trj = exp / task / "trj_0"
    assert len(list((trj / "imgs").iterdir())) == STEPS - 1 and (trj / "imgs_wrist").is_dir()

    if ref is not None:  # exported frame 0 == the independent settle of the same state (another process)
        np.testing.assert_array_equal(np.asarray(Image.open(trj / "imgs_third_view" / "image_0.png")), ref.agentview)
        np.testing.assert_array_equal(np.asarray(Image.open(trj / "imgs_wrist" / "image_0.png")), ref.wrist)
        np.testing.assert_allclose(np.load(trj / "eef_gripper_state" / "eef_gripper_state_0.npy"), ref.state, atol=1e-6)
        np.testing.assert_array_equal(np.asarray(Image.open(trj / "imgs" / "image_0.png")),
                                      demo.obs["agentview_rgb"][0][::-1, ::-1])

    short = suite.removeprefix("libero_")
    extra = ["with_wrist=true", "with_state=true"] if wrist else []
    cli("data/conversations.py", f"base_dir={exp}", f"output_dir={convs}", f"task_name={short}", f"resolution={res}",
        "his=2", "len_action=2", *extra)
    if wrist:
        action_json = convs / f"libero_{short}_his_2_train_third_view_wrist_w_state_2_{res}.json"
        world_json = convs / f"libero_{short}_his_1_train_third_view_wrist_a2i_{res}.json"
    else:
        action_json = convs / f"libero_{short}_his_2_train_img_only_ck_2_{res}.json"
        world_json = convs / f"libero_{short}_his_1_train_a2i_{res}.json"
    n_frames = STEPS - 1
    assert len(json.loads(action_json.read_text())) == n_traj * (n_frames - 1)  # j + K <= N
    assert len(json.loads(world_json.read_text())) == n_traj * (n_frames - 1)  # j <= N - 2
    assert json.loads((convs / action_json.name.replace("_train_", "_val_ood_")).read_text()) == []

    common = [f"tokenizer.path={tiny_assets.root}", f"tokenizer.resolution={res}", "shard_size=3",
              f"frame_cache={tok / 'frames'}"]  # the action run reuses the world run's VQ codes
    cli("data/pretokenize.py", f"inputs=[{world_json}]", f"out_dir={tok / 'world'}", *common)
    cli("data/pretokenize.py", f"inputs=[{action_json}]", f"out_dir={tok / 'action'}", *common)
    out = tok / f"libero_{short}_his_2_train_img_only_ck_2_a2i_{res}.json"
    cli("data/concatenate.py", f"inputs=[{tok / 'world'},{tok / 'action'}]", f"output={out}")

    ds = PretokenizedDataset(out)
    assert len(ds) == 2 * n_traj * (n_frames - 1)
    assert ds.kind(0) == "world" and ds.kind(len(ds) - 1) == "action"
    per_image = image_token_count(res)
    views = 2 if wrist else 1
    world = ds[0]
    images = world.spans_of("image")
    assert len(images) == 2 * views and all(sp.end - sp.start == per_image for sp in images)
    assert sum(lab != -100 for lab in world.labels) == views * per_image + 1
    action = ds[len(ds) - 1]
    assert len(action.spans_of("action")) == 2 and len(action.spans_of("state")) == (1 if wrist else 0)
    manifest = json.loads((tok / "action" / "manifest.json").read_text())
    assert manifest["tokenizer"]["resolution"] == res and manifest["n_samples"] == n_traj * (n_frames - 1)
    assert manifest["timing"]["frames_encoded_this_run"] == 0
