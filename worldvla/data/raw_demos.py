"""Raw LIBERO demo HDF5 files: dataclass, writer, reader, and a recorder of short simulator rollouts.

Layout (the one LIBERO's released `<task.name>_demo.hdf5` files and the regenerated files share):

    data                       attrs: problem_info (JSON, has language_instruction), env_args (JSON),
                                      bddl_file_name, num_demos, total (sum of num_samples)
                               (the official regenerate script writes none: the instruction is then
                               taken from the file name, `<task words joined by _>_demo.hdf5`)
    data/demo_<i>              attrs: num_samples, init_state (S,), model_file (MuJoCo XML string)
        actions (T, 7)         raw 7-D actions: delta pos (3), delta axis-angle (3), gripper (-1 open, +1 close)
        expert_actions (T, 7)  optional (worldvla's noisy expert recordings): the action the expert intended
                               where `actions` ran with noise added; when present it is the training label
        states (T, S)          flattened MuJoCo sim state (time, qpos, qvel) *before* each action
        robot_states (T, 9)    gripper_qpos (2) + eef_pos (3) + eef_quat (4)  (LIBERO's robot state vector)
        rewards (T,), dones (T,)
        obs/agentview_rgb (T, R, R, 3) uint8, obs/eye_in_hand_rgb (T, R, R, 3) uint8   as rendered (NOT rotated)
        obs/ee_pos (T, 3), obs/ee_ori (T, 3) axis-angle, obs/ee_states (T, 6) = ee_pos + ee_ori,
        obs/gripper_states (T, 2), obs/joint_states (T, 7)

Conventions: images are stored as the simulator renders them (upside down); the 180-degree
rotation happens when they are read for training (PNG export, conversations). `ee_ori` is computed
with robosuite's quaternion -> axis-angle formula, unchanged (no sign normalisation), as the
official regenerate script, so `ee_states + gripper_states` is exactly the 8-D proprio state of
docs/libero_protocol.md.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from worldvla.atomic import fsync_dir, fsync_file
from worldvla.envs.libero import quat2axisangle
from worldvla.stats import ACTION_DIM

# Imported where used: libero (the libero extra) and h5py (~60 ms), as the simulator-side CLIs that import
# this module keep a quick --help (tests/test_layers.py LIGHT_MODULES).

OBS_KEYS = ("agentview_rgb", "eye_in_hand_rgb", "ee_pos", "ee_ori", "ee_states", "gripper_states", "joint_states")
IMAGE_KEYS = ("agentview_rgb", "eye_in_hand_rgb")
DEMO_RE = re.compile(r"^demo_(\d+)$")
DEMO_SUFFIX = "_demo.hdf5"  # <task.name>_demo.hdf5, LIBERO's and the official regenerate script's file name


class RawDemoError(ValueError):
    """A demo file or demo that cannot be used; the message names the file and the demo."""


@dataclass
class RawDemo:
    actions: np.ndarray  # (T, 7) float
    states: np.ndarray  # (T, S) flattened sim states before each action
    model_xml: str = ""  # MuJoCo XML of the scene (attr model_file)
    init_state: np.ndarray | None = None  # (S,); defaults to states[0]
    obs: dict[str, np.ndarray] | None = None  # OBS_KEYS -> (T, ...) arrays; None = not recorded / not loaded
    rewards: np.ndarray | None = None  # (T,); defaults to zeros with a 1 at the end if the last done is set
    dones: np.ndarray | None = None  # (T,) uint8
    robot_states: np.ndarray | None = None  # (T, 9)
    expert_actions: np.ndarray | None = None  # (T, 7) intended where `actions` ran with noise (DART); the label
    name: str = ""  # "demo_<i>" once written / read

    def __post_init__(self):
        self.actions = np.asarray(self.actions, dtype=np.float64)
        self.states = np.asarray(self.states, dtype=np.float64)
        if self.init_state is None and len(self.states):
            self.init_state = self.states[0].copy()
        elif self.init_state is not None:
            self.init_state = np.asarray(self.init_state, dtype=np.float64)
        n = len(self.actions)
        if self.dones is None:
            self.dones = np.zeros(n, dtype=np.uint8)
        self.dones = np.asarray(self.dones, dtype=np.uint8)
        if self.rewards is None:
            self.rewards = self.dones.astype(np.float64)
        self.rewards = np.asarray(self.rewards, dtype=np.float64)

    def __len__(self) -> int:
        return len(self.actions)

    @property
    def labels(self) -> np.ndarray:
        """The actions a policy learns: the expert's intended ones where recorded, else the ones that ran."""
        return self.actions if self.expert_actions is None else np.asarray(self.expert_actions, dtype=np.float64)

    @property
    def success(self) -> bool:
        return bool(len(self.dones) and self.dones[-1])

    def validate(self, where: str = "") -> None:
        """Shapes agree and numbers are finite; raises RawDemoError naming `where`."""
        where = where or self.name or "demo"
        n = len(self.actions)
        if self.actions.ndim != 2 or self.actions.shape[1] != ACTION_DIM:
            raise RawDemoError(f"{where}: actions must be (T, {ACTION_DIM}), got {self.actions.shape}")
        bad = np.argwhere(~np.isfinite(self.actions))
        if len(bad):
            t, d = bad[0]
            raise RawDemoError(f"{where}: non-finite action {self.actions[t, d]} at step {t}, dim {d}")
        if self.states.ndim != 2 or len(self.states) != n:
            raise RawDemoError(f"{where}: states must be (T={n}, S), got {self.states.shape}")
        if not np.isfinite(self.states).all():
            raise RawDemoError(f"{where}: non-finite sim state at step {int(np.argwhere(~np.isfinite(self.states))[0, 0])}")
        for key, arr in (("rewards", self.rewards), ("dones", self.dones)):
            if len(arr) != n:
                raise RawDemoError(f"{where}: {key} has {len(arr)} entries for {n} actions")
        if self.robot_states is not None and len(self.robot_states) != n:
            raise RawDemoError(f"{where}: robot_states has {len(self.robot_states)} rows for {n} actions")
        if self.expert_actions is not None and np.shape(self.expert_actions) != (n, ACTION_DIM):
            raise RawDemoError(f"{where}: expert_actions must be ({n}, {ACTION_DIM}), got {np.shape(self.expert_actions)}")
        for key, arr in (self.obs or {}).items():
            if len(arr) != n:
                raise RawDemoError(f"{where}: obs/{key} has {len(arr)} frames for {n} actions")


# -- observations -------------------------------------------------------------------------------
def obs_record(raw_obs: dict) -> dict[str, np.ndarray]:
    """One robosuite observation dict -> the per-step values of the `obs/` group (images as rendered)."""
    pos = np.asarray(raw_obs["robot0_eef_pos"], dtype=np.float64)
    ori = quat2axisangle(raw_obs["robot0_eef_quat"])
    return {
        "agentview_rgb": np.asarray(raw_obs["agentview_image"], dtype=np.uint8),
        "eye_in_hand_rgb": np.asarray(raw_obs["robot0_eye_in_hand_image"], dtype=np.uint8),
        "ee_pos": pos,
        "ee_ori": ori,
        "ee_states": np.concatenate([pos, ori]),
        "gripper_states": np.asarray(raw_obs["robot0_gripper_qpos"], dtype=np.float64),
        "joint_states": np.asarray(raw_obs["robot0_joint_pos"], dtype=np.float64),
    }


def robot_state_vector(raw_obs: dict) -> np.ndarray:
    """LIBERO's robot state: gripper_qpos (2) + eef_pos (3) + eef_quat (4)."""
    return np.concatenate([raw_obs["robot0_gripper_qpos"], raw_obs["robot0_eef_pos"], raw_obs["robot0_eef_quat"]])


def stack_obs(steps: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.stack([s[k] for s in steps]) for k in OBS_KEYS} if steps else {}


# -- metadata -----------------------------------------------------------------------------------
def raw_demo_filename(task_name: str) -> str:
    return f"{task_name}_demo.hdf5"


def task_meta_from_env(env) -> dict:
    """Task metadata (problem_info, env_args, bddl_file_name, task_name) of a LiberoEnv."""
    inner = getattr(env, "env", env)
    from libero.libero import get_libero_path

    task = env.task
    bddl = str(Path(get_libero_path("bddl_files")) / task.problem_folder / task.bddl_file)
    problem_name = getattr(inner, "problem_name", task.problem)
    res = int(getattr(env, "resolution", 128))
    return {
        "problem_info": {"problem_name": problem_name, "domain_name": getattr(inner, "domain_name", "robosuite"),
                         "language_instruction": task.language},
        "env_args": {"type": 1, "env_name": problem_name,
                     "env_kwargs": {"bddl_file_name": bddl, "camera_heights": res, "camera_widths": res,
                                    "camera_names": ["agentview", "robot0_eye_in_hand"], "control_freq": 20}},
        "bddl_file_name": bddl,
        "task_name": task.name,
    }


def _json_attr(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


# -- writer -------------------------------------------------------------------------------------
def _normalise_meta(path: Path, task_meta: dict) -> tuple[dict, dict]:
    meta = dict(task_meta)
    problem_info = meta.pop("problem_info", None)
    if isinstance(problem_info, str):
        problem_info = json.loads(problem_info)
    problem_info = dict(problem_info or {})
    if "language_instruction" in meta:
        problem_info.setdefault("language_instruction", meta.pop("language_instruction"))
    if "language_instruction" not in problem_info:
        raise RawDemoError(f"{path}: task_meta needs problem_info.language_instruction (or language_instruction)")
    return problem_info, meta


class RawDemoWriter:
    """Streaming writer of one demo file: `add(demo)` / `copy_from(other_file, name)`, then `close()`.

    Writes to `<path>.tmp<pid>` and renames on a clean close, so a crash never leaves a half file
    under the final name. Demo names: `demo.name` when it is `demo_<i>` (kept from a source file),
    else the next free `demo_<n>`.
    """

    def __init__(self, path: str | Path, task_meta: dict, image_compression: str | None = "gzip"):
        import h5py

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        problem_info, meta = _normalise_meta(self.path, task_meta)
        self.image_compression = image_compression
        self.tmp = self.path.with_name(self.path.name + f".tmp{os.getpid()}")
        self._f = h5py.File(self.tmp, "w")
        self.grp = self._f.create_group("data")
        self.grp.attrs["problem_info"] = json.dumps(problem_info)
        self.grp.attrs["env_args"] = _json_attr(meta.pop("env_args", {}))
        self.grp.attrs["bddl_file_name"] = str(meta.pop("bddl_file_name", ""))
        for key, value in meta.items():
            if key in ("num_demos", "total"):
                continue
            if isinstance(value, (str, int, float, bool)):
                self.grp.attrs[key] = value
            elif isinstance(value, (dict, list)):
                self.grp.attrs[key] = json.dumps(value)
        self.names: list[str] = []
        self.total = 0
        self._next = 0

    def _name(self, wanted: str) -> str:
        if wanted and DEMO_RE.match(wanted):
            if wanted in self.names:
                raise RawDemoError(f"{self.path}: demo name {wanted} used twice")
            name = wanted
        else:
            while f"demo_{self._next}" in self.names:
                self._next += 1
            name = f"demo_{self._next}"
        self.names.append(name)
        return name

    def add(self, demo: RawDemo) -> str:
        name = self._name(demo.name)
        demo.validate(f"{self.path}:{name}")
        _write_demo(self.grp.create_group(name), demo, self.image_compression)
        self.total += len(demo)
        return name

    def copy_from(self, src_path: str | Path, src_name: str, name: str | None = None) -> str:
        """Copy group data/<src_name> of another demo file verbatim (no decode / re-encode)."""
        import h5py

        with h5py.File(src_path, "r") as src:
            if f"data/{src_name}" not in src:
                raise RawDemoError(f"{src_path}: no demo {src_name}")
            dst = self._name(name or src_name)
            src.copy(src[f"data/{src_name}"], self.grp, name=dst)
            self.total += int(src[f"data/{src_name}"].attrs.get("num_samples", len(src[f"data/{src_name}/actions"])))
        return dst

    def close(self) -> Path:
        self.grp.attrs["num_demos"] = len(self.names)
        self.grp.attrs["total"] = self.total
        self._f.close()
        fsync_file(self.tmp)
        self.tmp.replace(self.path)
        fsync_dir(self.path.parent)
        return self.path

    def abort(self) -> None:
        try:
            self._f.close()
        finally:
            if self.tmp.exists():
                self.tmp.unlink()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_raw_demo_file(path: str | Path, task_meta: dict, demos: list[RawDemo], image_compression: str | None = "gzip") -> Path:
    """Write `demos` in the LIBERO layout (atomic: tmp file + rename) and return the path.

    `task_meta` needs `problem_info` (dict or JSON, with language_instruction) or `language_instruction`;
    `env_args` and `bddl_file_name` are written when given; other str/int/float/dict keys become `data`
    attrs. Demos are named demo_0, demo_1, ... unless they carry a `demo_<i>` name already.
    """
    with RawDemoWriter(path, task_meta, image_compression) as writer:
        for demo in demos:
            writer.add(demo)
    return Path(path)


def _write_demo(g, demo: RawDemo, image_compression: str | None) -> None:
    n = len(demo)
    g.attrs["num_samples"] = n
    g.attrs["init_state"] = demo.init_state if demo.init_state is not None else np.zeros(0)
    g.attrs["model_file"] = demo.model_xml
    g.create_dataset("actions", data=demo.actions)
    g.create_dataset("states", data=demo.states)
    g.create_dataset("rewards", data=demo.rewards)
    g.create_dataset("dones", data=demo.dones)
    if demo.robot_states is not None:
        g.create_dataset("robot_states", data=np.asarray(demo.robot_states, dtype=np.float64))
    if demo.expert_actions is not None:
        g.create_dataset("expert_actions", data=np.asarray(demo.expert_actions, dtype=np.float64))
    if demo.obs:
        og = g.create_group("obs")
        for key, arr in demo.obs.items():
            arr = np.asarray(arr)
            if key in IMAGE_KEYS and arr.ndim == 4 and n:
                og.create_dataset(key, data=arr.astype(np.uint8), chunks=(1, *arr.shape[1:]),
                                  compression=image_compression)
            else:
                og.create_dataset(key, data=arr)


# -- reader -------------------------------------------------------------------------------------
def _demo_names(grp) -> list[str]:
    names = [k for k in grp if DEMO_RE.match(k)]
    return sorted(names, key=lambda k: int(DEMO_RE.match(k).group(1)))


def _parse_json_attr(path, key: str, raw) -> object:
    if isinstance(raw, bytes):
        raw = raw.decode()
    if not isinstance(raw, str):
        return raw
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        raise RawDemoError(f"{path}: data attr {key!r} is not valid JSON") from None


def instruction_from_file_name(path: str | Path) -> str | None:
    """`put_the_bowl_on_the_plate_demo.hdf5` -> "put the bowl on the plate", as the official save script
    names a task (files of the official regenerate script carry no attrs); None for another name."""
    name = Path(path).name
    if not name.endswith(DEMO_SUFFIX) or len(name) == len(DEMO_SUFFIX):
        return None
    return name[: -len(DEMO_SUFFIX)].replace("_", " ")


class RawDemoFile:
    """Lazy access to one demo file: `.meta`, `.names`, `.demo(name, load_obs=...)`; use as a context manager."""

    def __init__(self, path: str | Path):
        import h5py

        self.path = Path(path)
        if not self.path.is_file():
            raise RawDemoError(f"{self.path}: demo file not found")
        try:
            self._f = h5py.File(self.path, "r")
        except OSError as err:
            raise RawDemoError(f"{self.path}: cannot open as HDF5 (truncated or corrupt?): {err}") from None
        if "data" not in self._f:
            self._f.close()
            raise RawDemoError(f"{self.path}: no 'data' group (not a LIBERO demo file)")
        grp = self._f["data"]
        meta = {}
        for key, raw in grp.attrs.items():
            meta[key] = _parse_json_attr(self.path, key, raw) if key in ("problem_info", "env_args") else _plain(raw)
        info = meta.get("problem_info")
        if isinstance(info, dict) and "language_instruction" in info:
            meta["language_instruction"] = info["language_instruction"]
        else:  # the official regenerate script writes no attrs: the task is in the file name
            meta["language_instruction"] = instruction_from_file_name(self.path)
            if meta["language_instruction"] is None:
                self._f.close()
                raise RawDemoError(f"{self.path}: data attr problem_info lacks language_instruction, and the file "
                                   f"name is not <task words>{DEMO_SUFFIX} to take the task from")
        self.meta = meta
        self.names = _demo_names(grp)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        self._f.close()

    def __len__(self) -> int:
        return len(self.names)

    def demo(self, name: str, load_obs: bool = True, validate: bool = True) -> RawDemo:
        where = f"{self.path}:{name}"
        if name not in self._f["data"]:
            raise RawDemoError(f"{where}: no such demo; file has {self.names[:5]}{'...' if len(self.names) > 5 else ''}")
        g = self._f["data"][name]
        try:
            for key in ("actions", "states"):
                if key not in g:
                    raise RawDemoError(f"{where}: missing dataset {key!r}")
            n = len(g["actions"])
            obs = None
            if load_obs and "obs" in g:
                obs = {k: g["obs"][k][()] for k in g["obs"]}
            model_xml = g.attrs.get("model_file", "")
            demo = RawDemo(
                actions=g["actions"][()],
                states=g["states"][()],
                model_xml=model_xml.decode() if isinstance(model_xml, bytes) else str(model_xml),
                init_state=np.asarray(g.attrs["init_state"]) if "init_state" in g.attrs else None,
                obs=obs,
                rewards=g["rewards"][()] if "rewards" in g else None,
                dones=g["dones"][()] if "dones" in g else np.zeros(n, dtype=np.uint8),
                robot_states=g["robot_states"][()] if "robot_states" in g else None,
                expert_actions=g["expert_actions"][()] if "expert_actions" in g else None,
                name=name,
            )
        except RawDemoError:
            raise
        except (OSError, KeyError, ValueError) as err:
            raise RawDemoError(f"{where}: unreadable (truncated or corrupt file?): {err}") from None
        if validate:
            demo.validate(where)
        return demo

    def __iter__(self) -> Iterator[RawDemo]:
        for name in self.names:
            yield self.demo(name)


def _plain(raw):
    if isinstance(raw, bytes):
        return raw.decode()
    if isinstance(raw, np.generic):
        return raw.item()
    return raw


def read_raw_demo_file(path: str | Path, load_obs: bool = True) -> tuple[dict, list[RawDemo]]:
    """(meta, demos) with demos in numeric order (demo_0, demo_1, ..., demo_10); meta has the parsed
    `problem_info` / `env_args` dicts plus `language_instruction`."""
    with RawDemoFile(path) as f:
        return f.meta, [f.demo(n, load_obs=load_obs) for n in f.names]
