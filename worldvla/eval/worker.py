"""Simulator side of the evaluation: runs episodes against a `predict(query)` callable.

`EpisodeRunner` owns one env at a time (episodes arrive grouped by task, so an env is built once per
task and worker), the episode videos, and turns every episode into one record. `worker_main` is the
body of a worker process: it asks the main process for blocks of episode keys, sends each `Query` to it
on its own pipe (the main process batches the queries of all workers into one policy call) and waits
for the chunk on its own inbox.
Nothing here imports torch.
"""

from __future__ import annotations

import logging
import os
import queue
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np

from worldvla.envs.libero import LiberoEnv, configure_libero, load_compiler_before_gl
from worldvla.policy.interface import import_object

from .config import EvalConfig
from .protocol import EpisodeKey
from .rng_chain import ChainedEnv, ResetRngChain
from .rollout import Query, RolloutOptions, episode_record, run_episode, seed_everything
from .video import EpisodeVideo, video_path

log = logging.getLogger(__name__)

POLL_S = 1.0  # how often a waiting worker checks that its parent is still alive


class PolicyError(RuntimeError):
    """The policy failed on this episode's query (reported by the main process)."""


def make_env_factory(cfg: EvalConfig) -> Callable:
    if cfg.env_factory:
        return import_object(cfg.env_factory)

    return LiberoEnv


class EpisodeRunner:
    def __init__(self, cfg: EvalConfig, info: dict, out_dir: Path, tag: str = "main"):
        self.cfg = cfg
        self.info = info
        self.out_dir = Path(out_dir)
        self.tag = tag
        self.factory = make_env_factory(cfg)
        self.env = None
        self.env_key: tuple[str, int] | None = None
        self.chains: dict[tuple[str, int], ResetRngChain] = {}
        self.wrist_video = info["uses_wrist"] if cfg.video_wrist is None else cfg.video_wrist

    def _env_for(self, key: EpisodeKey):
        if self.env_key != (key.suite, key.task):
            self.close()
            load_compiler_before_gl()
            t0 = time.perf_counter()
            res = self.cfg.resolution or self.info["resolution"]
            env = self.factory(key.suite, key.task, resolution=res, env_seed=self.cfg.env_seed)
            chain = self.chains.get((key.suite, key.task))
            if chain is None:
                cache = self.out_dir / "rng_chain" / key.suite / f"task{key.task:02d}_envseed{self.cfg.env_seed}"
                chain = self.chains[(key.suite, key.task)] = ResetRngChain(self.cfg.env_seed, cache)
            self.env = ChainedEnv(env, chain)
            self.env_key = (key.suite, key.task)
            log.debug("[%s] built env %s task %d in %.1f s", self.tag, key.suite, key.task, time.perf_counter() - t0)
        return self.env

    def run(self, key: EpisodeKey, predict: Callable[[Query], np.ndarray]) -> dict:
        recorder = None
        if self.cfg.videos != "none":
            tmp = self.out_dir / "videos" / ".tmp" / f"{self.tag}_{os.getpid()}.mp4"
            recorder = EpisodeVideo(tmp, fps=self.cfg.video_fps, wrist=self.wrist_video)
        try:
            env = self._env_for(key)
        except Exception as err:  # noqa: BLE001 - a broken env fails its episodes, not the run
            self.close()
            return episode_record(key, "", False, None, 0.0, error=f"env creation failed: {type(err).__name__}: {err}",
                                  traceback=traceback.format_exc(), worker=self.tag)
        opts = RolloutOptions.build(self.cfg, self.info, key.suite)
        rec = run_episode(env, key, opts, predict, recorder)
        rec["worker"] = self.tag
        if rec["status"] == "error":
            self.close()  # the env may be in a broken state: rebuild it for the next episode
        if recorder is not None:
            keep = self.cfg.videos == "all" or rec["status"] != "success"
            try:
                path = recorder.finish(keep, video_path(self.out_dir / "videos", key, rec["status"]))
                rec["video"] = str(path.relative_to(self.out_dir)) if path else None
            except Exception as err:  # noqa: BLE001 - a video problem must not lose the episode's result
                log.warning("video of %s not written: %s", key.name, err)
                rec["video"] = None
        return rec

    def close(self) -> None:
        if self.env is not None:
            try:
                self.env.close()
            except Exception as err:  # noqa: BLE001 - closing a broken env must not fail the run
                log.debug("env close failed: %s", err)
        self.env, self.env_key = None, None


def _get(q, parent: int):
    """Blocking get that gives up when the parent process has died (no orphaned workers)."""
    while True:
        try:
            return q.get(timeout=POLL_S)
        except queue.Empty:
            if os.getppid() != parent:
                raise SystemExit(f"parent process {parent} is gone")


def worker_main(wid: int, cfg: EvalConfig, info: dict, out_dir: str, outbox, inbox) -> None:
    """Process body. Asks the main process for a block of episodes ("next"), runs it, repeats until
    told to stop; sends ("query", wid, Query) and waits for ("chunk", actions) or ("error", text).
    `outbox` is this worker's own write end of a one-way pipe to the main process."""
    parent = os.getppid()
    # One software-rendering thread per worker (Mesa llvmpipe; ignored by GPU EGL): llvmpipe's own
    # threads bought a single worker nothing (221 vs 215 ms/step) and made N workers fight over the
    # cores (2 workers on 2 cores: 0.95x -> 1.76x episodes/s, benchmarks/README.md). Set
    # LP_NUM_THREADS yourself to override.
    os.environ.setdefault("LP_NUM_THREADS", "1")
    logging.basicConfig(level=logging.INFO, format=f"[worker {wid}] %(levelname)s %(message)s")
    seed_everything(cfg.seed)
    if not cfg.env_factory:
        configure_libero()
    runner = EpisodeRunner(cfg, info, Path(out_dir), tag=f"w{wid}")

    def predict(query: Query) -> np.ndarray:
        outbox.send(("query", wid, query))
        kind, payload = _get(inbox, parent)
        if kind == "error":
            raise PolicyError(payload)
        return payload

    try:
        while True:
            outbox.send(("next", wid, None))
            kind, block = _get(inbox, parent)
            if kind != "block":
                break
            for item in block:  # consecutive trials of one task: the env and its RNG chain carry over
                outbox.send(("start", wid, item))
                outbox.send(("done", wid, runner.run(EpisodeKey(*item), predict)))
    finally:
        runner.close()
        outbox.send(("exit", wid, None))
