"""N simulator worker processes driven by the main process, which owns the policy.

Each worker sends on its own one-way pipe (a worker that dies mid-message then breaks only its own
pipe; one shared queue let it leave the queue's write lock held and stall every other worker). Messages
are (kind, worker id, payload): "next" (asks for a block of episodes), "start" / "done" (an episode
began / its record), "query" (a `Query` waiting for actions), "exit". After draining the pipes, the
pending queries are answered once every live worker waits or `batch_timeout_s` has passed since the
first one: one `predict` call for up to `max_batch` of them (0 = all), oldest first (in the order they
were drained: by worker id within one drain), so N waiting workers cost one batched prefill and decode,
not N. A call that raises is repeated per query, so only the episodes whose own query fails get an
error. A worker that dies is replaced; its running episode is recorded as an error and the rest of its
block is handed out again.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import pickle
import time
import traceback
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from pathlib import Path

from .config import EvalConfig
from .protocol import EpisodeKey
from .rollout import Query, episode_record
from .worker import worker_main

log = logging.getLogger(__name__)

HEALTH_CHECK_S = 1.0  # how often dead workers are looked for


class WorkerPool:
    def __init__(self, cfg: EvalConfig, info: dict, out_dir: Path, predict: Callable[[list[Query]], list],
                 emit: Callable[[dict], None], num_workers: int):
        self.cfg, self.info, self.out_dir = cfg, info, Path(out_dir)
        self.predict, self.emit, self.n = predict, emit, num_workers
        self.ctx = mp.get_context("spawn")  # fresh interpreters: safe with torch, EGL and MuJoCo
        self.outboxes: dict[int, Connection] = {}  # the read end of each worker's pipe to the main process
        self.inboxes: list = [None] * num_workers
        self.procs: dict[int, mp.Process] = {}
        self.work: deque[list[tuple]] = deque()
        self.remaining: dict[int, list[tuple]] = {}  # unfinished episodes of each worker's block
        self.current: dict[int, tuple] = {}  # the episode each worker has started
        self.pending: dict[int, Query] = {}
        self.first_pending = 0.0
        self.respawns = 0

    def _spawn(self, wid: int) -> None:
        self.inboxes[wid] = self.ctx.Queue()  # a fresh inbox: no stale reply for a replacement worker
        if wid in self.outboxes:  # a replacement: its predecessor's pipe is done with
            self.outboxes[wid].close()
        reader, writer = self.ctx.Pipe(duplex=False)
        p = self.ctx.Process(target=worker_main, name=f"eval-worker-{wid}", daemon=True,
                             args=(wid, self.cfg, self.info, str(self.out_dir), writer, self.inboxes[wid]))
        p.start()
        writer.close()  # the worker holds the only write end, so its death reads as end of file
        self.procs[wid] = p
        self.outboxes[wid] = reader

    def run(self, blocks: list[list[EpisodeKey]]) -> None:
        self.work = deque([(k.suite, k.task, k.trial) for k in b] for b in blocks)
        for wid in range(self.n):
            self._spawn(wid)
        self.live = set(range(self.n))
        last_check = time.perf_counter()
        try:
            while self.live:
                for msg in self._receive():
                    self._handle(*msg)
                if self.pending and (len(self.pending) >= len(self.live)
                                     or time.perf_counter() >= self.first_pending + self.cfg.batch_timeout_s):
                    self._answer()
                if time.perf_counter() - last_check > HEALTH_CHECK_S:
                    self._replace_dead()
                    last_check = time.perf_counter()
        finally:
            for p in self.procs.values():
                if p.is_alive():
                    p.terminate()
                p.join(timeout=10)
            for conn in self.outboxes.values():
                conn.close()

    def _receive(self) -> list[tuple]:
        """Wait for the first message (bounded by the batch deadline), then drain every pipe."""
        timeout = HEALTH_CHECK_S
        if self.pending:
            timeout = max(0.0, self.first_pending + self.cfg.batch_timeout_s - time.perf_counter())
        open_ends = [self.outboxes[w] for w in self.live if not self.outboxes[w].closed]
        if open_ends:
            wait(open_ends, timeout)
        else:  # every live worker's pipe has closed: the health check replaces them
            time.sleep(timeout)
        return [msg for w in sorted(self.live) for msg in self._drain(w)]

    def _drain(self, wid: int) -> list[tuple]:
        """What worker `wid` has sent so far. A broken pipe (the worker died, perhaps mid-message) is
        closed here; the health check then replaces the worker."""
        conn, msgs = self.outboxes[wid], []
        try:
            while not conn.closed and conn.poll():
                msgs.append(conn.recv())
        except (EOFError, OSError, pickle.UnpicklingError):
            conn.close()
        return msgs

    def _handle(self, kind: str, wid: int, payload) -> None:
        if kind == "query":
            if not self.pending:
                self.first_pending = time.perf_counter()
            self.pending[wid] = payload
        elif kind == "next":
            block = self.work.popleft() if self.work else []
            self.remaining[wid] = list(block)
            self.inboxes[wid].put(("block", block) if block else ("stop", None))
        elif kind == "start":
            self.current[wid] = tuple(payload)
        elif kind == "done":
            key = (payload["suite"], payload["task"], payload["trial"])
            self.remaining[wid] = [k for k in self.remaining.get(wid, []) if tuple(k) != key]
            self.current.pop(wid, None)
            self.emit(payload)
        elif kind == "exit":
            self.live.discard(wid)
            self.procs[wid].join(timeout=30)

    def _answer(self) -> None:
        """Answer every pending query, `max_batch` (0 = all) per predict call, oldest first."""
        order = list(self.pending)  # insertion order: the order the queries were drained
        size = self.cfg.max_batch or len(order)
        for i in range(0, len(order), size):
            self._answer_batch(order[i : i + size])
        self.pending = {}

    def _answer_batch(self, wids: list[int]) -> None:
        try:
            chunks = self.predict([self.pending[w] for w in wids])
            replies = [("chunk", c) for c in chunks]
        except Exception as err:  # noqa: BLE001 - fail these episodes, keep the run going
            if len(wids) > 1:  # ask each query alone: one bad query must not fail the others' episodes
                log.warning("policy failed on a batch of %d queries (%s: %s); answering them one by one",
                            len(wids), type(err).__name__, err)
                for w in wids:
                    self._answer_batch([w])
                return
            log.error("policy failed on a query:\n%s", traceback.format_exc())
            replies = [("error", f"policy error: {type(err).__name__}: {err}")]
        for w, reply in zip(wids, replies):
            self.inboxes[w].put(reply)

    def _replace_dead(self) -> None:
        for wid in [w for w in self.live if self.procs[w].exitcode is not None]:
            for msg in self._drain(wid):  # what it sent before it ended, "done" or "exit" included
                self._handle(*msg)
            if wid not in self.live:  # it said "exit": it ended normally
                continue
            code = self.procs[wid].exitcode
            self.respawns += 1
            self.pending.pop(wid, None)
            lost = [tuple(k) for k in self.remaining.pop(wid, [])]
            started = self.current.pop(wid, None)
            log.error("worker %d died (exit code %s) during %s; starting a new one", wid, code, started)
            if started in lost:
                self.emit(episode_record(EpisodeKey(*started), "", False, None, 0.0,
                                         error=f"simulator worker died (exit code {code})", worker=f"w{wid}"))
            rest = [k for k in lost if k != started]
            if rest:
                self.work.appendleft(rest)  # the rest of its block goes to the next free worker
            if self.respawns > 3 * self.n:
                raise RuntimeError("simulator workers keep dying; see the log above")
            self._spawn(wid)
