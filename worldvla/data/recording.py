"""Recording in the LIBERO simulator, all of it: settling a scene, recording one rollout into a `RawDemo`
(`record_rollout`), short scripted test demos (`noisy_script`, `record_task_demos`), and the scripted
expert's measured, resumable recording runs (`run_expert`, `record_scripted_demos`, the stage
`worldvla.data.record_scripted`). The raw demo file format is raw_demos.py; the expert's control law is
worldvla/envs/scripted_expert.py; the env wrapper is worldvla/envs/libero.py.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from worldvla.config import parse_ids
from worldvla.data.raw_demos import (
    ACTION_DIM,
    RawDemo,
    RawDemoWriter,
    obs_record,
    raw_demo_filename,
    robot_state_vector,
    stack_obs,
    task_meta_from_env,
    write_raw_demo_file,
)
from worldvla.envs.libero import DUMMY_ACTION, NUM_WAIT_STEPS, LiberoEnv
from worldvla.envs.scripted_expert import ExpertConfig, PickPlaceExpert

log = logging.getLogger(__name__)


NoiseLabel = Literal["intended", "executed"]  # the label of a noisy step (run_expert)

# -- recorder -----------------------------------------------------------------------------------
ActionsFn = Callable[[int, dict], "np.ndarray | list | None"]


def _inner_env(env):
    """The LIBERO ControlEnv (has set_init_state, step, sim): the env itself or the one a LiberoEnv wraps."""
    for cand in (env, getattr(env, "env", None)):
        if cand is not None and hasattr(cand, "set_init_state") and hasattr(cand, "sim"):
            return cand
    raise TypeError(f"{type(env).__name__} is not a LiberoEnv nor a LIBERO ControlEnv (needs set_init_state, step, sim)")


def reset_observable_clocks(inner) -> None:
    """Give robosuite's observables the sampling phase of a freshly built env.

    robosuite samples each observable at the first sim substep after its sampling period elapsed;
    `reset()` zeroes the timer but keeps the `_sampled` flag, so after earlier episodes the images
    and proprio values of a step can be taken at another substep than in a fresh env: the same sim
    state then gives different observations. Resetting both makes a replay independent of what the
    env did before (worker assignment, resume).
    """
    robosuite_env = getattr(inner, "env", inner)
    for observable in getattr(robosuite_env, "_observables", {}).values():
        observable.reset()
        if hasattr(observable, "_sampled"):
            observable._sampled = False


def settle(env, init_state: np.ndarray, wait_steps: int, seed: int | None = None) -> dict:
    """reset(), set the given flattened sim state, then `wait_steps` dummy actions; returns the obs.

    The flattened state holds time, qpos and qvel only: fixtures (cabinets, stoves, racks) are
    placed by `reset()` from numpy's global RNG, so the rendered scene also depends on that RNG.
    With `seed`, numpy's and python's RNGs are seeded right before `reset()`, which makes the
    scene (and every observation after it) a function of (`init_state`, `seed`) only. Observation
    sampling clocks are reset too (reset_observable_clocks).
    """
    inner = _inner_env(env)
    if seed is not None:
        np.random.seed(seed % 2**32)
        random.seed(seed)
    inner.reset()
    reset_observable_clocks(inner)
    obs = inner.set_init_state(np.asarray(init_state, dtype=np.float64))
    for _ in range(wait_steps):
        obs, _, _, _ = inner.step(list(DUMMY_ACTION))
    return obs


def record_rollout(env, actions_fn: ActionsFn, *, episode: int = 0, init_state: np.ndarray | None = None,
                   max_steps: int = 50, wait_steps: int | None = None, stop_on_done: bool = True,
                   record_obs: bool = True, progress: bool = False, seed: int | None = None) -> RawDemo:
    """Run `actions_fn(t, raw_obs) -> action (7,) or None (stop)` in a LiberoEnv-like env and record a RawDemo.

    Start: `init_state` (flattened sim state) if given, else the task's init state number `episode`;
    then `wait_steps` dummy steps (default NUM_WAIT_STEPS). The recorded `states[0]` is the sim state
    after settling, so a replay from it sees the same scene. Stops at `done` (if `stop_on_done`), at
    `max_steps`, or when `actions_fn` returns None. `seed`: see `settle` (fixture placement).
    """
    wait_steps = NUM_WAIT_STEPS if wait_steps is None else wait_steps
    if init_state is None:
        init_states = getattr(env, "init_states", None)
        if init_states is None:
            raise ValueError("record_rollout: env has no init_states; pass init_state=")
        init_state = init_states[episode % len(init_states)]
    obs = settle(env, init_state, wait_steps, seed)
    inner = _inner_env(env)
    actions, states, robot, steps, rewards, dones = [], [], [], [], [], []
    iterator = range(max_steps)
    if progress:
        iterator = tqdm(iterator, desc="record", unit="step")
    for t in iterator:
        action = actions_fn(t, obs)
        if action is None:
            break
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        if action.shape != (ACTION_DIM,) or not np.isfinite(action).all():
            raise ValueError(f"record_rollout: step {t}: action must be 7 finite numbers, got {action}")
        states.append(inner.sim.get_state().flatten().copy())
        robot.append(robot_state_vector(obs))
        if record_obs:
            steps.append(obs_record(obs))
        obs, reward, done, _ = inner.step(action.tolist())
        actions.append(action)
        rewards.append(float(reward))
        dones.append(int(bool(done)))
        if done and stop_on_done:
            break
    n_state = inner.sim.get_state().flatten().shape[0]
    return RawDemo(
        actions=np.asarray(actions, dtype=np.float64).reshape(-1, ACTION_DIM),
        states=np.asarray(states, dtype=np.float64).reshape(-1, n_state),
        model_xml=inner.sim.model.get_xml(),
        init_state=np.asarray(states[0] if states else init_state, dtype=np.float64),
        obs=stack_obs(steps) if record_obs else None,
        rewards=np.asarray(rewards, dtype=np.float64),
        dones=np.asarray(dones, dtype=np.uint8),
        robot_states=np.asarray(robot, dtype=np.float64).reshape(-1, 9),
    )


def noisy_script(seed: int = 0, scale: float = 0.3, gripper_period: int = 8, n_steps: int | None = None) -> ActionsFn:
    """A simple noisy action script for test data: smooth random deltas, gripper toggling every
    `gripper_period` steps, and an exact no-op ([0]*6 + same gripper) every 5th step so that the
    regeneration filter has something to drop."""
    rng = np.random.default_rng(seed)
    state = {"drift": np.zeros(6)}

    def fn(t: int, obs: dict):
        if n_steps is not None and t >= n_steps:
            return None
        grip = -1.0 if (t // gripper_period) % 2 == 0 else 1.0
        if t % 5 == 4:
            return np.array([0, 0, 0, 0, 0, 0, grip], dtype=np.float64)
        state["drift"] = 0.7 * state["drift"] + 0.3 * rng.normal(0.0, scale, 6)
        return np.concatenate([np.clip(state["drift"], -1, 1), [grip]])

    return fn


@dataclass
class RecordSpec:
    """What `record_task_demos` records for one task."""

    suite: str
    task_id: int
    n_demos: int = 2
    steps: int = 20
    resolution: int = 128  # raw LIBERO demos are rendered at 128 px
    seed: int = 0
    extra_meta: dict = field(default_factory=dict)


def record_task_demos(spec: RecordSpec, out_dir: str | Path, actions_fn_factory: Callable[[int], ActionsFn] | None = None) -> Path:
    """Record `spec.n_demos` rollouts of one task (init states 0..n-1) into `out_dir/<task.name>_demo.hdf5`."""
    env = LiberoEnv(spec.suite, spec.task_id, resolution=spec.resolution, env_seed=spec.seed)
    try:
        factory = actions_fn_factory or (lambda i: noisy_script(seed=spec.seed + i, n_steps=spec.steps))
        demos = [record_rollout(env, factory(i), episode=i, max_steps=spec.steps) for i in range(spec.n_demos)]
        meta = {**task_meta_from_env(env), **spec.extra_meta}
    finally:
        env.close()
    return write_raw_demo_file(Path(out_dir) / raw_demo_filename(env.task.name), meta, demos)


# -- measurement ----------------------------------------------------------------------------------
@dataclass
class EpisodeResult:
    suite: str
    task_id: int
    episode: int
    success: bool
    steps: int  # policy steps (wait steps excluded)
    wall_s: float
    phases: list = field(default_factory=list)  # (phase, steps) in order
    demo: object | None = None  # RawDemo when recorded

    def to_dict(self) -> dict:
        return {"suite": self.suite, "task_id": self.task_id, "episode": self.episode, "success": self.success,
                "steps": self.steps, "wall_s": round(self.wall_s, 2), "phases": [list(p) for p in self.phases]}


def run_expert(suite: str, task_id: int, episode_ids, *, resolution: int = 128, config: ExpertConfig | None = None,
               max_steps: int | None = None, record: bool = False, env=None, progress: bool = True,
               env_seed: int = 0, action_noise: float = 0.0, noise_seed: int = 0,
               noise_label: NoiseLabel = "intended") -> list[EpisodeResult]:
    """Run the expert on init states `episode_ids` of one task; success is the env's `done`.

    `action_noise` > 0 adds N(0, action_noise) to the six arm dims of every action the expert
    chooses, and the noisy action is what runs and is recorded as `actions` (regeneration replays
    it). The expert plans from the simulator each step, so it steers back: the demos then show
    states off its own path and the way back to it, which a policy drifting in closed loop needs
    (DART, Laskey et al. 2017). With `noise_label="intended"` the action the expert chose before the
    noise is recorded too (`expert_actions`), and it becomes the training label: the policy learns
    the correction, not the jitter. `"executed"` labels with the noisy action that ran.

    With `record=True` each result carries a `RawDemo` (worldvla.data.raw_demos) with images at
    `resolution`. `max_steps` defaults to the suite's evaluation budget. Pass `env` (a LiberoEnv of
    the same task) to reuse one.
    """
    own_env = env is None
    env = env or LiberoEnv(suite, task_id, resolution=resolution, env_seed=env_seed)
    try:
        expert = PickPlaceExpert(env, config)
        max_steps = max_steps or env.max_steps
        results = []
        iterator = list(episode_ids)
        if progress:
            iterator = tqdm(iterator, desc=f"{suite} task {task_id}", unit="ep")
        for ep in iterator:
            expert.reset()
            rng = np.random.default_rng([env_seed, ep, noise_seed])
            intended = []

            def act(t: int, obs: dict):
                if expert.finished:
                    return None
                action = np.array(expert.act(obs), dtype=np.float64)
                intended.append(action.copy())
                if action_noise > 0:
                    action[:6] = np.clip(action[:6] + rng.normal(0.0, action_noise, 6), -1.0, 1.0)
                return action

            t0 = time.perf_counter()
            demo = record_rollout(env, act, episode=ep, max_steps=max_steps, record_obs=record)
            if action_noise > 0 and noise_label == "intended":
                demo.expert_actions = np.asarray(intended[:len(demo)], dtype=np.float64).reshape(-1, ACTION_DIM)
            wall = time.perf_counter() - t0
            expert.mem.phase_log.append((expert.mem.phase, expert.mem.phase_steps))
            res = EpisodeResult(suite, task_id, ep, demo.success, len(demo), wall, list(expert.mem.phase_log),
                                demo if record else None)
            results.append(res)
            log.info("%s task %d episode %d: %s in %d steps (%.1f s)", suite, task_id, ep,
                     "success" if res.success else "FAIL", res.steps, wall)
            if progress:
                iterator.set_postfix(ok=sum(r.success for r in results), n=len(results))
        return results
    finally:
        if own_env:
            env.close()


# -- recording --------------------------------------------------------------------------------------
@dataclass
class RecordScriptedConfig:
    suite: str = "libero_object"  # LIBERO suite
    tasks: str = "0"  # task ids, e.g. 0,1 or 0-3
    episodes: str = "0-9"  # init-state ids to attempt, e.g. 0-9
    out: str = "data/raw/libero_object"  # gets <task.name>_demo.hdf5 + success_report.json
    resolution: int = 128  # camera px of the recorded images (released raw LIBERO demos: 128)
    max_steps: int = 0  # policy-step budget per attempt; 0 = the suite's evaluation budget
    env_seed: int = 0
    keep_failures: bool = False  # also write failed attempts (real LIBERO files hold successes only)
    noisy_copies: int = 0  # per init state, this many extra attempts with action noise (recovery demos; run_expert)
    action_noise: float = 0.2  # std of that noise on the six arm dims, in action units (the gripper is left alone)
    # the label of a noisy step: the action the expert intended (DART; stored as expert_actions) or the one that ran
    noise_label: NoiseLabel = "intended"
    overwrite: bool = False  # redo every attempt instead of resuming from <out>/.parts/


REPORT_NAME = "success_report.json"
PARTS_DIR = ".parts"  # finished attempts of unfinished tasks (resume); removed when a task is merged


def _atomic_write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    tmp.replace(path)


def machine_info() -> dict:
    """Where the figures were measured: they depend on the CPU and on what else ran."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {"cpu": cpu, "cores": os.cpu_count(), "load_avg_1_5_15": [round(x, 2) for x in load]}


def _run_key(cfg: RecordScriptedConfig, expert_config: ExpertConfig) -> dict:
    """What makes a recorded attempt reusable: anything else changes the demos."""
    key = {"suite": cfg.suite, "resolution": cfg.resolution, "max_steps": cfg.max_steps, "env_seed": cfg.env_seed,
           "keep_failures": cfg.keep_failures, "expert": asdict(expert_config)}
    if cfg.noisy_copies > 0:  # clean attempts do not depend on it: runs without copies keep their old key
        key["action_noise"] = cfg.action_noise
        key["noise_label"] = cfg.noise_label
    return key


def _load_report(path: Path, cfg: RecordScriptedConfig, key: dict) -> dict:
    if not path.is_file():
        return {"tasks": {}}
    try:
        report = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err}); delete it or pass overwrite=true") from None
    if report.get("suite") not in (None, cfg.suite):
        raise ValueError(f"{path}: field 'suite' is {report['suite']!r}, not {cfg.suite!r}; use another out=")
    if report.get("run_key") not in (None, key) and not cfg.overwrite:
        raise ValueError(f"{path}: field 'run_key' differs from this run's settings (resolution, max_steps, "
                         f"env_seed, keep_failures, expert); pass overwrite=true or use another out=")
    return report


def _check_parts(part_dir: Path, key: dict) -> None:
    """Attempts kept from an interrupted run are reused only if they were made with the same settings."""
    stamp = part_dir / "run_key.json"
    if stamp.is_file() and json.loads(stamp.read_text()) != key:
        raise ValueError(f"{stamp}: attempts recorded with other settings (resolution, max_steps, env_seed, "
                         f"keep_failures, expert); pass overwrite=true or use another out=")
    part_dir.mkdir(parents=True, exist_ok=True)
    _atomic_write_json(stamp, key)


def _task_done(entry: dict | None, episodes: list[int], copies: int, out: Path) -> bool:
    return bool(entry) and entry.get("episode_ids") == episodes and entry.get("noisy_copies", 0) == copies and (
        entry.get("file") is None or (out / entry["file"]).is_file())


def _attempt(cfg: RecordScriptedConfig, expert_config: ExpertConfig, env, meta: dict, part_dir: Path, ep: int,
             copy: int = 0) -> dict:
    """One attempt from init state `ep` (copy > 0: the copy-th noisy one), saved as `ep_<ep>[_noisy<copy>].json`
    (+ the .hdf5 when kept) in `part_dir`; reused on rerun."""
    stem = f"ep_{ep}" if copy == 0 else f"ep_{ep}_noisy{copy}"
    entry_path = part_dir / f"{stem}.json"
    if entry_path.is_file():
        return json.loads(entry_path.read_text())
    noise = cfg.action_noise if copy else 0.0
    (res,) = run_expert(cfg.suite, env.task_id, [ep], config=expert_config, env=env, record=True,
                        max_steps=cfg.max_steps or None, progress=False, env_seed=cfg.env_seed,
                        action_noise=noise, noise_seed=copy, noise_label=cfg.noise_label)
    entry = res.to_dict()
    entry.update(copy=copy, action_noise=noise, part=None)
    if res.success or cfg.keep_failures:
        entry["part"] = write_raw_demo_file(part_dir / f"{stem}.hdf5", meta, [res.demo]).name
    _atomic_write_json(entry_path, entry)  # written last: the attempt counts as done only with its demo
    return entry


def _merge_task(path: Path, meta: dict, part_dir: Path, entries: list[dict]) -> list[str]:
    """Copy the kept attempts, in episode order, into one LIBERO demo file as demo_0, demo_1, ..."""
    kept = [e for e in entries if e.get("part")]
    if not kept:
        for e in entries:
            e["demo"] = None
        return []
    with RawDemoWriter(path, meta) as writer:  # tmp file + rename on a clean exit
        for e in entries:
            e["demo"] = writer.copy_from(part_dir / e["part"], "demo_0", f"demo_{len(writer.names)}") \
                if e.get("part") else None
    return list(writer.names)


def _summarise(report: dict) -> None:
    tasks = report["tasks"].values()
    report["attempts"] = sum(t["attempts"] for t in tasks)
    report["successes"] = sum(t["successes"] for t in tasks)
    report["success_rate"] = report["successes"] / max(report["attempts"], 1)


def record_scripted_demos(cfg: RecordScriptedConfig, expert_config: ExpertConfig | None = None,
                          progress: bool = True) -> dict:
    """Attempt every (task, episode) with the expert and write, per task, the successful demos to
    `<out>/<task.name>_demo.hdf5` (raw LIBERO layout) and every attempt to `<out>/success_report.json`.

    Resumable: each finished attempt is kept under `<out>/.parts/task_<id>/` until its task's file is
    written, and a task whose file and report entry exist for the same episode list is skipped. The
    report (written atomically after every task) keeps the entries of tasks not in this run.
    Returns the report dict.
    """
    with logging_redirect_tqdm():  # per-attempt log lines above the progress bar, not through it
        return _record(cfg, expert_config or ExpertConfig(), progress)


def _record(cfg: RecordScriptedConfig, expert_config: ExpertConfig, progress: bool) -> dict:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    task_ids, episodes = parse_ids(cfg.tasks), parse_ids(cfg.episodes)
    key = _run_key(cfg, expert_config)
    report_path = out / REPORT_NAME
    if cfg.overwrite:
        shutil.rmtree(out / PARTS_DIR, ignore_errors=True)
    report = {"tasks": {}} if cfg.overwrite else _load_report(report_path, cfg, key)
    report.update({"suite": cfg.suite, "resolution": cfg.resolution, "env_seed": cfg.env_seed, "run_key": key,
                   "success_predicate": "env.step done (the task's BDDL goal)"})
    report.setdefault("tasks", {})
    if cfg.noisy_copies < 0 or cfg.action_noise < 0:
        raise ValueError(f"noisy_copies={cfg.noisy_copies}, action_noise={cfg.action_noise}: both must be >= 0")
    attempts = [(ep, c) for ep in episodes for c in range(1 + cfg.noisy_copies)]  # demo order: by init state
    bar = tqdm(total=len(task_ids) * len(attempts), desc=f"record {cfg.suite}", unit="ep", disable=not progress)
    for tid in task_ids:
        if _task_done(report["tasks"].get(str(tid)), episodes, cfg.noisy_copies, out):
            log.info("%s task %d: already recorded (%s), skipped", cfg.suite, tid, report["tasks"][str(tid)]["file"])
            bar.update(len(attempts))
            continue
        part_dir = out / PARTS_DIR / f"task_{tid}"
        _check_parts(part_dir, key)
        env = LiberoEnv(cfg.suite, tid, resolution=cfg.resolution, env_seed=cfg.env_seed)
        try:
            meta = {**task_meta_from_env(env), "source": "worldvla scripted expert"}
            PickPlaceExpert(env, expert_config)  # raises ExpertError now on an unsupported goal
            entries = []
            for ep, copy in attempts:
                entries.append(_attempt(cfg, expert_config, env, meta, part_dir, ep, copy))
                bar.update(1)
                bar.set_postfix(task=tid, ok=f"{sum(e['success'] for e in entries)}/{len(entries)}")
            path = out / raw_demo_filename(env.task.name)
            names = _merge_task(path, meta, part_dir, entries)
            if not names:
                log.warning("%s task %d: no successful demo, no file written", cfg.suite, tid)
            n_ok = sum(e["success"] for e in entries)
            steps = [e["steps"] for e in entries if e["success"]]
            for e in entries:
                e.pop("part", None)
            report["tasks"][str(tid)] = {
                "task_name": env.task.name, "language": env.language, "file": path.name if names else None,
                "episode_ids": episodes, "noisy_copies": cfg.noisy_copies, "action_noise": cfg.action_noise,
                "noise_label": cfg.noise_label,
                "attempts": len(entries), "successes": n_ok,
                "success_rate": n_ok / len(entries), "mean_steps_success": float(np.mean(steps)) if steps else None,
                "wall_s": round(sum(e["wall_s"] for e in entries), 1), "episodes": entries,
            }
            report["machine"] = machine_info()
            _summarise(report)
            _atomic_write_json(report_path, report)
            shutil.rmtree(part_dir, ignore_errors=True)
            log.info("%s task %d (%s): %d/%d successes; wrote %d demos to %s", cfg.suite, tid, env.task.name,
                     n_ok, len(entries), len(names), path if names else "-")
        finally:
            env.close()
    bar.close()
    _summarise(report)
    _atomic_write_json(report_path, report)
    parts = out / PARTS_DIR
    if parts.is_dir() and not any(parts.iterdir()):
        parts.rmdir()
    log.info("success report: %s (%d/%d attempts succeeded overall)", report_path, report["successes"],
             report["attempts"])
    return report
