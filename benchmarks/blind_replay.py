"""How much does the policy need to see? Replay recorded demonstrations' actions open loop (no images, no
state) from other init states of the same task, as recorded and after the round trip through the action
tokens of a checkpoint (what a policy that decoded every token exactly would execute).

    python benchmarks/blind_replay.py --demos outputs/learn_object_seen/regenerated/<task>_demo.hdf5 \
        --sources 0,5 --targets 10-19 [--checkpoint <ckpt dir with worldvla.json>]

A high blind success rate says the task's init states differ little, so a closed-loop policy that fails
there fails on action precision (where it drifts off the demonstrated path), not on sight.
"""

from __future__ import annotations

import argparse
import os

import h5py
import numpy as np
from tqdm import tqdm

from worldvla.config import parse_ids
from worldvla.envs.libero import LiberoEnv
from worldvla.eval.results import wilson_interval
from worldvla.recipe import Recipe, stats_of
from worldvla.tokenizers.action import ActionTokenizer


def replay(env: LiberoEnv, init_state: int, actions: np.ndarray) -> tuple[bool, int]:
    env.reset(init_state)  # the protocol's reset, with its settle steps
    for step, action in enumerate(actions, start=1):
        if env.step(action)[2]:
            return True, step
    return False, len(actions)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demos", required=True, help="regenerated LIBERO demo HDF5 (data/demo_<i>/actions)")
    ap.add_argument("--suite", default="libero_object")
    ap.add_argument("--task", type=int, default=0)
    ap.add_argument("--sources", default="0", help="demo indices whose actions are replayed, e.g. 0,5")
    ap.add_argument("--targets", default="10-19", help="init states replayed from, e.g. 10-19")
    ap.add_argument("--checkpoint", default="", help="also replay the actions after its action-token round trip")
    ap.add_argument("--resolution", type=int, default=128)
    args = ap.parse_args()

    tokenizer = None
    if args.checkpoint:  # the checkpoint's own Recipe (worldvla.json, validated) names its action statistics
        recipe = Recipe.from_file(os.path.join(args.checkpoint, "worldvla.json"))
        tokenizer = ActionTokenizer(stats_of(recipe.action_stats))
    env = LiberoEnv(args.suite, args.task, resolution=args.resolution)
    modes = ["recorded"] + (["tokens"] if tokenizer else [])
    results = {m: [] for m in modes}
    with h5py.File(args.demos, "r") as f:
        jobs = [(s, t, m) for s in parse_ids(args.sources) for m in modes for t in parse_ids(args.targets)]
        for source, target, mode in tqdm(jobs, desc="blind replay", unit="ep"):
            actions = f["data"][f"demo_{source}"]["actions"][:]
            if mode == "tokens":
                actions = tokenizer.decode(tokenizer.encode(actions))
            ok, steps = replay(env, target, actions)
            results[mode].append({"demo": source, "init_state": target, "success": ok, "steps": steps})
            tqdm.write(f"{mode}: demo {source} from init state {target}: {'success' if ok else 'failure'} ({steps} steps)")
    load = os.getloadavg()
    for mode, rows in results.items():
        n_ok = sum(r["success"] for r in rows)
        lo, hi = wilson_interval(n_ok, len(rows))
        per_demo = {s: sum(r["success"] for r in rows if r["demo"] == s) for s in parse_ids(args.sources)}
        print(f"{mode}: {n_ok}/{len(rows)} blind replays succeed (Wilson 95 % {lo:.0%}-{hi:.0%}); "
              f"per demo {per_demo}; load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}")


if __name__ == "__main__":
    main()
