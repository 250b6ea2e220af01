"""Websocket + msgpack server around a policy, so the simulator can live in another environment.

    python -m worldvla.serve policy=CKPT_DIR [host=127.0.0.1] [port=8000] [device=cuda]

Requests from all connections are queued; one batcher takes everything queued at that moment (up to
`max_batch` episodes), makes one `predict_batch` call in a worker thread (the event loop keeps
serving), and answers each request. A malformed message gets an error reply; it never stops the
server. Localhost by default: there is no authentication, bind to another address only on a trusted
network.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import traceback
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from worldvla.eval.config import DecodeConfig
from worldvla.eval.interface import ActionChunk, as_chunk, decode_infos, policy_info

from . import wire

log = logging.getLogger(__name__)


@dataclass
class ServeConfig:
    policy: str = field(default="", metadata={"help": "checkpoint dir or module:factory"})
    device: str = field(default="cpu", metadata={"help": "torch device of the policy"})
    action_mode: str | None = field(default=None, metadata={"help": "discrete | continuous; None = the checkpoint's"})
    tokenizer: str | None = field(default=None, metadata={"help": "tokenizer folder for a checkpoint without tokenizer/ (official release)"})
    policy_settings: dict = field(default_factory=dict, metadata={"help": "worldvla.json values for a checkpoint without one, e.g. {chunk_size: 10}"})
    decode: DecodeConfig = field(default_factory=DecodeConfig, metadata={"help": "decode.mode / decode.compile"})
    host: str = field(default="127.0.0.1", metadata={"help": "bind address (localhost: no authentication)"})
    port: int = field(default=8000, metadata={"help": "TCP port (0 = any free port)"})
    max_batch: int = field(default=64, metadata={"help": "most episodes per policy call"})
    max_message_mb: float = field(default=256.0, metadata={"help": "largest accepted message"})
    seed: int = field(default=7, metadata={"help": "torch/numpy seed (protocol: 7)"})


@dataclass
class _Request:
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


class PolicyServer:
    def __init__(self, policy, host: str = "127.0.0.1", port: int = 8000, max_batch: int = 64,
                 max_message_bytes: int = 256 << 20):
        self.policy = policy
        self.info = policy_info(policy)
        self.host, self.port = host, port
        self.max_batch = max_batch
        self.max_message_bytes = max_message_bytes
        self.calls = 0
        self._pending: deque[_Request] = deque()
        self._wake: asyncio.Event | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    # -- connection handling ----------------------------------------------------------------
    def _hello(self) -> bytes:
        return wire.pack({"type": "hello", "version": wire.VERSION, "policy": self.info})

    async def _handle(self, ws) -> None:
        peer = getattr(ws, "remote_address", None)
        log.info("client connected: %s", peer)
        await ws.send(self._hello())
        try:
            async for data in ws:
                await ws.send(await self._reply(data))
        except Exception as err:  # noqa: BLE001 - a broken connection ends only itself
            log.info("connection %s closed: %s", peer, type(err).__name__)
        log.info("client disconnected: %s", peer)

    async def _reply(self, data) -> bytes:
        msg_id = None
        try:
            msg = wire.unpack(data)
            msg_id = msg.get("id")
            kind = msg["type"]
            if kind == "ping":
                return wire.pack({"type": "pong", "id": msg_id})
            if kind == "info":
                return self._hello()
            if kind != "predict_batch":
                raise wire.WireError(f"unknown message type {kind!r} (predict_batch, info, ping)")
            texts, images, wrists, states = wire.parse_predict(msg)
            fut = asyncio.get_running_loop().create_future()
            self._pending.append(_Request(texts, images, wrists, states, fut))
            self._wake.set()
            actions, infos = await fut
            return wire.pack({"type": "actions", "id": msg_id, "actions": actions, "decode_info": infos})
        except Exception as err:  # noqa: BLE001 - every failure becomes an error reply
            if not isinstance(err, wire.WireError):
                log.error("request failed:\n%s", traceback.format_exc())
            return wire.pack({"type": "error", "id": msg_id if isinstance(msg_id, (int, str)) else None,
                              "message": f"{type(err).__name__}: {err}"})

    # -- batching -----------------------------------------------------------------------------
    def _predict(self, batch: list[_Request]) -> list[tuple[list[np.ndarray], list[dict]]]:
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

    def _take_batch(self) -> list[_Request]:
        """Everything queued now, up to max_batch episodes (a larger single request goes alone)."""
        batch = [self._pending.popleft()]
        n = len(batch[0].texts)
        while self._pending and n + len(self._pending[0].texts) <= self.max_batch:
            batch.append(self._pending.popleft())
            n += len(batch[-1].texts)
        return batch

    async def _batcher(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch = self._take_batch()
                try:
                    results = await loop.run_in_executor(None, self._predict, batch)
                    self.calls += 1
                    for r, res in zip(batch, results):
                        if not r.future.done():
                            r.future.set_result(res)
                except Exception as err:  # noqa: BLE001 - fail these requests, keep serving
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
        async with serve(self._handle, self.host, self.port, max_size=self.max_message_bytes,
                         compression=None, ping_interval=20, ping_timeout=120) as server:
            self.port = server.sockets[0].getsockname()[1]
            if self.host not in ("127.0.0.1", "localhost", "::1"):
                log.warning("serving on %s without authentication: only on a trusted network", self.host)
            log.info("policy %s (chunk %d, history %d, %d px, %s actions, decode %s) at ws://%s:%d", self.info["name"],
                     self.info["chunk_size"], self.info["history"], self.info["resolution"], self.info["action_mode"],
                     self.info["decode_mode"], self.host, self.port)
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
