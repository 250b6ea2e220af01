"""Client of `worldvla.serve`: a policy object whose `predict_batch` runs on a remote server.

    policy = RemotePolicy("ws://127.0.0.1:8000")   # chunk_size, history, resolution from the server
    chunks = policy.predict_batch(["put the bowl on the plate"], [[frame]])

The evaluation uses it for policy=ws://... so the simulator process never imports the model.
"""

from __future__ import annotations

import inspect
import itertools
import logging
import time

import numpy as np

from . import wire
# websockets (the serve extra) is imported where a connection opens.

log = logging.getLogger(__name__)


class RemotePolicyError(RuntimeError):
    """The server answered with an error (its message is included)."""


class RemotePolicy:
    def __init__(self, url: str, timeout_s: float = 600.0, connect_timeout_s: float = 30.0,
                 max_message_bytes: int = 256 << 20):
        self.url = url
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.max_message_bytes = max_message_bytes
        self._ids = itertools.count()
        self._ws = None
        self._connect()

    def _connect(self) -> None:
        from websockets.sync.client import connect

        deadline = time.monotonic() + self.connect_timeout_s
        while True:
            try:
                self._ws = _open(connect, self.url, max_size=self.max_message_bytes, compression=None,
                                 open_timeout=self.connect_timeout_s, ping_interval=20, ping_timeout=120)
                break
            except OSError as err:
                if time.monotonic() > deadline:
                    raise ConnectionError(f"no policy server at {self.url} ({err}); start one with "
                                          "`python -m worldvla.serve policy=CKPT_DIR`") from None
                time.sleep(0.5)
        hello = wire.unpack(self._ws.recv(timeout=self.connect_timeout_s))
        if hello.get("type") != "hello" or hello.get("version") != wire.VERSION:
            raise RemotePolicyError(f"{self.url} is not a worldvla policy server (got {hello.get('type')!r})")
        info = hello["policy"]
        self.info = info
        self.max_episodes_per_request = hello.get("max_episodes_per_request")  # None: a server without a cap
        self.name = f"remote:{info.get('name', '?')}"
        self.chunk_size = int(info["chunk_size"])
        self.history = int(info["history"])
        self.resolution = int(info["resolution"])
        self.uses_wrist = bool(info.get("uses_wrist", False))
        self.uses_state = bool(info.get("uses_state", False))
        self.action_mode = str(info.get("action_mode", "discrete"))
        self.decode_mode = info.get("decode_mode")
        self.last_decode_info: list[dict] = []

    def _call(self, message: dict) -> dict:
        msg_id = next(self._ids)
        message = {**message, "id": msg_id}
        for attempt in range(2):  # one reconnect if the connection dropped between calls
            try:
                self._ws.send(wire.pack(message))
                reply = wire.unpack(self._ws.recv(timeout=self.timeout_s))
                break
            except (ConnectionError, OSError, EOFError, _closed_error()) as err:
                if attempt:
                    raise ConnectionError(f"lost the policy server at {self.url}: {err}") from None
                log.warning("policy server connection lost (%s); reconnecting", err)
                self._connect()
        if reply.get("type") == "error":
            raise RemotePolicyError(f"server error: {reply.get('message')}")
        if reply.get("id") != msg_id:
            raise RemotePolicyError(f"reply id {reply.get('id')} does not match request {msg_id}")
        return reply

    def predict_batch(self, instructions, images_per_episode, wrists=None, states=None) -> list[np.ndarray]:
        cap = int(self.max_episodes_per_request or len(instructions) or 1)
        if len(instructions) > cap:  # the server refuses larger requests: send them in parts
            chunks, infos = [], []
            for s in range(0, len(instructions), cap):
                chunks += self.predict_batch(
                    instructions[s: s + cap], images_per_episode[s: s + cap],
                    None if wrists is None else wrists[s: s + cap], None if states is None else states[s: s + cap])
                infos += self.last_decode_info
            self.last_decode_info = infos
            return chunks
        msg = {"type": "predict_batch", "instructions": list(instructions),
               "images": [[np.asarray(im, dtype=np.uint8) for im in ims] for ims in images_per_episode],
               "wrists": None if wrists is None else [[np.asarray(w, dtype=np.uint8) for w in ws] for ws in wrists],
               "states": None if states is None else [np.asarray(s, dtype=np.float64) for s in states]}
        reply = self._call(msg)
        actions = [np.array(a) for a in reply["actions"]]
        infos = reply.get("decode_info")
        self.last_decode_info = list(infos) if isinstance(infos, list) and len(infos) == len(actions) else \
            [{} for _ in actions]
        return actions

    def predict(self, instruction, images, wrist=None, state=None) -> np.ndarray:
        return self.predict_batch([instruction], [images], None if wrist is None else [wrist],
                                  None if state is None else [state])[0]

    def ping(self) -> float:
        t0 = time.perf_counter()
        self._call({"type": "ping"})
        return time.perf_counter() - t0

    def close(self) -> None:
        if self._ws is not None:
            self._ws.close()
            self._ws = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _open(connect, url: str, **kwargs):
    """websockets >= 15 would use a system proxy and warns without legacy=True; older ones lack both."""
    params = inspect.signature(connect).parameters
    extra = {k: v for k, v in (("proxy", None), ("legacy", True)) if k in params}
    return connect(url, **extra, **kwargs)


def _closed_error():
    from websockets.exceptions import ConnectionClosed

    return ConnectionClosed
