"""A tiny WorldVLA checkpoint trained on the grid-world toy (worldvla.testing.toy_env) by the real stages.

Expert demos are written in the export layout (`<task>/trj_<i>/{imgs/image_<j>.png, action/action_<j>.npy}`,
frames upright as export.py writes them), then conversations -> pretokenize (tiny tokenizer assets) ->
the real train loop (configs/tiny.yaml with overrides). The actions are binned with the toy's own
statistics (a JSON next to the data), so de-normalising with a LIBERO preset instead scales every move.
Used by tests/test_closed_loop.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from worldvla.config import load_config
from worldvla.data.conversations import ConversationsConfig, generate
from worldvla.data.pretokenize import PretokenizeConfig, TokenizerOptions, pretokenize
from worldvla.recipe import Recipe
from worldvla.stats import NormStats
from worldvla.testing import toy_env as T
from worldvla.train.config import TrainConfig
from worldvla.train.loop import train

ROOT = Path(__file__).resolve().parents[2]
# x, y, z in env units of +-1 cell; the rotation dims are unused; gripper -1 open / +1 closed
TOY_STATS = NormStats((-T.STEP,) * 3 + (-1.0,) * 4, (T.STEP,) * 3 + (1.0,) * 4)


def write_demos(base: Path, chunk_size: int) -> int:
    """One expert demo per start board, padded with K lift actions past the grasp: every chunk position gets
    data, and the frame before the grasp also appears as the older history frame (before a lift), so the
    policy cannot take "that frame anywhere in the prompt" to mean "grasp now". Returns the frame count."""
    task = base / T.LANGUAGE.replace(" ", "_")  # the instruction is the folder name (official training)
    frames = 0
    for i, (gripper, block) in enumerate(T.configs()):
        actions = T.expert_actions(gripper, block, pad=chunk_size)
        trj = task / f"trj_{i}"
        (trj / "imgs").mkdir(parents=True, exist_ok=True)
        (trj / "action").mkdir(exist_ok=True)
        pos, held = gripper, False
        for j, a in enumerate(actions):
            Image.fromarray(T.draw(pos, block, held)).save(trj / "imgs" / f"image_{j}.png")
            np.save(trj / "action" / f"action_{j}.npy", a)
            if a[6] <= 0:
                pos = (pos[0] + int(np.rint(a[1] / T.STEP)), pos[1] + int(np.rint(a[0] / T.STEP)))
            held = held or (a[6] > 0 and pos == block)
        frames += len(actions)
    return frames


def train_toy_policy(root: str | Path, tokenizer: str | Path, steps: int = 300, chunk_size: int = 2,
                     seed: int = 0, batch_size: int = 16, lr: float = 3e-3, extra: tuple[str, ...] = ()) -> Path:
    """Demos -> conversations -> pretokenize -> train; returns the final checkpoint folder (`extra`: more
    TrainConfig overrides). The defaults (300 steps of 16, cosine to lr / 10) solved every board with each
    seed tried; at 200 steps or a constant lr some seeds still missed a sixth to a third of the first moves."""
    root = Path(root)
    stats = root / "toy_action_stats.json"
    root.mkdir(parents=True, exist_ok=True)
    TOY_STATS.to_json(stats)
    write_demos(root / "export", chunk_size)
    recipe = Recipe(chunk_size=chunk_size, history=2, resolution=64, action_stats=str(stats))
    files = generate(ConversationsConfig(recipe=recipe, base_dir=root / "export", output_dir=root / "convs",
                                                     task_name="toy", train_ratio=1.0, world_model=False))
    tokens = root / "tokens"
    n_samples = len(json.loads(Path(files["train"]["action"]).read_text()))
    epochs = steps / max(1, n_samples // batch_size)  # the cosine decays to min_lr at the last step
    pretokenize(PretokenizeConfig(inputs=[files["train"]["action"]], out_dir=tokens,
                                  tokenizer=TokenizerOptions(path=tokenizer, recipe=recipe), shard_size=256))
    cfg = load_config(TrainConfig, ROOT / "configs" / "tiny.yaml", [
        f"data.train=[{tokens}]", f"data.tokenizer={tokenizer}", "data.recipe.resolution=64",
        f"data.recipe.chunk_size={chunk_size}", f"data.recipe.action_stats={stats}", "data.kinds=[action]", f"train.output_dir={root / 'run'}",
        "model.activation_checkpointing=false",  # nothing to save at this size
        f"train.max_steps={steps}", f"train.epochs={epochs}", f"train.batch_size={batch_size}", f"train.lr={lr}",
        f"train.min_lr={lr / 10}", f"train.seed={seed}", f"train.save_every_steps={steps}", "train.keep_last=1", "logging.wandb=false",
        "logging.progress_bar=false", "logging.plot=false", f"logging.log_every={max(1, steps // 10)}", *extra])
    return Path(train(cfg)["checkpoint"])
