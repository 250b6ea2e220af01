"""A grid-world stand-in for `LiberoEnv` whose right action can only be read from the camera frame, for
the closed-loop test (tests/test_closed_loop.py; env_factory=worldvla.testing.toy_env:ToyGraspEnv).

The table is a GRID x GRID board drawn in 64 px frames, one cell per 16 px VQ-GAN patch. The trial
(init state) places a gripper (blue) and a block (red); the episode succeeds when the gripper grasps
the block. Rules (env units: one cell = STEP action units), chosen so that each classic eval bug fails:
- gripper open (action[6] <= 0): move by round(action[:2] / STEP) cells; leaving the board fails
  (de-normalising with another set's statistics scales the moves and overshoots);
- gripper closing (action[6] > 0): succeeds when still (no x/y/z motion) on the block, fails anywhere
  else or when moving (an inverted gripper closes on the first move; a reversed chunk starts with the
  expert's post-grasp "lift" or with a grasp that comes before its approach moves);
- frames come out upside down, like LIBERO's cameras: the runner's 180-degree rotation makes them
  upright, and a frame read upside down shows the mirrored board (moves away from the block);
- every trial needs two moves, so its second query comes with the gripper on the block: the older
  history frame read as the current one asks for one more move (off the block) before the grasp.
The expert moves one cell per step on each axis towards the block, then grasps, then lifts
(`expert_actions`); the lift rows are never executed in a correct loop (the grasp ends the episode).
"""

from __future__ import annotations

import numpy as np

GRID = 4  # cells per side
STEP = 0.1  # action units per cell: far from the LIBERO presets' 0.9375 range
LANGUAGE = "pick up the red block"
BACKGROUND = (90, 90, 90)
GRIPPER = (40, 90, 230)
BLOCK = (230, 50, 40)
GRIPPER_ON_BLOCK = (220, 60, 220)  # both in one cell (the frame before the grasp)
HELD = (240, 220, 40)  # after a grasp (demo padding frames only)
LIFT = 1.0  # action[2] of the expert's lift
BLOCKS = ((1, 1), (2, 2))  # a mirror pair: a frame read upside down is another board the policy has seen


def configs() -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Every (gripper cell, block cell) board at the start of an episode: the demos cover them all."""
    cells = [(r, c) for r in range(GRID) for c in range(GRID)]
    return [(g, b) for b in BLOCKS for g in cells if g != b]


def distance(gripper: tuple[int, int], block: tuple[int, int]) -> int:
    """Expert moves to the block (one cell per step on each axis)."""
    return max(abs(gripper[0] - block[0]), abs(gripper[1] - block[1]))


def init_state(trial: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """(gripper cell, block cell) of a trial: the boards at least 2 moves away (so an episode spans more
    than one chunk of 2 and the history matters), in a fixed shuffle."""
    far = [c for c in configs() if distance(*c) >= 2]
    order = np.random.default_rng(1234).permutation(len(far))
    return far[order[trial % len(far)]]


def num_init_states() -> int:
    return sum(distance(*c) >= 2 for c in configs())


def draw(gripper: tuple[int, int], block: tuple[int, int], held: bool = False, resolution: int = 64) -> np.ndarray:
    """The upright frame (row 0 at the top) of a board state."""
    img = np.empty((resolution, resolution, 3), np.uint8)
    img[:] = BACKGROUND
    cell = resolution // GRID

    def fill(rc, colour):
        img[rc[0] * cell:(rc[0] + 1) * cell, rc[1] * cell:(rc[1] + 1) * cell] = colour

    if held:
        fill(gripper, HELD)
    elif gripper == block:
        fill(gripper, GRIPPER_ON_BLOCK)
    else:
        fill(block, BLOCK)
        fill(gripper, GRIPPER)
    return img


def expert_actions(gripper: tuple[int, int], block: tuple[int, int], pad: int) -> list[np.ndarray]:
    """Approach moves, the grasp, then `pad` lift actions (so every chunk position has training data)."""
    out = []
    pos = np.array(gripper)
    goal = np.array(block)
    while (pos != goal).any():
        d = np.sign(goal - pos)
        pos = pos + d
        out.append(np.array([STEP * d[1], STEP * d[0], 0, 0, 0, 0, -1.0]))  # x = column, y = row
    out.append(np.array([0, 0, 0, 0, 0, 0, 1.0]))
    out += [np.array([0, 0, STEP * LIFT, 0, 0, 0, 1.0]) for _ in range(pad)]
    return out


class ToyGraspEnv:
    """`LiberoEnv`'s interface: constructor, `language`, `reset(trial, wait_steps)`, `step`, `close`."""

    def __init__(self, suite: str, task_id: int, resolution: int = 64, env_seed: int = 0):
        self.suite_name, self.task_id, self.resolution = suite, task_id, resolution
        self.language = LANGUAGE
        self.max_steps = 12

    @staticmethod
    def num_tasks(suite: str) -> int:
        return 1

    def _obs(self) -> dict:
        upright = draw(self.gripper, self.block, self.held, self.resolution)
        raw = np.ascontiguousarray(upright[::-1, ::-1])  # as LIBERO renders: upside down
        return {"agentview_image": raw, "robot0_eye_in_hand_image": raw.copy(),
                "robot0_eef_pos": np.array([*self.gripper, float(self.held)], dtype=np.float64),
                "robot0_eef_quat": np.array([0.0, 0.0, 0.0, 1.0]),
                "robot0_gripper_qpos": np.array([0.0, 0.0]) if self.held else np.array([0.04, -0.04])}

    def reset(self, trial: int, wait_steps: int = 10) -> dict:
        gripper, block = init_state(trial)
        self.gripper, self.block, self.held, self.failed = tuple(gripper), tuple(block), False, False
        return self._obs()  # the wait steps (gripper open, no motion) change nothing here

    def step(self, action) -> tuple[dict, float, bool, dict]:
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (7,) or not np.isfinite(a).all():
            raise ValueError(f"action must be 7 finite numbers, got {a}")
        if self.failed:  # the runner only stops on success: a failed episode idles until max_steps
            return self._obs(), 0.0, False, {"failed": True}
        dc, dr = (int(np.rint(v / STEP)) for v in a[:2])
        done = False
        if a[6] <= 0:
            r, c = self.gripper[0] + dr, self.gripper[1] + dc
            self.failed = not (0 <= r < GRID and 0 <= c < GRID)  # off the table
            if not self.failed:
                self.gripper = (r, c)
        else:
            still = dr == 0 and dc == 0 and bool(np.rint(a[2] / STEP) == 0)
            done = self.held = still and self.gripper == self.block
            self.failed = not done
        return self._obs(), float(done), done, {"failed": self.failed}

    def close(self) -> None:
        pass
