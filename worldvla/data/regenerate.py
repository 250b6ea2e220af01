"""Replay raw LIBERO demos in the simulator: drop no-op actions, re-render, keep successful demos.

Protocol (libero_protocol.md "Data regeneration", official_format.md §3.1):
- start from the demo's own first sim state (`states[0]`), after `env.reset()`, then 10 dummy steps
  [0, 0, 0, 0, 0, 0, -1];
- an action is a no-op when the norm of its first six entries is below 1e-4 and its gripper command
  equals the gripper of the previous *kept* action; the very first action is a no-op when its first
  six entries are below the threshold (there is no previous gripper);
- the observation recorded for a kept action is the one *before* it is executed; frame 0's `states`
  and `robot_states` are copied from the raw demo (`states[0]`, `robot_states[0]`), as the official
  script does, while its images and obs/* are those of the settled env;
- a demo is kept when `done` is set after its last kept action.
Output per task: `<out_dir>/<task.name>_demo.hdf5` in the raw layout (raw_demos.py; images as
rendered, original demo names kept), plus `<out_dir>/<suite>_metainfo.json`.

Work is split per demo over processes; each demo's result is written to `<out_dir>/.parts/` first
(atomic), so an interrupted run resumes where it stopped; the task files are assembled at the end.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
from tqdm import tqdm

from worldvla.atomic import atomic_write_json, clean_stale_tmp
from worldvla.config import parse_cli, save_config
from worldvla.data.export import ExportConfig, export
from worldvla.data.raw_demos import (
    ACTION_DIM,
    DEMO_RE,
    RawDemo,
    RawDemoError,
    RawDemoFile,
    RawDemoWriter,
    obs_record,
    raw_demo_filename,
    robot_state_vector,
    stack_obs,
)
from worldvla.data.recording import settle
from worldvla.data.stage_cli import run, setup_logging
from worldvla.envs.libero import LiberoEnv, get_suite

# torch is imported where used: this stage's CLI stays torch-free (tests/test_layers.py LIGHT_MODULES).

log = logging.getLogger(__name__)

NOOP_THRESHOLD = 1e-4  # OpenVLA's no-op threshold on the 6-D translation+rotation norm
PARTS_DIR = ".parts"


# -- no-op filter -------------------------------------------------------------------------------
def is_noop(action: np.ndarray, prev_kept: np.ndarray | None, threshold: float = NOOP_THRESHOLD) -> bool:
    """True when `action` moves less than `threshold` and does not change the gripper command."""
    action = np.asarray(action, dtype=np.float64)
    still = float(np.linalg.norm(action[:6])) < threshold
    if prev_kept is None:
        return still
    return still and action[6] == prev_kept[6]


def noop_keep_mask(actions: np.ndarray, threshold: float = NOOP_THRESHOLD) -> np.ndarray:
    """(T,) bool: which actions survive the filter (comparison is with the previous kept action)."""
    keep = np.zeros(len(actions), dtype=bool)
    prev = None
    for t, action in enumerate(np.asarray(actions, dtype=np.float64)):
        if not is_noop(action, prev, threshold):
            keep[t] = True
            prev = action
    return keep


# -- replay -------------------------------------------------------------------------------------
class ReplayEnv(Protocol):
    def settle(self, init_state: np.ndarray, wait_steps: int, seed: int | None = None) -> dict: ...

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, dict]: ...

    def sim_state(self) -> np.ndarray: ...

    def model_xml(self) -> str: ...


class LiberoReplayEnv:
    """A LIBERO task env rendering at `resolution`, seen through the ReplayEnv interface."""

    def __init__(self, suite: str, task_id: int, resolution: int, env_seed: int = 0):
        self.env = LiberoEnv(suite, task_id, resolution=resolution, env_seed=env_seed)
        self.inner = self.env.env

    def settle(self, init_state, wait_steps, seed=None):
        return settle(self.env, init_state, wait_steps, seed)

    def step(self, action):
        return self.inner.step(np.asarray(action, dtype=np.float64).tolist())

    def sim_state(self):
        return self.inner.sim.get_state().flatten().copy()

    def model_xml(self):
        return self.inner.sim.model.get_xml()

    def close(self):
        self.env.close()


@dataclass
class ReplayResult:
    demo: RawDemo  # regenerated demo (kept steps only), named like the source demo
    success: bool
    n_raw: int
    n_kept: int

    @property
    def n_noops(self) -> int:
        return self.n_raw - self.n_kept


def replay_seed(env_seed: int, demo_name: str) -> int:
    """The RNG seed set before the env reset of one demo's replay (fixture placement; see raw_demos.settle).

    A function of the demo alone, so the output does not depend on which worker replays which demo,
    nor on resuming. (The official script resets one env per task in sequence, so its placements
    come from one running RNG stream; they are random draws in both cases.)
    """
    m = DEMO_RE.match(demo_name)
    return env_seed * 1_000_003 + (int(m.group(1)) if m else 0)


def first_robot_state(source: RawDemo, obs: dict) -> np.ndarray:
    """Frame 0's robot state: the raw demo's `robot_states[0]` (copied, as the official script does),
    or the settled observation's when the raw file has none (a scripted recording without it)."""
    if source.robot_states is not None and len(source.robot_states):
        return np.asarray(source.robot_states[0], dtype=np.float64)
    return robot_state_vector(obs)


def replay_demo(env: ReplayEnv, source: RawDemo, wait_steps: int = 10, threshold: float = NOOP_THRESHOLD,
                where: str = "", seed: int | None = None) -> ReplayResult:
    """Replay `source.actions` from `source.states[0]`, skipping no-ops; record obs before each kept action."""
    where = where or source.name
    if len(source) == 0:
        raise RawDemoError(f"{where}: demo has no actions")
    source.validate(where)
    obs = env.settle(source.states[0], wait_steps, seed)
    keep = noop_keep_mask(source.actions, threshold)
    steps, states, robot, actions, rewards, dones = [], [], [], [], [], []
    done = False
    for action in source.actions[keep]:
        if not states:  # frame 0 as the official script: the raw demo's own values, not the settled state
            states.append(np.asarray(source.states[0], dtype=np.float64))
            robot.append(first_robot_state(source, obs))
        else:
            states.append(env.sim_state())
            robot.append(robot_state_vector(obs))
        steps.append(obs_record(obs))
        obs, reward, done, _ = env.step(action)
        actions.append(action)
        rewards.append(float(reward))
        dones.append(int(bool(done)))
    demo = RawDemo(
        actions=np.asarray(actions, dtype=np.float64).reshape(-1, ACTION_DIM),
        states=np.asarray(states, dtype=np.float64) if states else np.zeros((0, len(env.sim_state()))),
        model_xml=env.model_xml(),
        obs=stack_obs(steps),
        rewards=np.asarray(rewards),
        dones=np.asarray(dones, dtype=np.uint8),
        robot_states=np.asarray(robot, dtype=np.float64),
        # a noisy recording's intended actions follow the executed ones through the no-op filter
        expert_actions=None if source.expert_actions is None else np.asarray(source.expert_actions)[keep],
        name=source.name,
    )
    return ReplayResult(demo, bool(done), len(source), int(keep.sum()))


# -- the suite job ------------------------------------------------------------------------------
@dataclass
class RegenerateConfig:
    suite: str = "libero_goal"  # LIBERO suite whose tasks are replayed
    raw_dir: Path = Path("data/raw/libero_goal")  # folder of raw `<task.name>_demo.hdf5` files
    out_dir: Path | None = None  # default: data/processed/<suite>_no_noops_t_<resolution>
    resolution: int = 256  # camera height = width in px (256 or 512, official)
    workers: int = 1  # processes replaying demos in parallel (each holds one env)
    tasks: list[int] = field(default_factory=list)  # task ids to do; empty = all tasks of the suite
    max_demos: int = 0  # per task; 0 = all
    keep_failed: bool = False  # keep demos that fail on replay (official: dropped); for test data only
    noop_threshold: float = NOOP_THRESHOLD
    wait_steps: int = 10  # dummy steps after setting the init state (official: 10)
    env_seed: int = 0  # env.seed(); also the base of the per-demo RNG seed before each reset (replay_seed)
    image_compression: str = "gzip"  # h5py filter for images: gzip | lzf | none
    export_dir: Path | None = None  # also write the official PNG/npy folder layout here (export.py)
    export_layout: str = "both"  # worldvla (imgs/, action/) | rynnvla (imgs_third_view/, imgs_wrist/, states) | both
    overwrite: bool = False  # redo demos whose results exist in out_dir/.parts

    def resolved_out_dir(self) -> Path:
        return self.out_dir or Path("data/processed") / f"{self.suite}_no_noops_t_{self.resolution}"


@dataclass(frozen=True)
class Job:
    task_id: int
    task_name: str
    raw_file: str
    demo: str
    part_dir: str


# Env factory used by workers: (suite, task_id, resolution, env_seed) -> ReplayEnv. Tests swap it.
_ENV_FACTORY = LiberoReplayEnv
_WORKER: dict = {}


def _worker_init(cfg: RegenerateConfig, factory) -> None:
    _WORKER.update(cfg=cfg, factory=factory, key=None, env=None)
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass


def _env_for(task_id: int):
    cfg = _WORKER["cfg"]
    key = (cfg.suite, task_id)
    if _WORKER["key"] != key:
        if _WORKER["env"] is not None and hasattr(_WORKER["env"], "close"):
            _WORKER["env"].close()
        _WORKER["env"] = _WORKER["factory"](cfg.suite, task_id, cfg.resolution, cfg.env_seed)
        _WORKER["key"] = key
    return _WORKER["env"]


def _atomic_json(path: Path, data) -> None:
    atomic_write_json(path, data)


def _run_job(job: Job) -> dict:
    cfg: RegenerateConfig = _WORKER["cfg"]
    where = f"{job.raw_file}:{job.demo}"
    with RawDemoFile(job.raw_file) as f:
        source = f.demo(job.demo, load_obs=False)
        meta = f.meta
    result = replay_demo(_env_for(job.task_id), source, cfg.wait_steps, cfg.noop_threshold, where,
                         seed=replay_seed(cfg.env_seed, job.demo))
    kept = (result.success or cfg.keep_failed) and result.n_kept > 0
    part_dir = Path(job.part_dir)
    info = {"demo": job.demo, "success": result.success, "kept": kept, "n_raw": result.n_raw,
            "n_kept": result.n_kept, "n_noops": result.n_noops}
    if kept:  # a raw file without attrs (official regenerate output) has its instruction from the file name
        problem = meta.get("problem_info") or {"language_instruction": meta["language_instruction"]}
        writer = RawDemoWriter(part_dir / f"{job.demo}.hdf5", {"problem_info": problem},
                               None if cfg.image_compression == "none" else cfg.image_compression)
        with writer:
            writer.add(result.demo)
    _atomic_json(part_dir / f"{job.demo}.json", info)
    return info


def plan_jobs(cfg: RegenerateConfig, out_dir: Path) -> tuple[list[Job], dict[int, tuple[str, Path]]]:
    """Jobs for every demo of every selected task with a raw file; tasks -> (name, raw file)."""
    suite = get_suite(cfg.suite)
    task_ids = cfg.tasks or list(range(suite.n_tasks))
    tasks, jobs = {}, []
    for tid in task_ids:
        if not 0 <= tid < suite.n_tasks:
            raise IndexError(f"{cfg.suite} has tasks 0..{suite.n_tasks - 1}, got {tid}")
        name = suite.get_task(tid).name
        raw = Path(cfg.raw_dir) / raw_demo_filename(name)
        if not raw.is_file():
            log.warning("task %d (%s): no raw demo file %s, skipped", tid, name, raw)
            continue
        tasks[tid] = (name, raw)
        with RawDemoFile(raw) as f:
            names = f.names[: cfg.max_demos] if cfg.max_demos else f.names
        part_dir = out_dir / PARTS_DIR / name
        part_dir.mkdir(parents=True, exist_ok=True)
        jobs += [Job(tid, name, str(raw), demo, str(part_dir)) for demo in names]
    if not tasks:
        raise FileNotFoundError(f"no raw demo files for {cfg.suite} in {cfg.raw_dir} "
                                f"(expected <task.name>_demo.hdf5, e.g. {raw_demo_filename(suite.get_task(0).name)})")
    return jobs, tasks


def _done(job: Job) -> bool:
    info = Path(job.part_dir) / f"{job.demo}.json"
    if not info.is_file():
        return False
    data = json.loads(info.read_text())
    return not data["kept"] or (Path(job.part_dir) / f"{job.demo}.hdf5").is_file()


def run_jobs(cfg: RegenerateConfig, jobs: list[Job], factory=None) -> None:
    factory = factory or _ENV_FACTORY
    todo = [j for j in jobs if cfg.overwrite or not _done(j)]
    if len(todo) < len(jobs):
        log.info("resuming: %d of %d demos already replayed", len(jobs) - len(todo), len(jobs))
    bar = tqdm(total=len(todo), desc=f"replay {cfg.suite} @{cfg.resolution}px", unit="demo")
    if cfg.workers <= 1:
        _worker_init(cfg, factory)
        try:
            for job in todo:
                _run_job(job)
                bar.update()
        finally:
            if _WORKER.get("env") is not None and hasattr(_WORKER["env"], "close"):
                _WORKER["env"].close()
            _WORKER.clear()
    else:
        ctx = mp.get_context("spawn")  # the simulator's GL context does not survive fork
        with ctx.Pool(cfg.workers, initializer=_worker_init, initargs=(cfg, factory)) as pool:
            for _ in pool.imap_unordered(_run_job, todo):  # jobs are ordered by task: envs get reused
                bar.update()
    bar.close()


def assemble(cfg: RegenerateConfig, out_dir: Path, jobs: list[Job], tasks: dict[int, tuple[str, Path]]) -> dict:
    """Per task: copy the kept parts into `<task.name>_demo.hdf5`; write the metainfo JSON."""
    metainfo: dict = {}
    for tid, (name, raw) in tasks.items():
        with RawDemoFile(raw) as f:
            meta = dict(f.meta)
        env_args = meta.get("env_args") if isinstance(meta.get("env_args"), dict) else {}
        kwargs = dict(env_args.get("env_kwargs", {}))
        kwargs.update(camera_heights=cfg.resolution, camera_widths=cfg.resolution)
        env_args = {**env_args, "env_kwargs": kwargs}
        meta.update(env_args=env_args, task_name=name, suite=cfg.suite, resolution=cfg.resolution,
                    noop_threshold=cfg.noop_threshold, source_file=str(raw))
        meta.pop("language_instruction", None)
        task_jobs = [j for j in jobs if j.task_id == tid]
        infos = {}
        with RawDemoWriter(out_dir / raw_demo_filename(name), meta) as writer:
            for job in task_jobs:
                info = json.loads((Path(job.part_dir) / f"{job.demo}.json").read_text())
                infos[job.demo] = info
                if info["kept"]:
                    writer.copy_from(Path(job.part_dir) / f"{job.demo}.hdf5", job.demo)
        metainfo[name] = infos
        n_kept = sum(i["kept"] for i in infos.values())
        log.info("%s: kept %d of %d demos -> %s", name, n_kept, len(infos), out_dir / raw_demo_filename(name))
    _atomic_json(out_dir / f"{cfg.suite}_metainfo.json", metainfo)
    return metainfo


def regenerate(cfg: RegenerateConfig, env_factory=None) -> Path:
    """The whole job; returns the output folder."""
    if cfg.resolution <= 0:
        raise ValueError(f"resolution must be positive (256 or 512 for training), got {cfg.resolution}")
    if cfg.resolution % 32:
        log.warning("resolution %d is not a multiple of 32: the VQ-GAN tokenizer will not accept these frames",
                    cfg.resolution)
    out_dir = cfg.resolved_out_dir()
    out_dir.mkdir(parents=True, exist_ok=True)

    clean_stale_tmp(out_dir, recursive=True)  # `<file>.tmp<pid>` of a killed run (task files, .parts/)
    t0 = time.time()
    jobs, tasks = plan_jobs(cfg, out_dir)
    run_jobs(cfg, jobs, env_factory)
    metainfo = assemble(cfg, out_dir, jobs, tasks)
    kept = sum(i["kept"] for t in metainfo.values() for i in t.values())
    log.info("regenerated %d/%d demos of %d tasks in %.1fs -> %s", kept, len(jobs), len(tasks), time.time() - t0, out_dir)
    if cfg.export_dir is not None:
        export(ExportConfig(hdf5_dir=out_dir, save_dir=cfg.export_dir, layout=cfg.export_layout, workers=cfg.workers))
    return out_dir


def clean_parts(out_dir: Path) -> None:
    """Remove the per-demo intermediate results (after a run is complete and checked)."""
    shutil.rmtree(Path(out_dir) / PARTS_DIR, ignore_errors=True)


def cli(argv: list[str] | None = None) -> Path:
    """Replay raw LIBERO demos at 256/512 px, drop no-ops and failed demos, write per-task HDF5 (+ PNG/npy export)."""
    cfg = parse_cli(RegenerateConfig, argv, description=cli.__doc__)
    setup_logging()
    out = regenerate(cfg)
    save_config(cfg, out / "regenerate_config.yaml")
    return out


def main(argv: list[str] | None = None) -> int:
    """`worldvla regenerate` / `python -m worldvla.data.regenerate [--config f.yaml] key=value ...`; --help lists every key."""
    run(cli, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
