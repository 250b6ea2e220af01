"""The wire protocols `worldvla.serve` speaks, one per server (`protocol=` in ServeConfig).

Each module has a `Session` class, one instance per websocket connection:
`greeting()` is sent on connect (or None), `await reply(data)` returns the frames to send back.
Sessions predict through `PolicyServer.predict`, which batches and schedules all connections.
"""

from __future__ import annotations

from . import openpi, vla_eval
from . import worldvla as worldvla_protocol

SESSIONS = {"worldvla": worldvla_protocol.Session, "openpi": openpi.Session, "vla-eval": vla_eval.Session}
PROTOCOLS = tuple(SESSIONS)


def session_class(protocol: str):
    if protocol not in SESSIONS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    return SESSIONS[protocol]
