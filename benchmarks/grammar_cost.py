"""What the grammar check costs a parallel action chunk on CPU: `decode_action_chunks` with and without
`grammar=` (the flag "the free argmax would have left the action grammar" that eval reports per chunk).

    PYTHONPATH=. python benchmarks/grammar_cost.py [--repeats 21] [--ks 5,10] [--checkpoint DIR]

Without `--checkpoint`: the random tiny model (worldvla.testing) on the official action prompt shape
(two 256 px images, ~574 tokens). With `--checkpoint DIR`: a trained worldvla checkpoint folder; its
prompts are the policy's own (`WorldVLAPolicy.prompt_ids` on frames of the grid-world toy when DIR was
trained there, worldvla/train/toy_policy.py; any 64 px RGB frame otherwise). Three variants run in
turn within each repeat (order rotating), one torch thread, eager step (the policy's CPU default):
`off` (grammar=None), `on` (grammar=[], worldvla.model.grammar's bound), `full` (grammar=[] with the
bound switched off: one full LM-head row per query, as before the bound). Printed: median chunk CPU ms
(prefill + decode; the process's CPU time, one thread) of each, the medians of the per-repeat ratios to `off`, how many decode steps
computed the check, and the load average before and after (the machine is shared).
Results are recorded in benchmarks/README.md ("Grammar check cost").
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from decode import action_prompt  # noqa: E402

from worldvla.model import generate as G  # noqa: E402
from worldvla.model import grammar as GR  # noqa: E402
from worldvla.testing.tiny_model import make_tiny_model  # noqa: E402


def checked_steps(model, prompts, K) -> tuple[int, list[bool]]:
    """Decode steps that computed the check (the full LM-head rows), and the flags, on one extra run."""
    calls = []
    step = G.step

    def counting(*args, **kw):
        calls.append(bool(args[5] if len(args) > 5 else kw.get("grammar", False)))
        return step(*args, **kw)

    G.step, flags = counting, []
    try:
        G.decode_action_chunks(model, prompts, K, "parallel", grammar=flags)
    finally:
        G.step = step
    return sum(calls), flags


def policy_prompts(ckpt: str, batch: int):
    from worldvla.policy.policy import WorldVLAPolicy
    from worldvla.testing import toy_env as T

    pol = WorldVLAPolicy.from_pretrained(ckpt, decode="parallel")
    boards = T.configs()
    prompts = []
    for b in range(batch):
        gripper, block = boards[(7 * b) % len(boards)]
        frame = T.draw(gripper, block, resolution=pol.settings.resolution)
        prompts.append(pol.prompt_ids(T.LANGUAGE, [frame, frame]))
    return pol.model, prompts, pol.chunk_size


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=21)
    ap.add_argument("--ks", default="5,10", help="chunk sizes K")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--checkpoint", default=None, help="a trained checkpoint folder (default: random tiny model)")
    ap.add_argument("--synthetic-prompt", action="store_true",
                    help="with --checkpoint: the random model's prompt shape (two 256 px images) instead of the policy's")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.checkpoint:
        model, prompts, _ = policy_prompts(args.checkpoint, args.batch)
        what = f"trained checkpoint {args.checkpoint}"
        if args.synthetic_prompt:
            prompts = [action_prompt(2, 256, seed=b) for b in range(args.batch)]
            what += " on the synthetic 2 x 256 px prompt"
    else:
        model = make_tiny_model(seed=0)
        prompts = [action_prompt(2, 256, seed=b) for b in range(args.batch)]
        what = "random tiny model (seed 0)"
    print(f"{what}; prompt tokens {[len(p) for p in prompts]}; batch {args.batch}; torch {torch.__version__}, "
          f"1 thread; load average before {os.getloadavg()}")
    usable, names = GR.usable, ["off", "on", "full"]
    results = {}
    for K in [int(k) for k in args.ks.split(",")]:
        runs = {name: [] for name in names}
        for r in range(args.repeats + 1):  # the first round warms up, untimed
            for name in names[r % 3:] + names[: r % 3]:
                GR.usable = usable if name != "full" else (lambda *a: False)
                t0 = time.process_time()  # CPU seconds: wall time on this shared machine follows the load
                G.decode_action_chunks(model, prompts, K, "parallel", grammar=None if name == "off" else [])
                if r:
                    runs[name].append(1e3 * (time.process_time() - t0))
        GR.usable = usable
        steps, flags = checked_steps(model, prompts, K)
        row = {f"{name}_ms": statistics.median(runs[name]) for name in names}
        row.update({f"{name}_ratio": statistics.median([a / b for a, b in zip(runs[name], runs["off"])])
                    for name in ("on", "full")}, checked_steps=steps, flags=flags)
        results[K] = row
        print(f"K={K:>2}: chunk ms off {row['off_ms']:.2f}, on {row['on_ms']:.2f}, full {row['full_ms']:.2f}; "
              f"median ratio to off: on {row['on_ratio']:.3f} ({100 * (row['on_ratio'] - 1):+.1f} %), full "
              f"{row['full_ratio']:.3f}; decode steps that computed the check {steps} of 7; flags {flags}")
    print(f"load average after {os.getloadavg()}")
    return results


if __name__ == "__main__":
    main()
