"""The wire protocols `worldvla.serve` speaks, one per server (`protocol=` in ServeConfig).

Each module has a `Session` class, one instance per websocket connection:
`greeting()` is sent on connect (or None), `await reply(data)` returns the frames to send back.
Sessions predict through `PolicyServer.predict`, which batches and schedules all connections.
"""

from __future__ import annotations

PROTOCOLS = ("worldvla", "openpi", "vla-eval")


def session_class(protocol: str):
    if protocol == "worldvla":
        from .worldvla import Session
    elif protocol == "openpi":
        from .openpi import Session
    elif protocol == "vla-eval":
        from .vla_eval import Session
    else:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    return Session
