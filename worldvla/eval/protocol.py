"""The evaluation protocol as data: which episodes exist, how they are sharded, what deviates.

An episode is identified by (suite, task, trial); trial j of task i starts from init state j
(libero_protocol.md "One episode"). Shards are a deterministic function of that key's position in
the sorted list of all episodes, so any split over processes or machines runs the same episodes.
"""

from __future__ import annotations

from dataclasses import dataclass

from worldvla.envs.libero import MAX_STEPS, NUM_WAIT_STEPS, get_suite

from .config import EvalConfig, parse_shard

PROTOCOL_SEED = 7  # python / numpy / torch (OpenVLA, WorldVLA)
PROTOCOL_TRIALS = 50  # init states per task
PROTOCOL_RESOLUTIONS = (256, 512)  # resolutions of the regenerated training data
HEADLINE_SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10")  # their mean is reported


@dataclass(frozen=True, order=True)
class EpisodeKey:
    suite: str
    task: int
    trial: int

    @property
    def name(self) -> str:
        return f"{self.suite}/task{self.task:02d}/trial{self.trial:02d}"


def suite_num_tasks(suite: str) -> int:
    return get_suite(suite).n_tasks


def all_episodes(cfg: EvalConfig, num_tasks=suite_num_tasks) -> list[EpisodeKey]:
    """Every episode of the configured suites/tasks/trials, sorted."""
    keys = []
    for suite in cfg.suites:
        n = num_tasks(suite)
        tasks = list(range(n)) if cfg.tasks is None else list(cfg.tasks)
        bad = [t for t in tasks if not 0 <= t < n]
        if bad:
            raise ValueError(f"{suite} has tasks 0..{n - 1}; got {bad}")
        trials = range(cfg.first_trial, cfg.first_trial + cfg.num_trials)
        keys += [EpisodeKey(suite, t, j) for t in tasks for j in trials]
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate episodes: a suite or task is listed twice")
    return sorted(keys)


def shard_episodes(keys: list[EpisodeKey], shard: str) -> list[EpisodeKey]:
    """Shard i/n holds the i-th of n contiguous slices of the sorted episodes (whole runs of trials,
    so a shard's simulator RNG chain advances naturally, see rng_chain.py)."""
    i, n = parse_shard(shard)
    keys = sorted(keys)
    return keys[i * len(keys) // n: (i + 1) * len(keys) // n]


def work_blocks(keys: list[EpisodeKey], num_workers: int) -> list[list[EpisodeKey]]:
    """Split episodes into runs of consecutive trials of one task, enough runs to keep `num_workers`
    busy; the first run of every task comes first (no RNG fast-forward needed for those)."""
    groups: dict[tuple[str, int], list[EpisodeKey]] = {}
    for k in sorted(keys):
        groups.setdefault((k.suite, k.task), []).append(k)
    if not groups:
        return []
    per_task = max(1, -(-max(1, num_workers) // len(groups)))  # ceil(workers / tasks)
    blocks = []
    for gi, g in enumerate(groups.values()):
        size = -(-len(g) // per_task)
        for bi, start in enumerate(range(0, len(g), size)):
            blocks.append((bi, gi, g[start: start + size]))
    return [b for _, _, b in sorted(blocks, key=lambda x: (x[0], x[1]))]


def suite_max_steps(cfg: EvalConfig, suite: str) -> int:
    return cfg.max_steps if cfg.max_steps is not None else MAX_STEPS.get(suite, 400)


def deviations(cfg: EvalConfig, info: dict, num_tasks=suite_num_tasks) -> list[str]:
    """Every setting that differs from the protocol, one readable flag each (empty = protocol-exact).

    `info` is the policy description (`worldvla.policy.interface.policy_info`).
    """
    out = []
    for suite in cfg.suites:
        if suite not in MAX_STEPS:
            out.append(f"suite {suite} has no protocol max_steps (400 used)")
        elif cfg.max_steps is not None and cfg.max_steps != MAX_STEPS[suite]:
            out.append(f"max_steps={cfg.max_steps} (protocol {MAX_STEPS[suite]} for {suite})")
    if cfg.num_trials != PROTOCOL_TRIALS:
        out.append(f"num_trials={cfg.num_trials} (protocol {PROTOCOL_TRIALS})")
    if cfg.first_trial:
        out.append(f"first_trial={cfg.first_trial} (protocol: init states from 0)")
    if cfg.tasks is not None:
        short = [s for s in cfg.suites if sorted(set(cfg.tasks)) != list(range(num_tasks(s)))]
        if short:
            out.append(f"tasks={list(cfg.tasks)} (protocol: all tasks of {short})")
    if cfg.wait_steps != NUM_WAIT_STEPS:
        out.append(f"wait_steps={cfg.wait_steps} (protocol {NUM_WAIT_STEPS})")
    if cfg.seed != PROTOCOL_SEED:
        out.append(f"seed={cfg.seed} (protocol {PROTOCOL_SEED})")
    render = cfg.resolution or info["resolution"]
    if render not in PROTOCOL_RESOLUTIONS:
        out.append(f"render resolution {render} (protocol {PROTOCOL_RESOLUTIONS})")
    if render != info["resolution"]:
        out.append(f"rendered at {render} px and resized to the model's {info['resolution']} px")
    if not cfg.rotate180:
        out.append("camera images not rotated 180 degrees")
    if cfg.history is not None and cfg.history != info["history"]:
        out.append(f"history={cfg.history} frames (the policy was trained with {info['history']})")
    if cfg.execute_steps is not None and cfg.execute_steps < info["chunk_size"]:
        out.append(f"execute_steps={cfg.execute_steps} of a {info['chunk_size']}-action chunk (protocol: all)")
    if cfg.invert_gripper:
        out.append("gripper sign inverted (protocol: -1 open, +1 close, no inversion)")
    if cfg.env_factory:
        out.append(f"simulator replaced by {cfg.env_factory}")
    return out


def protocol_record(cfg: EvalConfig, info: dict) -> dict:
    """What was run, for the output files (the env seed is not uniform across peers: record it)."""
    return {
        "seed": cfg.seed,
        "seeding": "python/numpy/torch seeded at process start and before every episode; the numpy state "
                   "before the reset of trial j is env.seed(env_seed) followed by j resets (the official "
                   "single-process order, reproduced per trial: worldvla/eval/rng_chain.py)",
        "env_seed": cfg.env_seed,
        "wait_steps": cfg.wait_steps,
        "wait_steps_counted_in_max_steps": False,
        "max_steps": {s: suite_max_steps(cfg, s) for s in cfg.suites},
        "num_trials": cfg.num_trials,
        "first_trial": cfg.first_trial,
        "render_resolution": cfg.resolution or info["resolution"],
        "model_resolution": info["resolution"],
        "rotate180": cfg.rotate180,
        "history": cfg.history or info["history"],
        "first_query_frames": 1,
        "chunk_size": info["chunk_size"],
        "decode_mode": info.get("decode_mode"),
        "state": "eef_pos + robosuite quat2axisangle(eef_quat), unflipped + gripper_qpos (float64)",
        "execute_steps": min(cfg.execute_steps or info["chunk_size"], info["chunk_size"]),
        "gripper": "-1 open, +1 close" + (" (inverted before env.step)" if cfg.invert_gripper else ", no inversion"),
        "instruction": "task.language",
        "success": "done returned by env.step",
    }
