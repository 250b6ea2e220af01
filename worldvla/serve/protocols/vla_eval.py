"""vla-eval's protocol, as the client of allenai's vla-evaluation-harness speaks it (vla-eval 0.8.0).

- Every message is a msgpack map {type, payload, seq, timestamp}; arrays are {"__ndarray__", data,
  dtype, shape} maps, camera images {"__image__", format: png | jpeg | raw, data, shape}.
- The client opens with HELLO (answered with HELLO: the policy, its limits, `observation_params`
  that switch the benchmark's wrist view and state on when the policy uses them and ask for the
  unflipped quaternion -> axis-angle of the state (`quat_no_antipodal`), `deviations`), then
  per episode EPISODE_START, one OBSERVATION -> ACTION per env step, EPISODE_END. Nothing else is
  answered, except a failure: ERROR {"error": one line}, and the connection stays open.
- An ACTION carries one env step `{"actions": (7,)}`: the server keeps the session's chunk and
  executes it open loop (a new chunk every K steps, as the LIBERO protocol does), and its frame
  buffer gives each query the last M frames, i.e. (previous env step, current).
- LIBERO observations: images["agentview"] (and images["wrist"]), already rotated 180 degrees,
  `task_description`, `states` (8-D: eef pos, axis-angle, gripper qpos).
"""

from __future__ import annotations

import io
import logging
import time
from collections import deque

import numpy as np
from PIL import Image

from worldvla.policy import wire

from ..frames import FrameBuffer, FrameError, fit_frame, short_error

log = logging.getLogger(__name__)

HELLO, OBSERVATION, ACTION = "hello", "observation", "action"
EPISODE_START, EPISODE_END, ERROR = "episode_start", "episode_end", "error"
TYPES = (HELLO, OBSERVATION, ACTION, EPISODE_START, EPISODE_END, ERROR)
PROTOCOL_VERSION = 1
MAX_IMAGE_PIXELS = 4096 * 4096  # a tiny PNG can declare a huge image: refuse before decoding it


class VlaEvalError(ValueError):
    """A message that does not follow vla-eval's format."""


def _decode_image(d: dict) -> np.ndarray:
    fmt, data, shape = d.get("format"), d.get("data"), d.get("shape")
    if not isinstance(data, bytes) or not isinstance(shape, list) or len(shape) != 3:
        raise VlaEvalError("an __image__ needs bytes data and a 3-element shape")
    if fmt == "raw":
        return wire._object_hook({wire.ND_TAG: True, "dtype": d.get("dtype"), "shape": shape, "data": data})
    if fmt not in ("png", "jpeg"):
        raise VlaEvalError(f"__image__ format {fmt!r} not supported (png, jpeg, raw)")
    try:
        im = Image.open(io.BytesIO(data))
        if im.width * im.height > MAX_IMAGE_PIXELS:
            raise VlaEvalError(f"__image__ of {im.width}x{im.height} px is too large")
        arr = np.asarray(im.convert("RGB") if im.mode not in ("RGB", "L", "RGBA") else im)
    except VlaEvalError:
        raise
    except Exception as err:  # noqa: BLE001 - PIL raises many types on corrupt data
        raise VlaEvalError(f"__image__ is not a valid {fmt} ({type(err).__name__})") from None
    if list(arr.shape) != shape:
        raise VlaEvalError(f"__image__ decodes to shape {list(arr.shape)}, its header says {shape}")
    return arr


def _object_hook(d: dict):
    if "__image__" in d:
        return _decode_image(d)
    try:
        return wire._object_hook(d)
    except wire.WireError as err:
        raise VlaEvalError(str(err)) from None


def unpack(data) -> dict:
    msg = wire.unpack_binary(data, _object_hook, VlaEvalError)
    if not isinstance(msg, dict):
        raise VlaEvalError("a message must be a msgpack map")
    missing = [k for k in ("type", "payload", "seq", "timestamp") if k not in msg]
    if missing:
        raise VlaEvalError(f"message missing required fields: {missing}")
    if msg["type"] not in TYPES:
        raise VlaEvalError(f"unknown message type {msg['type']!r} ({', '.join(TYPES)})")
    if not isinstance(msg["payload"], dict) or not isinstance(msg["seq"], int):
        raise VlaEvalError("payload must be a map and seq an integer")
    return msg


def pack(kind: str, payload: dict, seq: int) -> bytes:
    return wire.pack({"type": kind, "payload": payload, "seq": seq, "timestamp": time.time()})


class Session:
    def __init__(self, server, conn_id: int):
        self.server, self.conn_id = server, conn_id
        self.buffer = FrameBuffer(server.info["history"])
        self.plan: deque[np.ndarray] = deque()
        self.steps = 0

    def greeting(self) -> None:
        return None  # the client speaks first (HELLO)

    def _reset(self) -> None:
        self.buffer.reset()
        self.plan.clear()
        self.steps = 0

    def observation_params(self) -> dict:
        """What the benchmark sends (vla-eval's orchestrator passes these to its constructor unless the eval
        config sets them). `quat_no_antipodal`: the state's axis-angle as robosuite computes it, unflipped,
        the convention worldvla's data and the official checkpoints use (docs/libero_protocol.md); vla-eval's
        LIBERO default flips the quaternion to w >= 0 first, and the state token then saturates."""
        info = self.server.info
        return {"send_wrist_image": info["uses_wrist"], "send_state": info["uses_state"], "quat_no_antipodal": True}

    def hello(self) -> dict:
        info = self.server.info
        return {"protocol_version": PROTOCOL_VERSION, "model_server": "worldvla", "capabilities": {},
                "policy": info, "observation_params": self.observation_params(),
                "deviations": [], **self.server.limits()}

    async def reply(self, data) -> list[bytes]:
        seq = 0
        try:
            msg = unpack(data)
            seq, kind, payload = msg["seq"], msg["type"], msg["payload"]
            if kind == HELLO:
                log.info("vla-eval session %d: client %s", self.conn_id, payload.get("harness_version"))
                return [pack(HELLO, self.hello(), seq)]
            if kind in (EPISODE_START, EPISODE_END):
                self._reset()
                return []
            if kind == ERROR:
                log.warning("vla-eval session %d: client error %s", self.conn_id, str(payload)[:200])
                return []
            if kind != OBSERVATION:
                raise VlaEvalError(f"a client does not send {kind!r}")
            return [pack(ACTION, {"actions": await self._act(payload)}, seq)]
        except Exception as err:  # noqa: BLE001 - every failure becomes an ERROR reply
            if not isinstance(err, (VlaEvalError, FrameError)) and not self.server.is_request_error(err):
                log.exception("vla-eval request failed")
            return [pack(ERROR, {"error": short_error(err)}, seq)]

    async def _act(self, obs: dict) -> np.ndarray:
        info, res, resize = self.server.info, self.server.info["resolution"], self.server.resize
        images = obs.get("images")
        if not isinstance(images, dict) or not images:
            raise VlaEvalError("observation needs an 'images' map (e.g. images.agentview)")
        if "agentview" in images:
            main = "agentview"
        elif len(images) == 1:
            (main,) = images
        else:
            raise VlaEvalError(f"observation images {sorted(images)}: which is the main view? send 'agentview'")
        text = obs.get("task_description")
        if not isinstance(text, str) or not text:
            raise VlaEvalError("observation needs a non-empty string 'task_description'")
        frame = fit_frame(images[main], res, resize, f"images.{main}")
        wrist = None
        if info["uses_wrist"]:
            if "wrist" not in images:
                raise VlaEvalError("this policy uses the wrist view: send images.wrist (send_wrist_image=true)")
            wrist = fit_frame(images["wrist"], res, resize, "images.wrist")
        state = None
        if info["uses_state"]:
            state = obs.get("states")
            if not isinstance(state, np.ndarray) or state.ndim != 1 or state.dtype.kind != "f":
                raise VlaEvalError("this policy uses the proprio state: send 'states' (send_state=true)")
            state = state.astype(np.float32)
        self.buffer.push(frame, wrist)
        self.steps += 1
        if not self.plan:
            frames, wrists = self.buffer.query()
            (chunk,) = await self.server.predict(self.conn_id, [text], [frames], None if wrists is None else [wrists],
                                                 None if state is None else [state])
            self.plan.extend(np.asarray(chunk))
        return self.plan.popleft()
