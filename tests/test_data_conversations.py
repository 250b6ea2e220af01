"""Conversation generation: sample windows, official split, file names, errors."""

import json

import numpy as np
import pytest
from PIL import Image

from worldvla.data.conversations import (
    ConversationError,
    ConversationsConfig,
    generate,
    output_names,
    scan,
    split_assignment,
)
from worldvla.recipe import Recipe

TINY = np.zeros((4, 4, 3), np.uint8)


def make_export(root, tasks: dict[str, int], n_frames=3, wrist=False, state=False):
    """`tasks`: task name -> number of trajectories; files of the official layout, tiny content."""
    for task, n_traj in tasks.items():
        for i in range(n_traj):
            trj = root / task / f"trj_{i}"
            dirs = ["action", "imgs"] + (["imgs_third_view", "imgs_wrist"] if wrist else []) + \
                (["eef_gripper_state"] if state else [])
            for d in dirs:
                (trj / d).mkdir(parents=True, exist_ok=True)
            for j in range(n_frames):
                np.save(trj / "action" / f"action_{j}.npy", np.full(7, j, float))
                for d in ("imgs", "imgs_third_view", "imgs_wrist"):
                    if (trj / d).is_dir():
                        Image.fromarray(TINY).save(trj / d / f"image_{j}.png")
                if state:
                    np.save(trj / "eef_gripper_state" / f"eef_gripper_state_{j}.npy", np.zeros(8))
    return root


def test_action_and_world_windows(tmp_path):
    base = make_export(tmp_path / "exp", {"put_the_bowl_on_the_stove": 1}, n_frames=7, wrist=True, state=True)
    cfg = ConversationsConfig(base_dir=base, output_dir=tmp_path / "convs", task_name="goal", recipe=Recipe(history=2, chunk_size=5, with_wrist=True, with_state=True))
    files = generate(cfg)
    action = json.loads(files["train"]["action"].read_text())
    world = json.loads(files["train"]["world"].read_text())
    assert len(action) == 3 and len(world) == 6  # j + K <= N with N = 7; j <= N - 2
    root = f"{base}/put_the_bowl_on_the_stove/trj_0"
    first, second = action[0], action[1]
    assert first["conversations"][0]["value"] == \
        "What action should the robot take to put the bowl on the stove?<|state|><|image|><|image|>"
    assert first["conversations"][1]["value"] == "<|action|>" * 5
    assert first["image"] == [f"{root}/imgs_third_view/image_0.png", f"{root}/imgs_wrist/image_0.png"]
    assert second["image"] == [f"{root}/imgs_third_view/image_0.png", f"{root}/imgs_wrist/image_0.png",
                               f"{root}/imgs_third_view/image_1.png", f"{root}/imgs_wrist/image_1.png"]
    assert second["action"] == [f"{root}/action/action_{j}.npy" for j in range(1, 6)]
    assert second["state"] == [f"{root}/eef_gripper_state/eef_gripper_state_1.npy"]
    w = world[2]
    assert w["conversations"][0]["value"].endswith("actions.<|image|><|image|><|action|>")
    assert w["conversations"][1]["value"] == "<|image|><|image|>"
    assert w["image"] == [f"{root}/imgs_third_view/image_2.png", f"{root}/imgs_wrist/image_2.png",
                          f"{root}/imgs_third_view/image_3.png", f"{root}/imgs_wrist/image_3.png"]
    assert w["action"] == [f"{root}/action/action_2.npy"]


def test_worldvla_mode_and_names(tmp_path):
    base = make_export(tmp_path / "exp", {"a_task": 1}, n_frames=3)
    cfg = ConversationsConfig(base_dir=base, output_dir=tmp_path / "c", task_name="goal", recipe=Recipe(history=2, chunk_size=2))
    files = generate(cfg)
    assert files["train"]["action"].name == "libero_goal_his_2_train_img_only_ck_2_256.json"
    assert files["val_ood"]["world"].name == "libero_goal_his_1_val_ood_a2i_256.json"
    action = json.loads(files["train"]["action"].read_text())
    assert action[1]["conversations"][0]["value"] == "What action should the robot take to a task?<|image|><|image|>"
    assert "state" not in action[0]
    world = json.loads(files["train"]["world"].read_text())
    assert world[0]["conversations"][0]["value"].endswith("actions.<|image|><|action|>")
    assert world[0]["conversations"][1]["value"] == "<|image|>"
    names = output_names(ConversationsConfig(task_name="10", recipe=Recipe(with_state=True, chunk_size=10, resolution=512)), "val_ind")
    assert names["action"] == "libero_10_his_2_val_ind_third_view_w_state_10_512.json"


def test_official_split_is_lexicographic_disjoint_and_deterministic(tmp_path):
    tasks = {f"task_{c}": 11 for c in "abcdefghijk"}  # 11 tasks x 11 trajectories
    base = make_export(tmp_path / "exp", tasks, n_frames=2)
    found = scan(base, ["imgs"], with_state=False)
    assert [t.name for t in found["task_a"]][:4] == ["trj_0", "trj_1", "trj_10", "trj_2"]
    split = split_assignment(found)
    assert {t for t, _ in split["val_ood"]} == {"task_k"}  # ceil(0.9 * 11) = 10 tasks in-distribution
    assert len(split["val_ood"]) == 11
    assert sorted(j for t, j in split["val_ind"]) == ["trj_9"] * 10  # the lexicographically last one
    assert len(split["train"]) == 100
    all_pairs = [p for s in split.values() for p in s]
    assert len(all_pairs) == len(set(all_pairs)) == 121
    # files are byte-identical across runs; random mode is seeded, same sizes, disjoint
    cfg = ConversationsConfig(base_dir=base, output_dir=tmp_path / "c1", recipe=Recipe(chunk_size=1))
    f1 = generate(cfg)
    f2 = generate(ConversationsConfig(base_dir=base, output_dir=tmp_path / "c2", recipe=Recipe(chunk_size=1)))
    for s in f1:
        for k in f1[s]:
            assert f1[s][k].read_bytes() == f2[s][k].read_bytes()
    r1 = split_assignment(found, mode="random", seed=3)
    assert r1 == split_assignment(found, mode="random", seed=3)
    assert r1 != split_assignment(found, mode="random", seed=4)
    assert {s: len(v) for s, v in r1.items()} == {s: len(v) for s, v in split.items()}
    assert len({p for s in r1.values() for p in s}) == 121
    manifest = json.loads((tmp_path / "c1" / "libero_goal_256_conversations_manifest.json").read_text())
    assert manifest["counts"]["val_ood"]["world"] == 11 and len(manifest["splits"]["train"]) == 100


def test_shuffle_is_seeded(tmp_path):
    base = make_export(tmp_path / "exp", {"t": 3}, n_frames=6)
    runs = [generate(ConversationsConfig(base_dir=base, output_dir=tmp_path / f"s{i}", shuffle=True, seed=s, world_model=False, recipe=Recipe(chunk_size=1)))["train"]["action"]
            for i, s in enumerate((1, 1, 2))]
    a, b, c = (json.loads(p.read_text()) for p in runs)
    assert a == b and a != c and sorted(map(json.dumps, a)) == sorted(map(json.dumps, c))


def test_missing_image_names_trajectory(tmp_path):
    base = make_export(tmp_path / "exp", {"put_the_bowl_on_the_stove": 2}, n_frames=4)
    (base / "put_the_bowl_on_the_stove" / "trj_1" / "imgs" / "image_2.png").unlink()
    with pytest.raises(ConversationError, match=r"trj_1: missing image file\(s\) for frame\(s\) \[2\] in imgs/"):
        generate(ConversationsConfig(base_dir=base, output_dir=tmp_path / "c"))
    found = scan(base, ["imgs"], with_state=False, strict=False)  # official behaviour: the frame is dropped
    assert found["put_the_bowl_on_the_stove"][1].frames == [0, 1, 3]


def test_language_instruction_option(tmp_path):
    base = make_export(tmp_path / "exp", {"LIVING_ROOM_SCENE2_put_both_the_alphabet_soup_and_the_tomato_sauce_in_the_basket": 1},
                       n_frames=2)
    f = generate(ConversationsConfig(base_dir=base, output_dir=tmp_path / "c", instruction="language", world_model=False, recipe=Recipe(chunk_size=1)))
    text = json.loads(f["train"]["action"].read_text())[0]["conversations"][0]["value"]
    assert text.startswith("What action should the robot take to put both the alphabet soup and the tomato sauce")
    assert "LIVING" not in text
