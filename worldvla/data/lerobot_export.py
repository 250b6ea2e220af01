"""Episode HDF5 files of the LeRobot importer -> the per-frame folder layout that data/conversations.py reads.

LeRobot data has no simulator states, so `libero_util/regenerate.py` cannot replay it; this is its export step
(the same folders as worldvla.data.export, official_format.md §3.1):

    <save_dir>/<task>/trj_<k>/                      task = the episode's language instruction, spaces -> "_"
        action/action_<j>.npy                      7-D action of frame j (float64, as export.py writes it)
        imgs/image_<j>.png                         obs/front_image frame j                 (layout worldvla / both)
        imgs_third_view/image_<j>.png              same frame                               (layout rynnvla / both)
        imgs_wrist/image_<j>.png                   obs/wrist_image frame j                  (layout rynnvla / both)
        eef_gripper_state/eef_gripper_state_<j>.npy  obs/state frame j (float64)           (layout rynnvla / both)

k counts a task's episodes in episode order. `instruction=name` in conversations.py turns the folder name back
into the instruction. Images are written as stored; LeRobot LIBERO datasets are usually already rotated 180
degrees (openpi's conversion does it), raw renders are not: set `rotate180` to match what the policy sees.
Each trajectory is written under `<save_dir>/.tmp/` and renamed when complete; a rerun skips finished ones.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections import defaultdict
from pathlib import Path

import h5py
import numpy as np
from PIL import Image

from worldvla.data.lerobot_episodes import LeRobotError, episode_files
from worldvla.envs.libero import rotate180 as rot

log = logging.getLogger(__name__)

LAYOUTS = ("worldvla", "rynnvla", "both")


def task_folder(instruction: str, where: str) -> str:
    """A task folder name that conversations.py (instruction=name) maps back to `instruction`."""
    name = re.sub(r"\s+", "_", instruction.strip())
    if not name or "/" in name or name.startswith(".") or "_" in instruction:
        raise LeRobotError(f"{where}: language_instruction {instruction!r} cannot be a task folder name "
                           "(empty, has '/' or '_', or starts with '.')")
    return name


def _save_png(path: Path, image: np.ndarray) -> None:
    Image.fromarray(np.ascontiguousarray(image)).save(path, compress_level=3)


def _write_trajectory(f, out: Path, layout: str, rotate180: bool, where: str) -> None:
    if "action" not in f or "obs/front_image" not in f:
        raise LeRobotError(f"{where}: needs datasets action and obs/front_image")
    actions = np.asarray(f["action"][()], dtype=np.float64)
    front = f["obs/front_image"]
    dirs = {"action": out / "action"}
    if layout in ("worldvla", "both"):
        dirs["imgs"] = out / "imgs"
    if layout in ("rynnvla", "both"):
        for key in ("obs/wrist_image", "obs/state"):
            if key not in f:
                raise LeRobotError(f"{where}: layout {layout} needs dataset {key} (import with wrist_key / state_key)")
        dirs.update(imgs_third_view=out / "imgs_third_view", imgs_wrist=out / "imgs_wrist",
                    eef_gripper_state=out / "eef_gripper_state")
        wrist, state = f["obs/wrist_image"], np.asarray(f["obs/state"][()], dtype=np.float64)
    for d in dirs.values():
        d.mkdir(parents=True)
    for j in range(len(actions)):
        np.save(dirs["action"] / f"action_{j}.npy", actions[j])
        third = rot(front[j]) if rotate180 else front[j]
        if "imgs" in dirs:
            _save_png(dirs["imgs"] / f"image_{j}.png", third)
        if "imgs_third_view" in dirs:
            _save_png(dirs["imgs_third_view"] / f"image_{j}.png", third)
            _save_png(dirs["imgs_wrist"] / f"image_{j}.png", rot(wrist[j]) if rotate180 else wrist[j])
            np.save(dirs["eef_gripper_state"] / f"eef_gripper_state_{j}.npy", state[j])


def export_lerobot_hdf5(hdf5_dir: str | Path, save_dir: str | Path, layout: str = "both", rotate180: bool = False,
                        overwrite: bool = False) -> dict[str, list[Path]]:
    """Write every episode_XXXXXX.hdf5 of `hdf5_dir` as a trajectory folder; returns task -> trajectory folders."""
    if layout not in LAYOUTS:
        raise LeRobotError(f"export layout must be one of {LAYOUTS}, got {layout!r}")
    files = episode_files(hdf5_dir)
    if not files:
        raise LeRobotError(f"no episode_*.hdf5 files in {hdf5_dir} (run `worldvla lerobot-import` first)")
    save_dir = Path(save_dir)
    tmp_root = save_dir / ".tmp"
    tmp_root.mkdir(parents=True, exist_ok=True)
    per_task: dict[str, list[Path]] = defaultdict(list)
    written = 0
    for file in files:  # episode order
        with h5py.File(file, "r") as f:
            instruction = f.attrs.get("language_instruction")
            if instruction is None:
                raise LeRobotError(f"{file}: no language_instruction attribute")
            task = task_folder(str(instruction), str(file))
            final = save_dir / task / f"trj_{len(per_task[task])}"
            per_task[task].append(final)
            if final.is_dir() and not overwrite:
                continue
            tmp = tmp_root / f"{task}__{final.name}"
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                _write_trajectory(f, tmp, layout, rotate180, str(file))
                final.parent.mkdir(parents=True, exist_ok=True)
                if final.exists():
                    shutil.rmtree(final)
                tmp.rename(final)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            written += 1
    shutil.rmtree(tmp_root, ignore_errors=True)
    log.info("exported %d of %d episodes (%d tasks, layout %s) -> %s", written, len(files), len(per_task), layout,
             save_dir)
    return dict(per_task)
