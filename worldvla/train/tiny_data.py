"""A tiny training set made by the real data pipeline, for CPU tests, the benchmark and exps/train_tiny.sh.

Synthetic trajectories in the export layout (`<task>/trj_<i>/{imgs/image_<j>.png, action/action_<j>.npy}`;
with `views=2` / `with_state` RynnVLA-002's `imgs_third_view/`, `imgs_wrist/`, `eef_gripper_state/`) go through `conversations.generate` -> `pretokenize` -> `concat` (world first, as official) with the
tiny tokenizer assets (`worldvla.testing.fixtures.make_tiny_assets`). Actions are smooth, task-dependent
curves, so the action loss of a model that learns falls well below chance; frames are flat colours
that change with time, so frames (and their VQ codes) repeat along and across trajectories.

    python -m worldvla.train.tiny_data [out_dir] [resolution=64] [--rynnvla002]
        (default data/processed/tiny, 64 px; --rynnvla002: wrist view + state, data/processed/tiny_rynnvla002)
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from worldvla.config import parse_cli
from worldvla.data.concat import ConcatConfig, concatenate
from worldvla.data.conversations import ConversationsConfig, generate
from worldvla.data.pretokenize import PretokenizeConfig, TokenizerOptions, pretokenize
from worldvla.recipe import Recipe
from worldvla.testing.fixtures import make_tiny_assets

# RynnVLA-002's pretokenize path: action samples with its own min/max, world samples with WorldVLA's (configs/rynnvla002.yaml)
RYNNVLA002_STATS = {"action_stats": "rynnvla_action", "world_action_stats": "worldvla"}
TASKS = ("put the bowl on the stove", "open the top drawer of the cabinet", "turn on the stove")


@dataclass
class TinyData:
    root: Path
    tokenizer: Path  # folder with text_tokenizer.json, vqgan.yaml, vqgan.ckpt
    train: Path  # concat index (world + action samples)
    action: Path  # pretokenized action-model samples only
    world: Path  # pretokenized world-model samples only


# Mid-range 8-D states (eef xyz, axis-angle, 2 gripper joints) inside the rynnvla_state min/max.
STATE_CENTRE = np.array([-0.1, 0.0, 0.7, 2.3, 0.0, -0.2, 0.02, -0.02])
STATE_SWING = np.array([0.2, 0.2, 0.4, 0.8, 2.0, 1.0, 0.015, 0.015])


def _frame(colour: np.ndarray, resolution: int, f: int) -> np.ndarray:
    img = np.broadcast_to(colour, (resolution, resolution, 3)).copy()
    img[: resolution // 4 * (1 + f % 4), : resolution // 2] = 255 - colour  # a moving block
    return img


def write_trajectories(base: Path, n_tasks: int, n_traj: int, n_frames: int, resolution: int, seed: int = 0,
                       wrist: bool = False, with_state: bool = False) -> None:
    rng = np.random.default_rng(seed)
    img_dirs = ["imgs_third_view", "imgs_wrist"] if wrist else ["imgs"]  # as conversations.image_dirs reads them
    for t, task in enumerate(TASKS[:n_tasks]):
        for i in range(n_traj):
            trj = base / task.replace(" ", "_") / f"trj_{i}"
            for sub in [*img_dirs, "action"] + (["eef_gripper_state"] if with_state else []):
                (trj / sub).mkdir(parents=True, exist_ok=True)
            for f in range(n_frames):
                phase = 2 * np.pi * f / n_frames + t
                action = np.array([0.5 * np.sin(phase), 0.5 * np.cos(phase), 0.3 * np.sin(2 * phase + t),
                                   0.1 * t, -0.1 * t, 0.05 * np.sin(phase), 1.0 if f < n_frames // 2 else -1.0])
                action[:6] += rng.normal(0, 0.01, 6)
                np.save(trj / "action" / f"action_{f}.npy", action)
                colour = np.array([40 + 60 * t, 255 * f // n_frames, 128], dtype=np.uint8)
                Image.fromarray(_frame(colour, resolution, f)).save(trj / img_dirs[0] / f"image_{f}.png")
                if len(img_dirs) > 1:  # the wrist camera: other colours, the same motion
                    Image.fromarray(_frame(colour[::-1].copy(), resolution, f + 2)).save(trj / img_dirs[1] / f"image_{f}.png")
                if with_state:
                    state = STATE_CENTRE + STATE_SWING * np.sin(phase + np.arange(8))
                    np.save(trj / "eef_gripper_state" / f"eef_gripper_state_{f}.npy", state)


def make_tiny_data(root: str | Path, resolution: int = 64, n_tasks: int = 3, n_traj: int = 4, n_frames: int = 20,
                   chunk_size: int = 5, seed: int = 0, assets=None, with_wrist: bool = False,
                   with_state: bool = False, action_stats: str = "worldvla", world_action_stats: str = "") -> TinyData:
    """Write (or reuse, when complete) the tiny set under `root`; returns its paths. `with_wrist` /
    `with_state` make RynnVLA-002 samples (third + wrist view per frame, 8-D state block); actions are binned
    with `action_stats` (world samples with `world_action_stats`, "" = the same)."""
    root = Path(root)
    train = root / "tokens" / "train.json"
    tok_dir = Path(assets.root) / "tokenizer" if assets is not None else root / "assets" / "tokenizer"
    if train.is_file() and (root / "tokens" / "action").is_dir() and tok_dir.is_dir():
        return TinyData(root, tok_dir, train, root / "tokens" / "action", root / "tokens" / "world")
    if assets is None:
        make_tiny_assets(root / "assets")
    base = root / "export"
    write_trajectories(base, n_tasks, n_traj, n_frames, resolution, seed, with_wrist, with_state)
    # one Recipe for both stages: the conversations take K / history / views / state from it, pretokenize
    # the resolution and statistics (the training config of these sets must say the same in data.recipe)
    recipe = Recipe(chunk_size=chunk_size, history=2, resolution=resolution, action_stats=action_stats,
                    world_action_stats=world_action_stats or None, with_state=with_state, with_wrist=with_wrist)
    files = generate(ConversationsConfig(recipe=recipe, base_dir=base, output_dir=root / "convs", task_name="tiny"))
    tok = TokenizerOptions(path=tok_dir, recipe=recipe)
    out = {}
    for kind in ("world", "action"):
        out[kind] = root / "tokens" / kind
        pretokenize(PretokenizeConfig(inputs=[files["train"][kind]], out_dir=out[kind], tokenizer=tok, shard_size=64,
                                      frame_cache=root / "frames"))  # frames shared: each one encoded once
    concatenate(ConcatConfig(inputs=[out["world"], out["action"]], output=train))
    return TinyData(root, tok_dir, train, out["action"], out["world"])


@dataclass
class TinyDataConfig:
    out_dir: str = field(default="", metadata={
        "help": "default data/processed/tiny, or data/processed/tiny_rynnvla002 (also the first bare word)"})
    resolution: int = 64
    rynnvla002: bool = field(default=False, metadata={"help": "wrist view + state, RynnVLA-002 statistics"})


def main(argv=None) -> int:
    cfg = parse_cli(TinyDataConfig, argv, description=__doc__, positional="out_dir")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [%(name)s] %(message)s", datefmt="%H:%M:%S")
    default = "data/processed/tiny_rynnvla002" if cfg.rynnvla002 else "data/processed/tiny"
    rynn = cfg.rynnvla002
    data = make_tiny_data(cfg.out_dir or default, cfg.resolution, with_wrist=rynn, with_state=rynn,
                          **RYNNVLA002_STATS if rynn else {})
    print(f"tiny training set: data.train=[{data.train}] data.tokenizer={data.tokenizer}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
