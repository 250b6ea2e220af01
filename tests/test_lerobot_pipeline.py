"""A dataset written by LeRobot 0.6.1 (format v3.0) through the whole data path, by the CLIs:
data/lerobot_to_hdf5.py (import + export_dir) -> data/conversations.py -> data/pretokenize.py -> data/concatenate.py,
with the tiny VQ-GAN / text tokenizer and the action and state min/max the importer computed."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from worldvla.data.conversations import ConversationsConfig, output_names
from worldvla.recipe import Recipe

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "lerobot" / "lr_v30_image"
TASKS = ["put the bowl on the plate", "open the top drawer of the cabinet",
         "pick up the ketchup and place it in the basket"]
LENGTHS = [12, 15, 9]
HIS, K, RES = 2, 5, 256


def cli(script: str, *args) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    res = subprocess.run([sys.executable, str(REPO / script), *map(str, args)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=400, check=False)
    assert res.returncode == 0, f"{script} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"


@pytest.mark.slow
def test_lerobot_v3_dataset_to_training_shards(tiny_assets, tmp_path):
    from worldvla.data.datasets import PretokenizedDataset
    from worldvla.tokenizers import image_token_count

    h5, exp, convs, tok = (tmp_path / d for d in ("h5", "exp", "convs", "tok"))
    cli("data/lerobot_to_hdf5.py", "--input", FIXTURE, "--out", h5, "--front-key", "observation.images.image",
        "--wrist-key", "observation.images.wrist_image", "--export-dir", exp)
    # export: one task folder per instruction, frames bit-exact (PNG in, PNG out), state and action as float64
    assert sorted(p.name for p in exp.iterdir()) == sorted(t.replace(" ", "_") for t in TASKS)
    trj = exp / TASKS[1].replace(" ", "_") / "trj_0"
    frame = np.asarray(Image.open(trj / "imgs_third_view" / "image_4.png"))
    want = np.clip(np.linspace(0, 255, 256, dtype=np.float32) + 10 * 1 + 3 * 4, 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(frame, np.broadcast_to(want[None, :, None], (256, 256, 3)))
    np.testing.assert_array_equal(np.asarray(Image.open(trj / "imgs_wrist" / "image_4.png")), frame[::-1])
    import h5py

    with h5py.File(h5 / "episode_000001.hdf5") as f:
        np.testing.assert_array_equal(np.load(trj / "action" / "action_7.npy"), f["action"][7].astype(np.float64))
        np.testing.assert_array_equal(np.load(trj / "eef_gripper_state" / "eef_gripper_state_7.npy"),
                                      f["obs/state"][7].astype(np.float64))
    assert len(list((trj / "imgs").iterdir())) == LENGTHS[1]

    cli("data/conversations.py", f"base_dir={exp}", f"output_dir={convs}", "task_name=lerobot", f"resolution={RES}",
        f"his={HIS}", f"len_action={K}", "with_wrist=true", "with_state=true")
    names = output_names(ConversationsConfig(task_name="lerobot", recipe=Recipe(resolution=RES, history=HIS, chunk_size=K, with_wrist=True, with_state=True)), "train")
    action_json, world_json = convs / names["action"], convs / names["world"]
    actions = json.loads(action_json.read_text())
    assert len(actions) == sum(n - K + 1 for n in LENGTHS)  # 3 tasks x 1 episode, all in train
    assert len(json.loads(world_json.read_text())) == sum(n - 1 for n in LENGTHS)
    prompts = {json.dumps(a["conversations"]) for a in actions}
    assert all(any(t in p for p in prompts) for t in TASKS)  # the LeRobot task strings are the prompts

    common = [f"tokenizer.path={tiny_assets.root}", f"tokenizer.resolution={RES}", "shard_size=16",
              f"tokenizer.action_stats={h5 / 'action_stats.json'}", f"tokenizer.state_stats={h5 / 'state_stats.json'}",
              f"frame_cache={tok / 'frames'}"]
    cli("data/pretokenize.py", f"inputs=[{world_json}]", f"out_dir={tok / 'world'}", *common)
    cli("data/pretokenize.py", f"inputs=[{action_json}]", f"out_dir={tok / 'action'}", *common)
    out = tok / "lerobot_train.json"
    cli("data/concatenate.py", f"inputs=[{tok / 'world'},{tok / 'action'}]", f"output={out}")

    ds = PretokenizedDataset(out)
    n_world, n_action = sum(n - 1 for n in LENGTHS), len(actions)
    assert len(ds) == n_world + n_action
    assert ds.kind(0) == "world" and ds.kind(len(ds) - 1) == "action"
    sample = ds[len(ds) - 1]
    images = sample.spans_of("image")
    assert len(images) == 2 * HIS and all(sp.end - sp.start == image_token_count(RES) for sp in images)
    assert len(sample.spans_of("action")) == K and len(sample.spans_of("state")) == 1
    manifest = json.loads((tok / "action" / "manifest.json").read_text())
    assert manifest["n_samples"] == n_action
    assert manifest["tokenizer"]["action_stats"]["min"] == json.loads((h5 / "action_stats.json").read_text())["min"]
