"""Policies without a model, for protocol tests, smoke runs and the evaluation benchmark.

- `SequencePolicy`: replays a fixed (T, 7) action sequence chunk by chunk (one episode at a time) and
  keeps every query it received, so a test can compare against stepping the env by hand.
- `HashPolicy`: a deterministic function of the observation (hash of the newest frame, the
  instruction and the state), like a greedy model: batching cannot change its answers. Optional
  `delay_s` per call and `per_item_s` per query imitate a model's compute cost.
Use from the CLI as policy=worldvla.eval.scripted:hash_policy.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence

import numpy as np


class SequencePolicy:
    name = "sequence"

    def __init__(self, actions: np.ndarray, chunk_size: int = 5, history: int = 2, resolution: int = 256,
                 uses_wrist: bool = False, uses_state: bool = False):
        self.actions = np.asarray(actions, dtype=np.float64).reshape(-1, 7)
        self.chunk_size, self.history, self.resolution = chunk_size, history, resolution
        self.uses_wrist, self.uses_state = uses_wrist, uses_state
        self.cursor = 0
        self.queries: list[dict] = []

    def reset(self) -> None:
        self.cursor = 0
        self.queries = []

    def predict_batch(self, instructions, images_per_episode, wrists=None, states=None) -> list[np.ndarray]:
        out = []
        for i, (text, images) in enumerate(zip(instructions, images_per_episode)):
            self.queries.append({"instruction": text, "images": [np.array(im) for im in images],
                                 "wrists": None if wrists is None else [np.array(w) for w in wrists[i]],
                                 "state": None if states is None else np.array(states[i])})
            chunk = self.actions[self.cursor: self.cursor + self.chunk_size]
            if len(chunk) == 0:
                raise IndexError(f"SequencePolicy ran out of actions after {self.cursor}")
            self.cursor += len(chunk)
            out.append(chunk.copy())
        return out


class HashPolicy:
    name = "hash"

    def __init__(self, chunk_size: int = 5, history: int = 2, resolution: int = 256, scale: float = 0.5,
                 delay_s: float = 0.0, per_item_s: float = 0.0, uses_wrist: bool = False, uses_state: bool = False):
        self.chunk_size, self.history, self.resolution = chunk_size, history, resolution
        self.scale, self.delay_s, self.per_item_s = scale, delay_s, per_item_s
        self.uses_wrist, self.uses_state = uses_wrist, uses_state
        self.calls = 0
        self.batch_sizes: list[int] = []

    def _one(self, text: str, images: Sequence[np.ndarray], wrists, state) -> np.ndarray:
        h = hashlib.sha1(text.encode())
        h.update(np.ascontiguousarray(images[-1]).tobytes())
        h.update(str(len(images)).encode())
        if wrists is not None:
            h.update(np.ascontiguousarray(wrists[-1]).tobytes())
        if state is not None:
            h.update(np.asarray(state, dtype=np.float32).tobytes())
        rng = np.random.default_rng(int.from_bytes(h.digest()[:8], "little"))
        chunk = rng.uniform(-self.scale, self.scale, size=(self.chunk_size, 7))
        chunk[:, 6] = np.where(rng.random(self.chunk_size) < 0.5, -1.0, 1.0)
        return chunk

    def predict_batch(self, instructions, images_per_episode, wrists=None, states=None) -> list[np.ndarray]:
        self.calls += 1
        self.batch_sizes.append(len(instructions))
        if self.delay_s or self.per_item_s:
            time.sleep(self.delay_s + self.per_item_s * len(instructions))
        return [self._one(t, ims, None if wrists is None else wrists[i], None if states is None else states[i])
                for i, (t, ims) in enumerate(zip(instructions, images_per_episode))]

    def predict(self, instruction, images, wrist=None, state=None) -> np.ndarray:
        return self.predict_batch([instruction], [images], None if wrist is None else [wrist],
                                  None if state is None else [state])[0]


def hash_policy() -> HashPolicy:
    """CLI factory (policy=worldvla.eval.scripted:hash_policy): 5-action chunks, 2 frames, 256 px."""
    return HashPolicy()
