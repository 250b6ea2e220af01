"""Camera frames on their way into the policy: size check or resize, and the per-session history.

Clients that send one observation per env step (vla-eval) leave the frame history to the server:
`FrameBuffer` keeps the last M frames of a session so a query carries (previous env step, current),
exactly what `worldvla.eval.rollout` gives the policy. Errors are one short line, never an array repr.
"""

from __future__ import annotations

from collections import deque

import numpy as np
from PIL import Image


class FrameError(ValueError):
    """A frame the policy cannot take (wrong type, shape or size)."""


def check_image(img, what: str) -> np.ndarray:
    if not isinstance(img, np.ndarray):
        raise FrameError(f"{what} must be an (H, W, 3) uint8 image, got {type(img).__name__}")
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise FrameError(f"{what} must be an (H, W, 3) uint8 image, got {img.dtype} of shape {tuple(img.shape)}")
    return img


def fit_frame(img, resolution: int, resize: bool, what: str) -> np.ndarray:
    """A (resolution, resolution, 3) uint8 frame: as sent, resized (resize=True), or a FrameError."""
    img = check_image(img, what)
    h, w = img.shape[:2]
    if (h, w) == (resolution, resolution):
        return img
    if not resize:
        raise FrameError(f"{what} is {h}x{w} px but the policy takes {resolution}x{resolution}: send "
                         f"{resolution} px frames or start the server with resize=true")
    # bicubic, as worldvla.eval.rollout resizes renders that differ from the model resolution
    return np.asarray(Image.fromarray(img).resize((resolution, resolution), Image.BICUBIC))


class FrameBuffer:
    """The last `history` frames (and wrist frames) of one session's current episode."""

    def __init__(self, history: int):
        self.history = max(1, int(history))
        self.frames: deque[np.ndarray] = deque(maxlen=self.history)
        self.wrists: deque[np.ndarray] = deque(maxlen=self.history)

    def reset(self) -> None:
        self.frames.clear()
        self.wrists.clear()

    def push(self, frame: np.ndarray, wrist: np.ndarray | None = None) -> None:
        self.frames.append(frame)
        if wrist is not None:
            self.wrists.append(wrist)

    def query(self) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
        """(frames, wrists) oldest first; wrists None when none were pushed."""
        return list(self.frames), (list(self.wrists) if self.wrists else None)


def short_error(err: BaseException, limit: int = 240) -> str:
    """`Type: first line of the message`, at most `limit` characters (no tracebacks, no array reprs)."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    line = f"{type(err).__name__}: {text}" if text else type(err).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."
