"""Exported trajectories -> action-model and world-model conversation JSONs with train/val splits.

Input: the folder layout of export.py (`<base_dir>/<task>/trj_<i>/{action, imgs | imgs_third_view +
imgs_wrist, eef_gripper_state}`). Rules (official_format.md §3.2, §10.1):
- tasks = sorted folder names; trajectories in *lexicographic* order (trj_0, trj_1, trj_10, trj_2, ...);
- action sample at frame position p when p + K <= N: frames max(0, p-M+1)..p (each frame gives one
  image per view, views interleaved per frame), actions p..p+K-1, optional state of frame p;
- world sample at p in [H-1, N-2]: frames p-H+1..p with their actions, target frame p+1 (H = 1 official);
- split: first ceil(0.9 n_tasks) tasks are in-distribution; in each, the first ceil(0.9 n_traj)
  trajectories are `train`, the rest `val_ind`; the remaining tasks are `val_ood`.
  `split_mode=random` draws the held-out tasks / trajectories with `seed` instead (same sizes).
- prompt text: task folder name with underscores -> spaces (official), or the LIBERO language.
Media paths in the JSON are `base_dir/...` exactly as `base_dir` was given (official behaviour).
K, M, the views and the state are Recipe fields (worldvla/recipe.py): `ConversationsConfig.recipe` holds
them (`recipe.chunk_size=10`; the official names `his`, `len_action` still load, with a deprecation note).
"""

from __future__ import annotations

import logging
import math
import os
import random
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

from worldvla.atomic import atomic_write_json
from worldvla.config import parse_cli, to_dict
from worldvla.data.sequence import action_conversation, world_conversation
from worldvla.data.stage_cli import run, setup_logging
from worldvla.envs.libero import SUITES, get_suite
from worldvla.recipe import Recipe

log = logging.getLogger(__name__)

SPLITS = ("train", "val_ind", "val_ood")
TRJ_RE = re.compile(r"^trj_(\d+)$")
WORLDVLA_IMG_DIRS = ["imgs"]
RYNNVLA_IMG_DIRS = ["imgs_third_view", "imgs_wrist"]
STATE_DIR = "eef_gripper_state"


class ConversationError(ValueError):
    """A trajectory folder that cannot be turned into samples; names the folder and the file."""


@dataclass
class ConversationsConfig:
    # the official generators' names of the Recipe fields
    renamed: ClassVar[dict[str, str]] = {"his": "recipe.history", "len_action": "recipe.chunk_size",
                                         "resolution": "recipe.resolution", "with_wrist": "recipe.with_wrist",
                                         "with_state": "recipe.with_state"}
    base_dir: Path = Path("data/processed/libero_goal_image_state_action_t_256")  # export.py output
    output_dir: Path = Path("data/processed/convs")
    task_name: str = "goal"  # suite short name used in the file names (goal, spatial, object, 10)
    # what the action samples hold: chunk_size K actions (official 5; 10 for libero_10 / spatial in RynnVLA-002),
    # history M frames (official 2), with_wrist (third view + wrist per frame) and with_state (the 8-D state of
    # the current frame, RynnVLA-002); resolution is only used in the file names
    recipe: Recipe = field(default_factory=Recipe)
    world_his: int = 1  # world model: frames of history (official 1)
    img_dirs: list[str] = field(default_factory=list)  # image folders per frame; default imgs or third+wrist
    action_model: bool = True  # write action-model files
    world_model: bool = True  # write world-model files
    instruction: Literal["name", "language"] = "name"  # name (task folder, official training) | LIBERO task.language
    split_mode: Literal["official", "random"] = "official"  # official (sorted prefix) | random (seeded held-out choice)
    train_ratio: float = 0.9  # fraction of tasks in-distribution and of their trajectories in train
    seed: int = 0  # for split_mode=random and shuffle
    shuffle: bool = False  # shuffle the samples inside each output file (seeded)
    strict: bool = True  # a frame with an action but a missing image/state is an error (official: silently dropped)


@dataclass
class Trajectory:
    task: str
    name: str  # trj_<i>
    path: Path
    frames: list[int]  # file indices present for every modality, ascending


def _indexed(folder: Path, prefix: str, suffix: str) -> dict[int, str]:
    out = {}
    if not folder.is_dir():
        return out
    for f in os.listdir(folder):
        if f.startswith(prefix) and f.endswith(suffix):
            stem = f[len(prefix): -len(suffix)]
            if stem.isdigit():
                out[int(stem)] = f
    return out


def image_dirs(cfg: ConversationsConfig) -> list[str]:
    return list(cfg.img_dirs) or (RYNNVLA_IMG_DIRS if cfg.recipe.with_wrist else WORLDVLA_IMG_DIRS)


def scan(base_dir: Path, img_dirs: list[str], with_state: bool, strict: bool = True) -> dict[str, list[Trajectory]]:
    """Tasks (sorted) -> trajectories (lexicographic), each with its common frame indices."""
    base_dir = Path(base_dir)
    if not base_dir.is_dir():
        raise FileNotFoundError(f"{base_dir}: not a folder (run `worldvla regenerate` with export_dir=<this folder>)")
    tasks: dict[str, list[Trajectory]] = {}
    for task in sorted(os.listdir(base_dir)):
        tdir = base_dir / task
        if task.startswith(".") or not tdir.is_dir():
            continue
        trajs = []
        for trj in sorted(os.listdir(tdir)):  # lexicographic, as the official generators
            if not TRJ_RE.match(trj):
                continue
            path = tdir / trj
            mods = {"action": _indexed(path / "action", "action_", ".npy")}
            for d in img_dirs:
                mods[d] = _indexed(path / d, "image_", ".png")
            if with_state:
                mods[STATE_DIR] = _indexed(path / STATE_DIR, "eef_gripper_state_", ".npy")
            common = set.intersection(*(set(m) for m in mods.values()))
            if strict:
                every = set().union(*(set(m) for m in mods.values()))
                for mod, files in mods.items():
                    missing = sorted(every - set(files))
                    if missing:
                        kind = "image" if mod in img_dirs else mod
                        raise ConversationError(f"{path}: missing {kind} file(s) for frame(s) {missing[:5]} in {mod}/ "
                                                f"(demo {trj} of task {task}); re-export it or pass strict=false")
            if common:
                trajs.append(Trajectory(task, trj, path, sorted(common)))
        if trajs:
            tasks[task] = trajs
    if not tasks:
        raise ConversationError(f"{base_dir}: no task folders with trj_<i>/action and {img_dirs} found")
    return tasks


def split_assignment(tasks: dict[str, list[Trajectory]], ratio: float = 0.9, mode: str = "official",
                     seed: int = 0) -> dict[str, list[tuple[str, str]]]:
    """split -> [(task, trj)], disjoint; see the module docstring."""
    if mode not in ("official", "random"):
        raise ValueError(f"split_mode must be official or random, got {mode!r}")
    rng = random.Random(seed)
    names = sorted(tasks)
    n_ind = math.ceil(ratio * len(names))
    ind = set(names[:n_ind]) if mode == "official" else set(rng.sample(names, n_ind))
    out: dict[str, list[tuple[str, str]]] = {s: [] for s in SPLITS}
    for task in names:
        trjs = [t.name for t in tasks[task]]
        if task not in ind:
            out["val_ood"] += [(task, t) for t in trjs]
            continue
        n_train = math.ceil(ratio * len(trjs))
        train = set(trjs[:n_train]) if mode == "official" else set(rng.sample(trjs, n_train))
        for t in trjs:
            out["train" if t in train else "val_ind"].append((task, t))
    return out


_LANGUAGE: dict[str, str] = {}


def language_of(task: str) -> str:
    """LIBERO task.language for a task folder name (searched over all suites; needs LIBERO)."""
    if not _LANGUAGE:
        for suite_name in SUITES:
            suite = get_suite(suite_name)
            for i in range(suite.n_tasks):
                t = suite.get_task(i)
                _LANGUAGE.setdefault(t.name, t.language)
    if task not in _LANGUAGE:
        raise KeyError(f"task folder {task!r} is not a LIBERO task name; use instruction=name")
    return _LANGUAGE[task]


def instruction_for(task: str, mode: str) -> str:
    if mode == "name":
        return task.replace("_", " ")
    if mode == "language":
        return language_of(task)
    raise ValueError(f"instruction must be name or language, got {mode!r}")


def _media(base: str, traj: Trajectory, frame: int, dirs: list[str]) -> list[str]:
    root = f"{base}/{traj.task}/{traj.name}"
    return [f"{root}/{d}/image_{frame}.png" for d in dirs]


def action_samples(traj: Trajectory, base: str, cfg: ConversationsConfig) -> list[dict]:
    """Action samples of one trajectory, by the recipe of `cfg` (K actions, history frames, state)."""
    recipe = cfg.recipe
    dirs, frames, out = image_dirs(cfg), traj.frames, []
    instr = instruction_for(traj.task, cfg.instruction)
    root = f"{base}/{traj.task}/{traj.name}"
    k = recipe.chunk_size
    for p in range(len(frames) - k + 1):
        hist = frames[max(0, p - recipe.history + 1): p + 1]
        record = {
            "conversations": action_conversation(instr, len(hist) * len(dirs), k, 1 if recipe.with_state else 0),
            "image": [img for f in hist for img in _media(base, traj, f, dirs)],
            "action": [f"{root}/action/action_{f}.npy" for f in frames[p: p + k]],
        }
        if recipe.with_state:
            record["state"] = [f"{root}/{STATE_DIR}/eef_gripper_state_{frames[p]}.npy"]
        out.append(record)
    return out


def world_samples(traj: Trajectory, base: str, cfg: ConversationsConfig) -> list[dict]:
    dirs, frames, out = image_dirs(cfg), traj.frames, []
    root = f"{base}/{traj.task}/{traj.name}"
    h = cfg.world_his
    for p in range(h - 1, len(frames) - 1):
        hist = frames[p - h + 1: p + 1]
        out.append({
            "conversations": world_conversation(h, views=len(dirs)),
            "image": [img for f in hist + [frames[p + 1]] for img in _media(base, traj, f, dirs)],
            "action": [f"{root}/action/action_{f}.npy" for f in hist],
        })
    return out


def output_names(cfg: ConversationsConfig, split: str) -> dict[str, str]:
    """Official file names: WorldVLA's when neither wrist nor state, else RynnVLA-002's pattern."""
    recipe = cfg.recipe
    t, r, his, k = cfg.task_name, recipe.resolution, recipe.history, recipe.chunk_size
    if recipe.with_wrist or recipe.with_state:
        img_item = "third_view_wrist" if recipe.with_wrist else "third_view"
        state_item = "w_state" if recipe.with_state else "wo_state"
        action = f"libero_{t}_his_{his}_{split}_{img_item}_{state_item}_{k}_{r}.json"
    else:
        action = f"libero_{t}_his_{his}_{split}_img_only_ck_{k}_{r}.json"
    views = "_third_view_wrist" if recipe.with_wrist else ""
    world = f"libero_{t}_his_{cfg.world_his}_{split}{views}_a2i_{r}.json"
    return {"action": action, "world": world}


def _write_json(path: Path, data) -> None:
    atomic_write_json(path, data)


def generate(cfg: ConversationsConfig) -> dict[str, dict[str, Path]]:
    """Write the JSON files; returns {split: {"action"|"world": path}} and a manifest next to them."""
    recipe = cfg.recipe
    if recipe.history < 1 or recipe.chunk_size < 1 or cfg.world_his < 1:
        raise ValueError("recipe.history, recipe.chunk_size and world_his must be >= 1")
    dirs = image_dirs(cfg)
    tasks = scan(cfg.base_dir, dirs, recipe.with_state, cfg.strict)
    assignment = split_assignment(tasks, cfg.train_ratio, cfg.split_mode, cfg.seed)
    by_key = {(t.task, t.name): t for trajs in tasks.values() for t in trajs}
    base = str(cfg.base_dir)
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, dict[str, Path]] = {}
    counts: dict[str, dict[str, int]] = {}
    for split in SPLITS:
        names = output_names(cfg, split)
        trajs = [by_key[k] for k in assignment[split]]
        kinds = {}
        if cfg.action_model:
            kinds["action"] = [s for t in trajs for s in action_samples(t, base, cfg)]
        if cfg.world_model:
            kinds["world"] = [s for t in trajs for s in world_samples(t, base, cfg)]
        written[split], counts[split] = {}, {}
        for kind, samples in kinds.items():
            if cfg.shuffle:
                random.Random(f"{cfg.seed}-{split}-{kind}").shuffle(samples)
            path = out_dir / names[kind]
            _write_json(path, samples)
            written[split][kind], counts[split][kind] = path, len(samples)
            log.info("%-7s %-6s %6d samples -> %s", split, kind, len(samples), path)

    manifest = {"config": to_dict(cfg), "image_dirs": dirs, "counts": counts,
                "files": {s: {k: p.name for k, p in v.items()} for s, v in written.items()},
                "splits": {s: [f"{t}/{j}" for t, j in v] for s, v in assignment.items()}}
    _write_json(out_dir / f"libero_{cfg.task_name}_{recipe.resolution}_conversations_manifest.json", manifest)
    return written


def cli(argv: list[str] | None = None) -> dict:
    """Exported trajectories -> action/world conversation JSONs, split into train / val_ind / val_ood."""
    cfg = parse_cli(ConversationsConfig, argv, description=cli.__doc__)
    setup_logging()
    return generate(cfg)


def main(argv: list[str] | None = None) -> int:
    """`worldvla conversations` / `python -m worldvla.data.conversations [--config f.yaml] key=value ...`; --help lists every key."""
    run(cli, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
