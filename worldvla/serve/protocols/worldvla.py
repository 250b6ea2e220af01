"""worldvla's own protocol (policy/wire.py): batched predict_batch requests; the client sends the history."""

from __future__ import annotations

import logging

from worldvla.policy import wire

from ..frames import FrameError, fit_frame, short_error

log = logging.getLogger(__name__)


class Session:
    def __init__(self, server, conn_id: int):
        self.server, self.conn_id = server, conn_id

    def greeting(self) -> bytes:
        return wire.pack({"type": "hello", "version": wire.VERSION, "policy": self.server.info,
                          **self.server.limits()})

    async def reply(self, data) -> list[bytes]:
        msg_id = None
        try:
            msg_id, count = wire.peek_request(data)
            if count is not None:  # refused by its count before its frames are decoded
                self.server.check_episode_count(count)
            msg = wire.unpack(data)
            msg_id = msg.get("id")
            kind = msg["type"]
            if kind == "ping":
                return [wire.pack({"type": "pong", "id": msg_id})]
            if kind == "info":
                return [self.greeting()]
            if kind != "predict_batch":
                raise wire.WireError(f"unknown message type {kind!r} (predict_batch, info, ping)")
            texts, images, wrists, states = wire.parse_predict(msg)
            images = self._fit(images, "images")
            wrists = None if wrists is None else self._fit(wrists, "wrists")
            actions, infos = await self.server.predict_with_info(self.conn_id, texts, images, wrists, states)
            return [wire.pack({"type": "actions", "id": msg_id, "actions": actions, "decode_info": infos})]
        except Exception as err:  # noqa: BLE001 - every failure becomes an error reply
            if not isinstance(err, (wire.WireError, FrameError)) and not self.server.is_request_error(err):
                log.exception("request failed")
            return [wire.pack({"type": "error", "id": msg_id if isinstance(msg_id, (int, str)) else None,
                               "message": short_error(err)})]

    def _fit(self, per_episode: list, what: str) -> list:
        res, resize = self.server.info["resolution"], self.server.resize
        return [[fit_frame(im, res, resize, f"{what}[{i}][{j}]") for j, im in enumerate(frames)]
                for i, frames in enumerate(per_episode)]
