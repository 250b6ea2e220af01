"""Simulator cost on this machine: env creation, reset + wait steps, one step with rendering.

Prints one row per resolution (agentview + wrist cameras), side by side, so the CPU budget of
evaluation and regeneration can be planned. Usage: python benchmarks/libero_render.py [--steps 20]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def measure(suite: str, task: int, resolution: int, steps: int) -> dict:
    from worldvla.envs.libero import LiberoEnv

    t0 = time.perf_counter()
    env = LiberoEnv(suite, task, resolution)
    t1 = time.perf_counter()
    env.reset(0)
    t2 = time.perf_counter()
    for _ in range(steps):
        env.step(np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0]))
    t3 = time.perf_counter()
    env.close()
    return {"create_s": t1 - t0, "reset_wait_s": t2 - t1, "step_ms": (t3 - t2) / steps * 1e3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--suite", default="libero_goal")
    parser.add_argument("--task", type=int, default=0)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    rows = {res: measure(args.suite, args.task, res, args.steps) for res in (256, 512)}
    print(f"MUJOCO_GL={os.environ.get('MUJOCO_GL')}  {args.suite} task {args.task}, {args.steps} steps")
    print(f"{'resolution':>10} {'create s':>9} {'reset+10 wait s':>16} {'step ms':>8}")
    for res, r in rows.items():
        print(f"{res:>10} {r['create_s']:>9.2f} {r['reset_wait_s']:>16.2f} {r['step_ms']:>8.1f}")
    print(f"step 512/256 ratio: {rows[512]['step_ms'] / rows[256]['step_ms']:.2f}x")


if __name__ == "__main__":
    main()
