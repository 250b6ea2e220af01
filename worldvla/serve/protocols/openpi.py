"""openpi's protocol, as openpi-client's `WebsocketClientPolicy` speaks it (openpi-client 0.1.2).

- On connect the server sends a metadata map; the client keeps it (`get_server_metadata()`).
- Each binary frame is one observation -> one reply `{"actions": (K, 7)}`; a failure is a text frame
  (the client raises it as "Error in inference server"), and the connection stays open.
- Arrays are msgpack maps with *bytes* keys: {b"__ndarray__": True, b"data", b"dtype", b"shape"}
  (numpy scalars: b"__npgeneric__"). Only plain numeric dtypes are accepted.
- Observation keys of openpi's LIBERO example: `observation/image` (agent view, already rotated 180
  degrees), `observation/wrist_image`, `observation/state` (8-D), `prompt`.

openpi sends an observation only when it needs a new chunk, so the frame of the previous env step
never reaches the server: a query carries the current frame only. That deviation from the 2-frame
history is logged once per session and listed under `deviations` in the metadata.
"""

from __future__ import annotations

import logging
import time

import msgpack
import numpy as np

from worldvla.policy import wire

from ..frames import FrameError, fit_frame, short_error

log = logging.getLogger(__name__)

IMAGE, WRIST, STATE, PROMPT = "observation/image", "observation/wrist_image", "observation/state", "prompt"
_ND, _NG = b"__ndarray__", b"__npgeneric__"


class OpenpiError(ValueError):
    """An observation that does not follow openpi's format."""


def _object_hook(d: dict):
    if _ND in d:
        try:
            dtype, shape, data = d[b"dtype"], d[b"shape"], d[b"data"]
        except KeyError as err:
            raise OpenpiError(f"array without {err.args[0]!r}") from None
        if dtype not in wire.ALLOWED_DTYPES:
            raise OpenpiError(f"array dtype {dtype!r} not allowed")
        if not isinstance(shape, (list, tuple)) or not all(isinstance(s, int) and s >= 0 for s in shape) \
                or not isinstance(data, bytes):
            raise OpenpiError("array shape must be a list of non-negative ints and data bytes")
        dt = np.dtype(dtype)
        if int(np.prod(shape, dtype=np.int64)) * dt.itemsize != len(data):
            raise OpenpiError(f"array of shape {list(shape)} and dtype {dtype} needs a different number of bytes "
                              f"than {len(data)}")
        return np.frombuffer(data, dtype=dt).reshape(shape)
    if _NG in d:
        dtype, value = d.get(b"dtype"), d.get(b"data")
        if dtype not in wire.ALLOWED_DTYPES or not isinstance(value, (int, float, bool)):
            raise OpenpiError(f"numpy scalar of dtype {dtype!r} not allowed")
        return np.dtype(dtype).type(value)
    return d


def unpack(data) -> dict:
    msg = wire.unpack_binary(data, _object_hook, OpenpiError)
    if not isinstance(msg, dict):
        raise OpenpiError("an observation must be a msgpack map")
    return msg


def _default(obj):
    if isinstance(obj, np.ndarray):
        arr = np.ascontiguousarray(obj)
        return {_ND: True, b"data": arr.tobytes(), b"dtype": arr.dtype.str, b"shape": list(arr.shape)}
    if isinstance(obj, np.generic):
        return {_NG: True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot serialise {type(obj).__name__}")


def pack(obj) -> bytes:
    return msgpack.packb(obj, default=_default, use_bin_type=True)


def deviations(info: dict) -> list[str]:
    if info["history"] <= 1:
        return []
    return [(f"openpi sends an observation only when it needs a new chunk, so the previous env step's frame never "
             f"reaches the server: each query carries the current frame only (history 1, not {info['history']})")]


class Session:
    def __init__(self, server, conn_id: int):
        self.server, self.conn_id = server, conn_id
        self.deviations = deviations(server.info)
        self._logged = False

    def greeting(self) -> bytes:
        info = self.server.info
        keys = {"image": IMAGE, "prompt": PROMPT}
        if info["uses_wrist"]:
            keys["wrist_image"] = WRIST
        if info["uses_state"]:
            keys["state"] = STATE
        return pack({"protocol": "openpi", "server": "worldvla", "policy": info, "observation_keys": keys,
                     "action_shape": [info["chunk_size"], 7], "deviations": self.deviations,
                     **self.server.limits()})

    async def reply(self, data) -> list:
        try:
            texts, images, wrists, states = self._parse(unpack(data))
            if self.deviations and not self._logged:
                log.warning("openpi session %d: %s", self.conn_id, self.deviations[0])
                self._logged = True
            t0 = time.perf_counter()
            (chunk,) = await self.server.predict(self.conn_id, texts, images, wrists, states)
            return [pack({"actions": chunk, "server_timing": {"infer_ms": 1000 * (time.perf_counter() - t0)}})]
        except Exception as err:  # noqa: BLE001 - a text frame is openpi's error reply
            if not isinstance(err, (OpenpiError, FrameError)) and not self.server.is_request_error(err):
                log.exception("openpi request failed")
            return [short_error(err)]

    def _parse(self, obs: dict):
        info, res, resize = self.server.info, self.server.info["resolution"], self.server.resize
        prompt = obs.get(PROMPT)
        if not isinstance(prompt, str) or not prompt:
            raise OpenpiError(f"observation needs a non-empty string {PROMPT!r} (keys sent: {sorted(map(str, obs))})")
        if IMAGE not in obs:
            raise OpenpiError(f"observation needs {IMAGE!r} (keys sent: {sorted(map(str, obs))})")
        image = fit_frame(obs[IMAGE], res, resize, IMAGE)
        wrists = states = None
        if info["uses_wrist"]:
            if WRIST not in obs:
                raise OpenpiError(f"this policy uses the wrist view: send {WRIST!r}")
            wrists = [[fit_frame(obs[WRIST], res, resize, WRIST)]]
        if info["uses_state"]:
            state = obs.get(STATE)
            if not isinstance(state, np.ndarray) or state.ndim != 1 or state.dtype.kind != "f":
                raise OpenpiError(f"this policy uses the proprio state: send {STATE!r} as a 1-D float array")
            states = [state.astype(np.float32)]
        return [prompt], [[image]], wrists, states
