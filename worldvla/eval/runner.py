"""Main process of an evaluation: owns the policy, batches the workers' queries, writes the results.

Layout: N spawned simulator workers (worldvla.eval.worker) ask for blocks of consecutive trials of
one task (protocol.work_blocks); each sends a `Query` when it needs actions. The main loop gathers the
pending queries (until every live worker waits, or `batch_timeout_s` after the first one), makes one
`policy.predict_batch` call and sends each worker its chunk. Each episode depends only on its key and
the policy, so results do not depend on N, on the batch composition or on the shard layout.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from tqdm import tqdm

from worldvla.atomic import pid_alive
from worldvla.config import from_dict, to_dict
from worldvla.envs.libero import check_resources
from worldvla.envs.libero_pro import perturbation_record
from worldvla.errors import InputFileError
from worldvla.policy.interface import ActionChunk, decode_infos, load_policy, policy_info

from .config import EvalConfig, compile_step_for, parse_shard
from .pool import WorkerPool
from .protocol import (
    EpisodeKey,
    all_episodes,
    deviations,
    protocol_record,
    shard_episodes,
    suite_num_tasks,
    work_blocks,
)
from .results import EpisodeLog, atomic_write_json, done_keys, final_records, summarize, write_summary
from .rollout import Query, seed_everything
from .weights_hash import weights_fingerprint
from .worker import EpisodeRunner, make_env_factory

# torch is imported where used: `worldvla eval` and its LIBERO workers stay torch-free (LIGHT_MODULES in
# tests/test_layers.py).

log = logging.getLogger(__name__)

# Settings that may change between a run and its resume (they do not change any episode's result).
RESUMABLE_FIELDS = ("num_workers", "batch_timeout_s", "policy_threads", "videos", "video_fps", "video_wrist",
                    "retry_errors", "output_dir", "device", "max_batch")


class ResumeMismatch(RuntimeError):
    pass


def _remove_empty(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass  # absent or not empty (a worker's partial video of an interrupted episode)


def clean_partial_videos(folder: Path) -> None:
    """Remove the half-written `<tag>_<pid>.mp4` of episodes a killed run was recording (their process is gone)."""
    if not folder.is_dir():
        return

    stale = [f for f in folder.glob("*.mp4")
             if not ((pid := f.stem.rsplit("_", 1)[-1]).isdigit() and pid_alive(int(pid)))]
    for f in stale:
        f.unlink(missing_ok=True)
    if stale:
        log.info("removed %d partial video(s) of an interrupted run from %s", len(stale), folder)


def shard_suffix(shard: str) -> str:
    i, n = parse_shard(shard)
    return "" if n == 1 else f".shard{i}of{n}"


def default_output_dir(cfg: EvalConfig, info: dict) -> Path:
    name = Path(cfg.policy.path.rstrip("/")).name.replace(":", "_") or info["name"]
    res = cfg.resolution or info["resolution"]
    mode = "" if info["action_mode"] == "discrete" else f"_{info['action_mode']}"
    return Path("outputs") / "eval" / f"{'+'.join(cfg.suites)}_{res}_{name}{mode}"


def check_policy_inputs(cfg: EvalConfig, info: dict) -> None:
    """A preset written for a wrist/state model (RynnVLA-002) refuses a checkpoint without them, and back."""
    for key, want, have, what in (("expect_wrist", cfg.expect_wrist, info["uses_wrist"], "wrist view"),
                                  ("expect_state", cfg.expect_state, info["uses_state"], "proprio state")):
        if want is not None and want != have:
            raise ValueError(f"policy {cfg.policy.path or info['name']} {'reads' if have else 'does not read'} the {what}, "
                             f"but this configuration says {key}={str(want).lower()}")


def run_identity(run: dict) -> dict:
    """The part of run.json that must match for a resume or a merge (a run.json of before the PolicySource
    is read through EvalConfig's renamed keys, so it still resumes and merges)."""
    cfg = {k: v for k, v in current_config(run["config"]).items() if k not in RESUMABLE_FIELDS}
    return {"config": cfg, "policy": {k: v for k, v in run["policy"].items() if k != "spec"},
            "protocol": run["protocol"], "deviations": run["deviations"]}


def current_config(config: dict) -> dict:
    """A run.json `config` in today's key names (older files name the policy's fields `tokenizer`,
    `policy_settings` and `action_mode`; they are moved without a note: the file is not the user's to fix)."""
    if not isinstance(config.get("policy"), str):
        return config
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return to_dict(from_dict(EvalConfig, config, "run.json"))


def _weights(cfg: EvalConfig) -> dict | None:
    """Fingerprint of the policy checkpoint's files (eval/weights_hash.py); None for a server or a factory."""
    if not cfg.policy.path or not Path(cfg.policy.path).is_dir():
        return None

    return weights_fingerprint(Path(cfg.policy.path), cfg.policy.tokenizer)


def _read_run(path: Path) -> dict:
    """A previous run's run.json, or one line naming it (a killed copy or an edit must not print a traceback)."""
    try:
        old = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputFileError(path, f"not valid JSON ({err}); delete the output folder to start over, or use "
                                   "another output_dir") from None
    if not isinstance(old, dict):
        raise InputFileError(path, f"expected the JSON object an evaluation writes, got {type(old).__name__}")
    for key, kind in (("config", dict), ("policy", dict), ("protocol", dict), ("deviations", list)):
        if not isinstance(old.get(key), kind):
            raise InputFileError(path, f"missing or not a {kind.__name__}; the file is damaged", key)
    return old


def check_same_weights(path: Path, old: dict, new: dict) -> None:
    """Refuse to resume the run of `path` (run.json) with a policy whose files changed since it started."""
    a, b = old.get("weights"), new.get("weights")
    if a is None and b is not None:
        log.warning("%s records no weights fingerprint (written by an older worldvla): cannot check that the "
                    "policy is unchanged", path)
        return
    if a != b:
        raise ResumeMismatch(
            f"{path}: weights: the policy's files differ from those this run started with (sha256 "
            f"{str((a or {}).get('sha256'))[:12]} -> {str((b or {}).get('sha256'))[:12]}); its episodes would mix two "
            "models. Use another output_dir for the new weights, or restore the old ones to finish this run")


class Progress:
    """tqdm bar with the running success over finished episodes of this shard."""

    def __init__(self, total: int, done: list[dict], enabled: bool = True):
        self.succ = sum(r["status"] == "success" for r in done)
        self.n = len(done)
        self.err = sum(r["status"] == "error" for r in done)
        self.bar = tqdm(total=total, initial=self.n, desc="episodes", unit="ep", dynamic_ncols=True,
                        disable=not enabled, file=sys.stderr, mininterval=0.1 if sys.stderr.isatty() else 30)
        self._post()

    def _post(self) -> None:
        rate = f"{100 * self.succ / self.n:.1f}%" if self.n else "-"
        self.bar.set_postfix_str(f"success {self.succ}/{self.n} ({rate}) errors {self.err}", refresh=False)

    def update(self, rec: dict) -> None:
        self.n += 1
        self.succ += rec["status"] == "success"
        self.err += rec["status"] == "error"
        self._post()
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


class Evaluation:
    def __init__(self, cfg: EvalConfig, policy=None, progress: bool = True):
        self.cfg = cfg
        seed_everything(cfg.seed)
        if cfg.policy_threads:
            import torch

            torch.set_num_threads(cfg.policy_threads)
        if policy is None:
            policy = load_policy(cfg.policy, cfg.device, compile_step=compile_step_for(cfg.decode, cfg.device),
                                 decode=cfg.decode.mode)
        self.policy = policy
        self.info = policy_info(self.policy)
        check_policy_inputs(cfg, self.info)
        if cfg.history is not None and cfg.history < 1:
            raise ValueError(f"history must be >= 1, got {cfg.history}")
        factory = make_env_factory(cfg) if cfg.env_factory else None
        if factory is None:  # a LIBERO-PRO suite the package has no files for: refused before any episode
            for suite in cfg.suites:
                check_resources(suite)
        num_tasks = getattr(factory, "num_tasks", None) or suite_num_tasks
        self.num_tasks = {s: num_tasks(s) for s in cfg.suites}
        self.keys = shard_episodes(all_episodes(cfg, lambda s: self.num_tasks[s]), cfg.shard)
        self.out_dir = Path(cfg.output_dir or default_output_dir(cfg, self.info))
        self.suffix = shard_suffix(cfg.shard)
        self.run = {
            "config": to_dict(cfg), "policy": {**self.info, "spec": cfg.policy.path},
            "protocol": protocol_record(cfg, self.info),
            "deviations": deviations(cfg, self.info, lambda s: self.num_tasks[s]),
            "num_tasks": self.num_tasks, "shard": cfg.shard, "episodes_in_shard": len(self.keys),
            "perturbations": perturbation_record(cfg.suites),  # LIBERO-PRO suites: which perturbation
        }
        self.run["weights"] = _weights(cfg)  # checked on resume: a swapped checkpoint must not join this run
        self.progress_enabled = progress
        self.stats = {"policy_calls": 0, "policy_queries": 0, "policy_seconds": 0.0}

    # -- bookkeeping -------------------------------------------------------------------------
    def _check_resume(self) -> None:
        path = self.out_dir / f"run{self.suffix}.json"
        if path.exists():
            old = _read_run(path)
            check_same_weights(path, old, self.run)
            if run_identity(old) != run_identity(self.run):
                a, b = run_identity(old), run_identity(self.run)
                diff = sorted(k for k in set(a["config"]) | set(b["config"]) if a["config"].get(k) != b["config"].get(k))
                diff += [k for k in ("policy", "protocol", "deviations") if a[k] != b[k]]
                raise ResumeMismatch(f"{self.out_dir} holds a run with different settings ({diff}); "
                                     "use another output_dir, or delete it to start over")
        atomic_write_json(path, self.run)

    def execute(self) -> dict:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._check_resume()
        clean_partial_videos(self.out_dir / "videos" / ".tmp")
        self._add_file_log()
        if self.run["deviations"]:
            log.warning("not protocol-exact: %s", "; ".join(self.run["deviations"]))
        episodes = EpisodeLog(self.out_dir / f"episodes{self.suffix}.jsonl")
        shard_set = set(self.keys)
        done = done_keys(episodes.records(), self.cfg.retry_errors) & shard_set
        todo = [k for k in self.keys if k not in done]
        log.info("%d episodes in this shard: %d already done, %d to run (policy %s, %d workers)",
                 len(self.keys), len(done), len(todo), self.info["name"], self.cfg.num_workers)
        prev = [r for k, r in final_records(episodes.records())[0].items() if k in done]
        bar = Progress(len(self.keys), prev, enabled=self.progress_enabled)
        t0 = time.perf_counter()
        try:
            if todo:
                run = self._run_inline if self.cfg.num_workers == 0 else self._run_pool
                run(todo, lambda rec: (episodes.append(rec), bar.update(rec), self._log_episode(rec)))
        except KeyboardInterrupt:
            log.warning("interrupted: rerun the same command to finish the %d missing episodes",
                        len(self.keys) - bar.n)
            raise
        finally:
            bar.close()
            logging.getLogger("worldvla").removeHandler(self._log_handler)
            self._log_handler.close()
            _remove_empty(self.out_dir / "videos" / ".tmp")
            summary = summarize(episodes.records(), self.keys, self.run)
            summary["wall_seconds_this_invocation"] = round(time.perf_counter() - t0, 2)
            st = self.stats
            summary["policy_this_invocation"] = {
                "calls": st["policy_calls"], "queries": st["policy_queries"],
                "mean_batch": round(st["policy_queries"] / st["policy_calls"], 2) if st["policy_calls"] else None,
                "seconds": round(st["policy_seconds"], 2)}
            js, md = write_summary(self.out_dir, summary, self.suffix)
            log.info("wrote %s, %s, %s (videos under %s)", episodes.path, js, md, self.out_dir / "videos")
        return summary

    def _add_file_log(self) -> None:
        handler = logging.FileHandler(self.out_dir / f"eval{self.suffix}.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger("worldvla").addHandler(handler)
        self._log_handler = handler

    def _log_episode(self, rec: dict) -> None:
        name = f"{rec['suite']}/task{rec['task']:02d}/trial{rec['trial']:02d}"
        if rec["status"] == "error":
            log.error("%s errored (recorded as an error, not a failure; a rerun retries it):\n%s", name,
                      rec.get("traceback") or rec.get("error"))
        else:
            log.debug("%s %s in %s steps (%.1f s)", name, rec["status"], rec["steps"], rec["seconds"])

    # -- policy --------------------------------------------------------------------------------
    def predict(self, queries: list[Query]) -> list[ActionChunk]:
        wrists = [q.wrists for q in queries] if any(q.wrists is not None for q in queries) else None
        states = [q.state for q in queries] if any(q.state is not None for q in queries) else None
        t0 = time.perf_counter()
        chunks = self.policy.predict_batch([q.instruction for q in queries], [q.images for q in queries],
                                           wrists=wrists, states=states)
        self.stats["policy_calls"] += 1
        self.stats["policy_queries"] += len(queries)
        self.stats["policy_seconds"] += time.perf_counter() - t0
        if len(chunks) != len(queries):
            raise ValueError(f"predict_batch returned {len(chunks)} chunks for {len(queries)} queries")
        infos = decode_infos(self.policy, len(chunks))  # official-decode failures, grammar checks
        return [ActionChunk(np.asarray(c), d.get("failure"), d.get("grammar_violation")) for c, d in zip(chunks, infos)]

    # -- execution -----------------------------------------------------------------------------
    def _run_inline(self, todo: list[EpisodeKey], emit) -> None:
        runner = EpisodeRunner(self.cfg, self.info, self.out_dir, tag="main")
        try:
            for key in todo:
                emit(runner.run(key, lambda q: self.predict([q])[0]))
        finally:
            runner.close()

    def _run_pool(self, todo: list[EpisodeKey], emit) -> None:
        n = min(self.cfg.num_workers, len(todo))
        WorkerPool(self.cfg, self.info, self.out_dir, self.predict, emit, n).run(work_blocks(todo, n))
