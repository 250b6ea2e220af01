"""Wire format of the policy server: msgpack maps, numpy arrays as typed byte blobs.

Messages (one websocket binary frame each; `id` is echoed back):
  server -> client on connect: {"type": "hello", "version": 1, "policy": {chunk_size, history, resolution, ...},
                                "max_episodes_per_request", "max_batch", "resize"}
  {"type": "predict_batch", "id", "instructions": [str], "images": [[uint8 (R,R,3)]], "wrists": ..., "states": ...}
      -> {"type": "actions", "id", "actions": [float (K,7)],
          "decode_info": [{"failure": str | None, "grammar_violation": bool | None}]}  (K may differ from the
          chunk size, and be 0 with a failure, under decode.mode=official)
  {"type": "info"} -> hello;  {"type": "ping"} -> {"type": "pong"}
  anything malformed -> {"type": "error", "id": ..., "message": "one line"} (the connection stays open)
  frames must be the policy's resolution (or the server runs with resize=true)
Only plain numeric dtypes are accepted (no object arrays, no pickle).
"""

from __future__ import annotations

import msgpack
import numpy as np

VERSION = 1
ND_TAG = "__ndarray__"
ALLOWED_DTYPES = {"|u1", "|i1", "<u2", "<i2", "<i4", "<u4", "<i8", "<f2", "<f4", "<f8", "|b1"}


class WireError(ValueError):
    """A message that does not follow the wire format."""


def _default(obj):
    if isinstance(obj, np.ndarray):
        arr = np.ascontiguousarray(obj)
        dtype = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
        arr = arr.astype(dtype, copy=False)
        if arr.dtype.str not in ALLOWED_DTYPES:
            raise WireError(f"cannot send arrays of dtype {arr.dtype}")
        return {ND_TAG: True, "dtype": arr.dtype.str, "shape": list(arr.shape), "data": arr.tobytes()}
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot serialise {type(obj).__name__}")


def _object_hook(d: dict):
    if ND_TAG not in d:
        return d
    try:
        dtype, shape, data = d["dtype"], d["shape"], d["data"]
    except KeyError as err:
        raise WireError(f"array without {err}") from None
    if dtype not in ALLOWED_DTYPES:
        raise WireError(f"array dtype {dtype!r} not allowed")
    if not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape) or not isinstance(data, bytes):
        raise WireError("array shape must be a list of non-negative ints and data bytes")
    dt = np.dtype(dtype)
    if int(np.prod(shape, dtype=np.int64)) * dt.itemsize != len(data):
        raise WireError(f"array of shape {shape} and dtype {dtype} needs a different number of bytes than {len(data)}")
    return np.frombuffer(data, dtype=dt).reshape(shape)


def pack(message: dict) -> bytes:
    return msgpack.packb(message, default=_default, use_bin_type=True)


def unpack_binary(data, object_hook, error: type[Exception], show_reason: bool = False):
    """msgpack-decode a binary websocket frame; text frames and garbage raise `error` in one line (shared
    by every protocol: each passes its own array hook and error class)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise error("expected a binary frame with a msgpack map, got text")
    try:
        return msgpack.unpackb(bytes(data), object_hook=object_hook, raw=False, strict_map_key=True)
    except error:
        raise
    except Exception as err:  # noqa: BLE001 - msgpack raises many types on garbage
        reason = f"{type(err).__name__}: {err}" if show_reason else type(err).__name__
        raise error(f"not a msgpack message ({reason})") from None


def unpack(data) -> dict:
    msg = unpack_binary(data, _object_hook, WireError, show_reason=True)
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise WireError("a message must be a map with a string 'type'")
    return msg


def peek_request(data) -> tuple[int | str | None, int | None]:
    """(id, number of instructions) of a msgpack map, read from its headers without building the frames:
    values are skipped, never decoded, so a huge request can be refused by its count first. (None, None)
    for anything that is not such a map (the full decode then names the problem)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        return None, None
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=max(len(data), 1))
    unpacker.feed(data)
    msg_id = count = None
    try:
        for _ in range(unpacker.read_map_header()):
            key = unpacker.unpack()  # keys are short strings in this protocol
            if key == "instructions":
                count = unpacker.read_array_header()
                for _ in range(count):
                    unpacker.skip()
            elif key == "id":
                value = unpacker.unpack()
                msg_id = value if isinstance(value, (int, str)) and not isinstance(value, bool) else None
            else:
                unpacker.skip()
    except Exception:  # noqa: BLE001 - malformed: the full decode reports it
        return msg_id, count
    return msg_id, count


def _image_list(value, what: str, n: int) -> list[list[np.ndarray]]:
    if not isinstance(value, list) or len(value) != n:
        raise WireError(f"{what} must be a list of {n} lists of images")
    for i, frames in enumerate(value):
        if not isinstance(frames, list) or not frames:
            raise WireError(f"{what}[{i}] must be a non-empty list of images")
        for im in frames:
            if not isinstance(im, np.ndarray) or im.dtype != np.uint8 or im.ndim != 3 or im.shape[2] != 3:
                raise WireError(f"{what}[{i}] must hold (H, W, 3) uint8 arrays")
    return value


def parse_predict(msg: dict) -> tuple[list[str], list, list | None, list | None]:
    """Validate a predict_batch request; returns (instructions, images, wrists, states)."""
    texts = msg.get("instructions")
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise WireError("instructions must be a non-empty list of strings")
    n = len(texts)
    images = _image_list(msg.get("images"), "images", n)
    wrists = msg.get("wrists")
    if wrists is not None:
        wrists = _image_list(wrists, "wrists", n)
    states = msg.get("states")
    if states is not None and (not isinstance(states, list) or len(states) != n or not all(
            isinstance(s, np.ndarray) and s.ndim == 1 and s.dtype.kind == "f" for s in states)):
        raise WireError(f"states must be a list of {n} 1-D float arrays")
    return texts, images, wrists, states
