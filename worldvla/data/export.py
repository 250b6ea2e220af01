"""Regenerated HDF5 files -> the official per-frame folder layout (official_format.md §3.1, §10.1).

    <save_dir>/<task.name>/trj_<i>/                 i = the demo's index in the HDF5 (demo_<i>)
        action/action_<j>.npy                      raw 7-D action label at frame j (float64): the action taken,
                                                   or the expert's intended one where the demo stores expert_actions
        imgs/image_<j>.png                         agentview frame j, rotated 180 degrees   (layout worldvla)
        imgs_third_view/image_<j>.png              same frame                                (layout rynnvla)
        imgs_wrist/image_<j>.png                   eye-in-hand frame j, rotated 180 degrees  (layout rynnvla)
        ee_state/ee_state_<j>.npy                  eef pos (3) + axis-angle (3)              (layout rynnvla)
        gripper_state/gripper_state_<j>.npy        gripper qpos (2)                          (layout rynnvla)
        eef_gripper_state/eef_gripper_state_<j>.npy  the 8-D proprio state                  (layout rynnvla)
        robot_state/robot_state_<j>.npy            LIBERO robot state vector (9)             (layout rynnvla)

The HDF5 images are stored as rendered; the 180-degree rotation happens here. The state files are
the stored `obs/ee_states` and `obs/gripper_states`, copied as they are (the official save script
does the same, so an officially regenerated file exports to the official values, frame 0 included);
only a file without them gets the state rebuilt from `robot_states` (gripper qpos, eef pos, eef
quaternion) with robosuite's axis-angle formula (docs/libero_protocol.md).
Each trajectory folder is written under `<save_dir>/.tmp/` and renamed when complete (resumable).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from worldvla.atomic import fsync_tree
from worldvla.config import parse_cli
from worldvla.data.raw_demos import DEMO_RE, DEMO_SUFFIX, RawDemo, RawDemoError, RawDemoFile
from worldvla.data.stage_cli import run, setup_logging
from worldvla.envs.libero import quat2axisangle, rotate180

log = logging.getLogger(__name__)

LAYOUTS = ("worldvla", "rynnvla", "both")
PNG_COMPRESS_LEVEL = 3  # lossless either way; 3 is a good speed/size trade-off


@dataclass
class ExportConfig:
    hdf5_dir: Path = Path("data/processed/libero_goal_no_noops_t_256")  # regenerated <task>_demo.hdf5 files
    save_dir: Path = Path("data/processed/libero_goal_image_state_action_t_256")  # output root
    layout: str = "both"  # worldvla | rynnvla | both
    workers: int = 1
    max_demos: int = 0  # per task; 0 = all
    overwrite: bool = False


def proprio_states(demo: RawDemo, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(T, 6) ee_state and (T, 2) gripper_state of a demo: the stored obs datasets, else from robot_states."""
    obs = demo.obs or {}
    if "ee_states" in obs and "gripper_states" in obs:
        return np.asarray(obs["ee_states"]), np.asarray(obs["gripper_states"])
    if demo.robot_states is not None and np.asarray(demo.robot_states).shape[1:] == (9,):
        rs = np.asarray(demo.robot_states, dtype=np.float64)
        ori = np.stack([quat2axisangle(q) for q in rs[:, 5:9]]) if len(rs) else np.zeros((0, 3))
        return np.concatenate([rs[:, 2:5], ori], axis=1), rs[:, 0:2]
    raise RawDemoError(f"{where}: neither obs/ee_states + obs/gripper_states nor robot_states to build the state")


def _save_png(path: Path, image: np.ndarray) -> None:
    Image.fromarray(np.ascontiguousarray(image)).save(path, compress_level=PNG_COMPRESS_LEVEL)


def write_trajectory(demo: RawDemo, out: Path, layout: str, where: str) -> None:
    """Write one demo's frames into folder `out` (must not exist yet)."""
    obs = demo.obs or {}
    for key in ("agentview_rgb",) + (("eye_in_hand_rgb",) if layout != "worldvla" else ()):
        if key not in obs:
            raise RawDemoError(f"{where}: missing image dataset obs/{key}")
    n = len(demo)
    dirs = {"action": out / "action"}
    if layout in ("worldvla", "both"):
        dirs["imgs"] = out / "imgs"
    if layout in ("rynnvla", "both"):
        for name in ("imgs_third_view", "imgs_wrist", "ee_state", "gripper_state", "eef_gripper_state", "robot_state"):
            dirs[name] = out / name
        ee, grip = proprio_states(demo, where)
    for d in dirs.values():
        d.mkdir(parents=True)
    labels = demo.labels  # the expert's intended action where a noisy recording stored it, else the one taken
    for j in range(n):
        np.save(dirs["action"] / f"action_{j}.npy", labels[j])
        third = rotate180(obs["agentview_rgb"][j])
        if "imgs" in dirs:
            _save_png(dirs["imgs"] / f"image_{j}.png", third)
        if "imgs_third_view" in dirs:
            _save_png(dirs["imgs_third_view"] / f"image_{j}.png", third)
            _save_png(dirs["imgs_wrist"] / f"image_{j}.png", rotate180(obs["eye_in_hand_rgb"][j]))
            np.save(dirs["ee_state"] / f"ee_state_{j}.npy", ee[j])
            np.save(dirs["gripper_state"] / f"gripper_state_{j}.npy", grip[j])
            np.save(dirs["eef_gripper_state"] / f"eef_gripper_state_{j}.npy", np.concatenate([ee[j], grip[j]]))
            robot = demo.robot_states[j] if demo.robot_states is not None else np.concatenate([grip[j], ee[j]])
            np.save(dirs["robot_state"] / f"robot_state_{j}.npy", np.asarray(robot, dtype=np.float64))


def _export_one(args: tuple[str, str, str, str, str]) -> str:
    hdf5, demo_name, task_dir, tmp_root, layout = args
    index = int(DEMO_RE.match(demo_name).group(1))
    final = Path(task_dir) / f"trj_{index}"
    tmp = Path(tmp_root) / f"{Path(task_dir).name}__trj_{index}.{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    with RawDemoFile(hdf5) as f:
        demo = f.demo(demo_name, load_obs=True)
    try:
        write_trajectory(demo, tmp, layout, f"{hdf5}:{demo_name}")
        fsync_tree(tmp)  # a rerun skips any trj_<i> folder: it must be whole on disk
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return str(final)


def export(cfg: ExportConfig) -> Path:
    """Write every demo of every `<task>_demo.hdf5` in `cfg.hdf5_dir`; returns `cfg.save_dir`."""
    if cfg.layout not in LAYOUTS:
        raise ValueError(f"export layout must be one of {LAYOUTS}, got {cfg.layout!r}")
    files = sorted(Path(cfg.hdf5_dir).glob(f"*{DEMO_SUFFIX}"))
    if not files:
        raise FileNotFoundError(f"no *{DEMO_SUFFIX} files in {cfg.hdf5_dir} (run `worldvla regenerate` first)")
    save_dir = Path(cfg.save_dir)
    tmp_root = save_dir / ".tmp"
    tmp_root.mkdir(parents=True, exist_ok=True)
    jobs = []
    for hdf5 in files:
        task_dir = save_dir / hdf5.name[: -len(DEMO_SUFFIX)]
        task_dir.mkdir(parents=True, exist_ok=True)
        with RawDemoFile(hdf5) as f:
            names = f.names[: cfg.max_demos] if cfg.max_demos else f.names
        for name in names:
            done = (task_dir / f"trj_{int(DEMO_RE.match(name).group(1))}").is_dir()
            if cfg.overwrite or not done:
                jobs.append((str(hdf5), name, str(task_dir), str(tmp_root), cfg.layout))
    bar = tqdm(total=len(jobs), desc=f"export -> {save_dir.name}", unit="trj")
    if cfg.workers <= 1:
        for job in jobs:
            _export_one(job)
            bar.update()
    else:
        with mp.get_context("spawn").Pool(cfg.workers) as pool:
            for _ in pool.imap_unordered(_export_one, jobs):
                bar.update()
    bar.close()
    shutil.rmtree(tmp_root, ignore_errors=True)
    log.info("exported %d trajectories of %d tasks (layout %s) -> %s", len(jobs), len(files), cfg.layout, save_dir)
    return save_dir


def cli(argv: list[str] | None = None) -> Path:
    """Regenerated HDF5 files -> official folder layout (<task>/trj_<i>/action/, imgs/, imgs_wrist/, ...)."""
    cfg = parse_cli(ExportConfig, argv, description=cli.__doc__)
    setup_logging()
    return export(cfg)


def main(argv: list[str] | None = None) -> int:
    """`python -m worldvla.data.export [--config f.yaml] key=value ...`; --help lists every key."""
    run(cli, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
