"""A toy stand-in for `LiberoEnv` (env_factory=worldvla.eval.fake_env:FakeEnv) for fast tests of the
evaluation machinery: same constructor, `reset(episode, wait_steps)`, `step`, observation keys.

A point moves by 0.05 * action[:3] per step; the episode succeeds when it comes within 0.15 of a goal
that depends on (task, trial) and, like LIBERO's fixtures, on the global numpy RNG at reset. Frames are drawn from the point's position (raw images are the
180-degree rotation of the upright drawing, like LIBERO's). Environment variables (inherited by
worker processes): WORLDVLA_FAKE_STEP_S sleeps per step; WORLDVLA_FAKE_RAISE="task:trial" raises
inside the first step of that episode; WORLDVLA_FAKE_CRASH="task:trial" kills the process there, and
"task:trial:mid-message" first leaves half a message on every pipe the process writes to, like a worker
killed while it sends to the main process.
"""

from __future__ import annotations

import gc
import os
import struct
import time
from multiprocessing.connection import Connection

import numpy as np

NUM_TASKS = 3


def _write_half_a_message() -> None:
    """On every write-only pipe end of this process: the length header of a 1 MiB message and its first
    byte, never the rest (what a reader sees from a writer killed mid-send)."""
    for obj in gc.get_objects():
        if isinstance(obj, Connection) and not obj.closed and obj.writable and not obj.readable:
            os.write(obj.fileno(), struct.pack("!i", 1 << 20) + b"\x80")


class FakeEnv:
    def __init__(self, suite: str, task_id: int, resolution: int = 256, env_seed: int = 0):
        self.suite_name, self.task_id, self.resolution = suite, task_id, resolution
        self.language = f"fake task {task_id} of {suite}"
        self.max_steps = 50
        self.step_s = float(os.environ.get("WORLDVLA_FAKE_STEP_S", "0"))
        self.raise_at = os.environ.get("WORLDVLA_FAKE_RAISE", "")
        self.crash_at = os.environ.get("WORLDVLA_FAKE_CRASH", "")
        self.episode = -1

    @staticmethod
    def num_tasks(suite: str) -> int:
        return NUM_TASKS

    def _obs(self) -> dict:
        r = self.resolution
        upright = np.zeros((r, r, 3), np.uint8)
        upright[: r // 2, :, 2] = 120  # "sky" on top of the upright image
        upright[r // 2:, :, 0] = 160  # "table" below
        y, x = (np.clip(self.pos[:2], -1, 1) * 0.45 + 0.5) * (r - 1)
        upright[int(y), int(x)] = 255
        return {"agentview_image": upright[::-1, ::-1].copy(), "robot0_eye_in_hand_image": upright.copy(),
                "robot0_eef_pos": self.pos.copy(), "robot0_eef_quat": np.array([0.0, 0.0, 0.0, 1.0]),
                "robot0_gripper_qpos": np.array([self.grip, -self.grip])}

    def reset(self, episode: int, wait_steps: int = 10) -> dict:
        self.episode = episode
        rng = np.random.default_rng(1000 * self.task_id + episode)
        self.pos = rng.uniform(-0.3, 0.3, 3)
        # like LIBERO's fixture placement: drawn from the global numpy RNG at every reset
        self.goal = self.pos + rng.uniform(-0.3, 0.3, 3) + np.random.uniform(-0.05, 0.05, 3)
        self.grip = 0.04
        self.t = 0
        return self._obs()

    def step(self, action) -> tuple[dict, float, bool, dict]:
        a = np.asarray(action, dtype=np.float64)
        if a.shape != (7,) or not np.isfinite(a).all():
            raise ValueError(f"bad action {a}")
        self.t += 1
        tag = f"{self.task_id}:{self.episode}"
        if self.t == 1 and tag == self.raise_at:
            raise RuntimeError(f"injected failure in task {self.task_id} trial {self.episode}")
        if self.t == 1 and self.crash_at in (tag, f"{tag}:mid-message"):
            if self.crash_at.endswith(":mid-message"):
                _write_half_a_message()
            os._exit(3)
        if self.step_s:
            time.sleep(self.step_s)
        self.pos = self.pos + 0.05 * a[:3]
        self.grip = float(np.clip(self.grip - 0.004 * a[6], 0.0, 0.04))
        done = bool(np.linalg.norm(self.pos - self.goal) < 0.15)
        return self._obs(), float(done), done, {}

    def close(self) -> None:
        pass
