"""Websocket server around a policy, so the simulator can live in another environment.

    python -m worldvla.serve policy=CKPT_DIR [protocol=worldvla|openpi|vla-eval] [host=127.0.0.1] [port=8000]

It speaks one protocol (serve/protocols/): worldvla's own (policy/wire.py, the default), openpi's
(openpi-client's WebsocketClientPolicy) or vla-eval's (allenai's vla-evaluation-harness); `GET /health`
answers 200 for all. Requests from all connections are queued per connection; one batcher takes them
round robin (one request slice per connection in turn, up to `max_batch` episodes), makes one
`predict_batch` call in a worker thread (the event loop keeps serving), and answers each request, so
one large request cannot stall the others. A malformed message gets a one-line error reply; it never
stops the server. A client that disconnects has its queued work cancelled (a policy call already
running finishes, its answer is dropped); a connection that sends nothing for `idle_timeout_s` is
closed, so idle clients cannot hold every `max_connections` slot. Localhost by default, browser
origins refused, a connection cap: there is no authentication, bind to another address only on a
trusted network.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
from collections import deque
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import ClassVar, Literal

import numpy as np

from worldvla.config import check_literals
from worldvla.policy.decode import DecodeConfig
from worldvla.policy.interface import ActionChunk, PolicySource, as_chunk, decode_infos, policy_info

from .protocols import PROTOCOLS, session_class

WireProtocol = Literal[PROTOCOLS]  # the sessions of serve/protocols: the choices are that table's keys
# websockets (the serve extra) is imported where the server starts.

log = logging.getLogger(__name__)

IDLE_TIMEOUT_S = 300.0  # an evaluation client queries every few seconds; 5 minutes of silence is a client gone
IDLE_CLOSE_CODE = 1008  # policy violation: the server's idle limit


@dataclass
class ServeConfig:
    # the keys serve had before the PolicySource (as eval's: worldvla.eval.config.POLICY_RENAMED)
    renamed: ClassVar[dict[str, str]] = {"tokenizer": "policy.tokenizer", "policy_settings": "policy.recipe",
                                         "action_mode": "policy.recipe.action_mode"}
    policy: PolicySource = field(default_factory=PolicySource, metadata={"help": "policy.path (or policy=...): checkpoint dir or module:factory; policy.tokenizer, policy.recipe: as in eval"})
    device: str = field(default="cpu", metadata={"help": "torch device of the policy"})
    decode: DecodeConfig = field(default_factory=DecodeConfig, metadata={"help": "decode.mode / decode.compile"})
    protocol: WireProtocol = field(default="worldvla", metadata={"help": "the wire protocol (docs/serving.md)"})
    resize: bool = field(default=False, metadata={"help": "resize frames of another size to the policy resolution (bicubic) instead of refusing them"})
    host: str = field(default="127.0.0.1", metadata={"help": "bind address (localhost: no authentication)"})
    port: int = field(default=8000, metadata={"help": "TCP port (0 = any free port)"})
    max_batch: int = field(default=64, metadata={"help": "most episodes per policy call"})
    max_episodes_per_request: int = field(default=256, metadata={"help": "larger requests are refused (the worldvla client splits them)"})
    max_connections: int = field(default=32, metadata={"help": "more simultaneous connections are refused (HTTP 503)"})
    idle_timeout_s: float = field(default=IDLE_TIMEOUT_S, metadata={"help": "close a connection that sends no message for this long (frees its slot)"})
    allowed_origins: list[str] = field(default_factory=list, metadata={"help": "browser Origin values accepted, e.g. [http://localhost:3000]; [] = refuse every browser origin"})
    max_message_mb: float = field(default=256.0, metadata={"help": "largest accepted message"})
    seed: int = field(default=7, metadata={"help": "torch/numpy seed (protocol: 7)"})

    def __post_init__(self) -> None:
        self.policy = PolicySource.of(self.policy)
        check_literals(self)  # built in Python: the loader's check did not run
        for name in ("max_batch", "max_episodes_per_request", "max_connections"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if not float(self.idle_timeout_s) > 0:
            raise ValueError(f"idle_timeout_s must be > 0 seconds, got {self.idle_timeout_s!r}")
        if not all(isinstance(o, str) and o for o in self.allowed_origins):
            raise ValueError(f"allowed_origins must be a list of origins like http://localhost:3000, "
                             f"got {self.allowed_origins!r}")


class RequestError(ValueError):
    """A request the server refuses by its limits (answered with an error, not logged as a failure)."""


@dataclass
class _Work:
    """One slice (at most max_batch episodes) of one request."""
    conn_id: int
    texts: list
    images: list
    wrists: list | None
    states: list | None
    future: asyncio.Future


def _as_sent(chunk, info: dict | None = None) -> np.ndarray:
    """Validated (K, 7) actions in the policy's own float dtype (no float32 rounding on the way); no
    actions at all only with an official-decode failure in `info`."""
    arr = np.asarray(chunk)
    as_chunk(ActionChunk(arr, (info or {}).get("failure")))
    return arr.reshape(-1, 7).astype(arr.dtype if arr.dtype in (np.float32, np.float64) else np.float64)


def _part(values, sl: slice):
    return None if values is None else values[sl]


class PolicyServer:
    def __init__(self, policy, host: str = "127.0.0.1", port: int = 8000, max_batch: int = 64,
                 max_message_bytes: int = 256 << 20, *, protocol: str = "worldvla", resize: bool = False,
                 max_episodes_per_request: int = 256, max_connections: int = 32,
                 allowed_origins: tuple[str, ...] | list[str] = (), idle_timeout_s: float = IDLE_TIMEOUT_S):
        self.policy = policy
        self.info = policy_info(policy)
        self.host, self.port = host, port
        self.max_batch = max_batch
        self.max_message_bytes = max_message_bytes
        self.protocol = protocol
        self.session_class = session_class(protocol)
        self.resize = resize
        self.max_episodes_per_request = max_episodes_per_request
        self.max_connections = max_connections
        self.allowed_origins = tuple(allowed_origins)
        self.idle_timeout_s = float(idle_timeout_s)
        self.calls = 0
        self._queues: dict[int, deque[_Work]] = {}  # per connection, FIFO
        self._turns: deque[int] = deque()  # connections with queued work, in round-robin order
        self._sessions: dict[int, object] = {}
        self._conn_ids = itertools.count(1)
        self._wake: asyncio.Event | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    @classmethod
    def from_config(cls, policy, cfg: ServeConfig) -> PolicyServer:
        return cls(policy, cfg.host, cfg.port, cfg.max_batch, int(cfg.max_message_mb * (1 << 20)),
                   protocol=cfg.protocol, resize=cfg.resize, max_episodes_per_request=cfg.max_episodes_per_request,
                   max_connections=cfg.max_connections, allowed_origins=cfg.allowed_origins,
                   idle_timeout_s=cfg.idle_timeout_s)

    def limits(self) -> dict:
        """What every protocol's greeting tells the client about this server."""
        return {"max_episodes_per_request": self.max_episodes_per_request, "max_batch": self.max_batch,
                "resize": self.resize}

    @staticmethod
    def is_request_error(err: BaseException) -> bool:
        return isinstance(err, RequestError)

    # -- connection handling ----------------------------------------------------------------
    async def _handle(self, ws) -> None:
        peer = getattr(ws, "remote_address", None)
        if len(self._sessions) >= self.max_connections:  # process_request refuses most; this closes races
            await ws.close(1013, f"too many connections (max_connections={self.max_connections})")
            return
        conn_id = next(self._conn_ids)
        session = self.session_class(self, conn_id)
        self._sessions[conn_id] = session
        log.info("client %d connected (%s): %s", conn_id, self.protocol, peer)
        try:
            greeting = session.greeting()
            if greeting is not None:
                await ws.send(greeting)
            while (data := await self._next_message(ws, conn_id)) is not None:
                replies = await self._reply_unless_gone(ws, session, data)
                if replies is None:
                    log.info("client %d left during a request: its queued work is cancelled", conn_id)
                    break
                for reply in replies:
                    await ws.send(reply)
        except Exception as err:  # noqa: BLE001 - a broken connection ends only itself
            log.info("connection %d closed: %s", conn_id, type(err).__name__)
        finally:
            self._sessions.pop(conn_id, None)
            for work in self._queues.pop(conn_id, ()):
                work.future.cancel()
            if conn_id in self._turns:
                self._turns.remove(conn_id)
        log.info("client %d disconnected: %s", conn_id, peer)

    async def _next_message(self, ws, conn_id: int):
        """The next message, or None once the client closed or stayed silent for `idle_timeout_s` (then the
        connection is closed: an idle client must not keep a `max_connections` slot)."""
        from websockets.exceptions import ConnectionClosed

        try:
            return await asyncio.wait_for(ws.recv(), self.idle_timeout_s)
        except asyncio.TimeoutError:
            log.info("client %d idle for %g s: closing it (idle_timeout_s)", conn_id, self.idle_timeout_s)
            await ws.close(IDLE_CLOSE_CODE, f"idle for {self.idle_timeout_s:g} s (idle_timeout_s)")
            return None
        except ConnectionClosed:
            return None

    @staticmethod
    async def _reply_unless_gone(ws, session, data) -> list | None:
        """The session's replies to `data`, or None if the client disconnected first: the request is then
        cancelled, which cancels its queued slices (the batcher skips cancelled work)."""
        task = asyncio.ensure_future(session.reply(data))
        gone = asyncio.ensure_future(ws.wait_closed())  # resolves on close even while nobody reads
        try:
            await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return None

    def _process_request(self, connection, request):
        """HTTP before the websocket handshake: GET /health, and the connection cap."""
        path = request.path.split("?", 1)[0]
        if path in ("/health", "/healthz"):
            return connection.respond(HTTPStatus.OK, "ok\n")
        if len(self._sessions) >= self.max_connections:
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE,
                                      f"too many connections (max_connections={self.max_connections})\n")
        return None

    # -- scheduling and batching -------------------------------------------------------------
    async def predict(self, conn_id: int, texts, images, wrists=None, states=None) -> list[np.ndarray]:
        """Queue one request of `conn_id` (in slices of max_batch episodes) and await its chunks."""
        chunks, _ = await self.predict_with_info(conn_id, texts, images, wrists, states)
        return chunks

    async def predict_with_info(self, conn_id: int, texts, images, wrists=None, states=None
                                ) -> tuple[list[np.ndarray], list[dict]]:
        """`predict`, plus the policy's decode info per episode ({"failure", "grammar_violation"})."""
        self.check_episode_count(len(texts))
        n = len(texts)
        loop = asyncio.get_running_loop()
        queue = self._queues.setdefault(conn_id, deque())
        futures = []
        for start in range(0, n, self.max_batch):
            sl = slice(start, start + self.max_batch)
            work = _Work(conn_id, texts[sl], images[sl], _part(wrists, sl), _part(states, sl), loop.create_future())
            queue.append(work)
            futures.append(work.future)
        if conn_id not in self._turns:
            self._turns.append(conn_id)
        self._wake.set()
        parts = await asyncio.gather(*futures)
        return [c for chunks, _ in parts for c in chunks], [d for _, infos in parts for d in infos]

    def check_episode_count(self, n: int) -> None:
        """RequestError for a request of more than `max_episodes_per_request` episodes (protocols call it
        before decoding a request's frames, when they can read the count first)."""
        if n > self.max_episodes_per_request:
            raise RequestError(f"{n} episodes in one request; this server takes at most "
                               f"{self.max_episodes_per_request} (max_episodes_per_request)")

    def pending_episodes(self) -> int:
        return sum(len(w.texts) for q in self._queues.values() for w in q)

    def _take_batch(self) -> list[_Work]:
        """Round robin over the connections: the head slice of each in turn, up to max_batch episodes."""
        batch, n = [], 0
        while self._turns:
            conn_id = self._turns[0]
            queue = self._queues[conn_id]
            if batch and n + len(queue[0].texts) > self.max_batch:
                break
            self._turns.popleft()
            work = queue.popleft()
            batch.append(work)
            n += len(work.texts)
            if queue:
                self._turns.append(conn_id)
            else:
                del self._queues[conn_id]
        return batch

    def _predict(self, batch: list[_Work]) -> list[tuple[list[np.ndarray], list[dict]]]:
        texts = [t for r in batch for t in r.texts]
        images = [im for r in batch for im in r.images]
        has_w = any(r.wrists is not None for r in batch)
        has_s = any(r.states is not None for r in batch)
        wrists = [w for r in batch for w in (r.wrists or [None] * len(r.texts))] if has_w else None
        states = [s for r in batch for s in (r.states or [None] * len(r.texts))] if has_s else None
        chunks = self.policy.predict_batch(texts, images, wrists=wrists, states=states)
        if len(chunks) != len(texts):
            raise ValueError(f"policy returned {len(chunks)} chunks for {len(texts)} queries")
        infos = [{"failure": d.get("failure"), "grammar_violation": d.get("grammar_violation")}
                 for d in decode_infos(self.policy, len(chunks))]
        chunks = [_as_sent(c, d) for c, d in zip(chunks, infos)]
        out, i = [], 0
        for r in batch:
            out.append((chunks[i: i + len(r.texts)], infos[i: i + len(r.texts)]))
            i += len(r.texts)
        return out

    async def _batcher(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._turns:
                batch = [w for w in self._take_batch() if not w.future.done()]
                if not batch:
                    continue
                try:
                    results = await loop.run_in_executor(None, self._predict, batch)
                    self.calls += 1
                    for r, res in zip(batch, results):
                        if not r.future.done():
                            r.future.set_result(res)
                except Exception as err:  # noqa: BLE001 - fail these requests, keep serving
                    log.exception("policy call failed")
                    for r in batch:
                        if not r.future.done():
                            r.future.set_exception(err)

    # -- lifecycle ------------------------------------------------------------------------------
    async def serve(self) -> None:
        from websockets.asyncio.server import serve

        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        batcher = asyncio.create_task(self._batcher())
        # origins: None admits clients that send no Origin header (every non-browser client); a browser
        # page always sends one, so only the listed origins get through
        async with serve(self._handle, self.host, self.port, max_size=self.max_message_bytes,
                         compression=None, ping_interval=20, ping_timeout=120,
                         origins=[None, *self.allowed_origins], process_request=self._process_request) as server:
            self.port = server.sockets[0].getsockname()[1]
            if self.host not in ("127.0.0.1", "localhost", "::1"):
                log.warning("serving on %s without authentication: only on a trusted network", self.host)
            log.info("policy %s (chunk %d, history %d, %d px, %s actions, decode %s) at ws://%s:%d, protocol %s",
                     self.info["name"], self.info["chunk_size"], self.info["history"], self.info["resolution"],
                     self.info["action_mode"], self.info["decode_mode"], self.host, self.port, self.protocol)
            self._ready.set()
            await self._stop.wait()
        batcher.cancel()

    def start_in_thread(self, timeout: float = 30.0) -> str:
        """Serve from a daemon thread (tests, notebooks); returns the ws:// URL."""
        thread = threading.Thread(target=lambda: asyncio.run(self.serve()), name="policy-server", daemon=True)
        thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"policy server did not start within {timeout} s")
        self._thread = thread
        return self.url

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if getattr(self, "_thread", None) is not None:
            self._thread.join(timeout=10)

