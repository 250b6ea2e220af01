"""One LIBERO episode, exactly as the protocol runs it, written as a generator.

`episode()` yields a `Query` whenever it needs actions and receives the policy's (K, 7) chunk back,
so the same loop runs in-process (`run_episode`) and in a simulator worker that asks a batching
policy in another process (worldvla.eval.worker). Protocol (libero_protocol.md, official_format.md §9):
reset + init state + `wait_steps` dummy actions (not counted), then up to `max_steps` policy steps;
images rotated 180 degrees; a query carries the last M frames of the per-env-step history (only the
current frame at the first query); every action of a chunk is executed open loop (a chunk may hold
another number of actions than K: official decoding executes every parsed block); the gripper sign is
passed through unchanged; success = `done` from env.step. A chunk that carries a failure (official
decoding: the official loop's exception) ends the episode as a failure, with its reason, once its
actions have run.
"""

from __future__ import annotations

import hashlib
import time
import traceback
from collections.abc import Callable, Generator
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from worldvla.envs.libero import Observation, format_obs, proprio_state
from worldvla.policy.interface import as_chunk
from worldvla.policy.seeding import seed_everything  # re-exported for worker / runner

from .protocol import EpisodeKey, suite_max_steps


@dataclass
class Query:
    """What the policy sees at one decision point (frames oldest first, the current frame last)."""

    instruction: str
    images: list[np.ndarray]  # M x (R, R, 3) uint8
    wrists: list[np.ndarray] | None = None  # same length as images, when the policy uses the wrist view
    state: np.ndarray | None = None  # (8,) float64, when the policy uses the proprio state


@dataclass
class RolloutOptions:
    max_steps: int
    wait_steps: int = 10
    history: int = 2
    execute_steps: int | None = None  # None = the whole chunk
    rotate180: bool = True
    invert_gripper: bool = False
    model_resolution: int | None = None  # resize frames to this if the render differs
    send_wrist: bool = False
    send_state: bool = False
    seed: int = 7

    @classmethod
    def build(cls, cfg, info: dict, suite: str) -> RolloutOptions:
        return cls(
            max_steps=suite_max_steps(cfg, suite), wait_steps=cfg.wait_steps,
            history=cfg.history or info["history"], execute_steps=cfg.execute_steps,
            rotate180=cfg.rotate180, invert_gripper=cfg.invert_gripper, model_resolution=info["resolution"],
            send_wrist=info["uses_wrist"], send_state=info["uses_state"], seed=cfg.seed,
        )


@dataclass
class Outcome:
    success: bool
    steps: int  # policy steps executed (wait steps excluded)
    queries: int
    sim_seconds: float  # env.step calls (rendering included)
    reset_seconds: float  # reset, init state and wait steps
    fingerprint: str  # sha1 of the executed actions and the final state: equal runs give equal hashes
    actions: list[list[float]] = field(default_factory=list, repr=False)
    failure_reason: str | None = None  # the policy's chunk ended the episode (official decoding)
    grammar_violations: int | None = None  # chunks whose free argmax left the action grammar (None: not reported)
    grammar_checked: int = 0  # chunks for which the policy reported it


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    if image.shape[0] == size and image.shape[1] == size:
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC))


def observe(obs: dict, opts: RolloutOptions) -> Observation:
    """Raw env observation -> (rotated, resized) camera frames and the 8-D state."""
    if opts.rotate180:
        o = format_obs(obs)
    else:
        o = Observation(np.ascontiguousarray(obs["agentview_image"]),
                        np.ascontiguousarray(obs["robot0_eye_in_hand_image"]), proprio_state(obs))
    if opts.model_resolution:
        o = Observation(_resize(o.agentview, opts.model_resolution), _resize(o.wrist, opts.model_resolution), o.state)
    return o


def episode(env, key: EpisodeKey, opts: RolloutOptions, recorder=None) -> Generator[Query, np.ndarray, Outcome]:
    """The protocol loop for one (task, trial); `env` is a `LiberoEnv` (or anything shaped like it)."""
    seed_everything(opts.seed)
    sim = 0.0
    t0 = time.perf_counter()
    raw = env.reset(key.trial, wait_steps=opts.wait_steps)
    reset_s = time.perf_counter() - t0
    o = observe(raw, opts)
    frames, wrists = [o.agentview], [o.wrist]
    if recorder is not None:
        recorder.add(o.agentview, o.wrist)
    executed: list[np.ndarray] = []
    steps = queries = violations = checked = 0
    success = False
    failure = None
    while steps < opts.max_steps and not success and failure is None:
        m = max(1, opts.history)
        query = Query(env.language, frames[-m:], wrists[-m:] if opts.send_wrist else None,
                      o.state if opts.send_state else None)
        reply = as_chunk((yield query))
        chunk = reply.actions
        queries += 1
        if reply.grammar_violation is not None:
            checked += 1
            violations += bool(reply.grammar_violation)
        n_exec = len(chunk) if opts.execute_steps is None else min(opts.execute_steps, len(chunk))
        for action in chunk[:n_exec]:
            action = action.copy()
            if opts.invert_gripper:
                action[6] = -action[6]
            t0 = time.perf_counter()
            raw, _, done, _ = env.step(action)
            sim += time.perf_counter() - t0
            steps += 1
            executed.append(action)
            o = observe(raw, opts)
            frames.append(o.agentview)
            wrists.append(o.wrist)
            del frames[: -max(1, opts.history)], wrists[: -max(1, opts.history)]  # keep only what queries use
            if recorder is not None:
                recorder.add(o.agentview, o.wrist)
            if done:
                success = True
                break
            if steps >= opts.max_steps:
                break
        if reply.failure is not None and not success and steps < opts.max_steps and n_exec == len(chunk):
            failure = reply.failure  # reached: the official loop raises here and ends the episode
    acts = np.asarray(executed, dtype=np.float64).reshape(-1, 7)
    digest = hashlib.sha1(acts.tobytes() + np.asarray(o.state, dtype=np.float32).tobytes()).hexdigest()
    return Outcome(success, steps, queries, sim, reset_s, digest, acts.tolist(), failure,
                   violations if checked else None, checked)


def run_episode(env, key: EpisodeKey, opts: RolloutOptions, predict: Callable[[Query], np.ndarray],
                recorder=None) -> dict:
    """Drive `episode` with `predict(query) -> chunk`; never raises for an episode's own error."""
    t_start = time.perf_counter()
    policy_s = 0.0
    gen = episode(env, key, opts, recorder)
    try:
        query = next(gen)
        while True:
            t0 = time.perf_counter()
            chunk = predict(query)
            policy_s += time.perf_counter() - t0
            query = gen.send(chunk)
    except StopIteration as stop:
        out: Outcome = stop.value
        return episode_record(key, env_language(env), out.success, out.steps, time.perf_counter() - t_start,
                              sim_seconds=out.sim_seconds, reset_seconds=out.reset_seconds,
                              policy_seconds=policy_s, queries=out.queries,
                              fingerprint=out.fingerprint, failure_reason=out.failure_reason,
                              grammar_violations=out.grammar_violations)
    except Exception as err:  # noqa: BLE001 - one broken episode must not stop the run
        gen.close()
        return episode_record(key, env_language(env), False, None, time.perf_counter() - t_start,
                              error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc(),
                              policy_seconds=policy_s)


def env_language(env) -> str:
    return str(getattr(env, "language", ""))


def episode_record(key: EpisodeKey, instruction: str, success: bool, steps: int | None, seconds: float,
                   error: str | None = None, **extra) -> dict:
    """One JSON line of episodes.jsonl; `status` is success | failure | error (errors are not failures)."""
    status = "error" if error else ("success" if success else "failure")
    rec = {"suite": key.suite, "task": key.task, "trial": key.trial, "instruction": instruction,
           "status": status, "success": bool(success) and not error, "steps": steps,
           "seconds": round(seconds, 3), "error": error}
    for k, v in extra.items():
        rec[k] = round(v, 4) if isinstance(v, float) else v
    return rec
