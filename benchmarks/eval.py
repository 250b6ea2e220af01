"""Evaluation throughput: episodes/s with 1 vs N simulator workers and a batched policy, and where a
policy step's time goes (simulator vs policy), on real LIBERO episodes with a short horizon.

The policy is the tiny random WorldVLA checkpoint when worldvla.policy.policy exists (CPU, 1 thread),
else the hash policy with --policy-ms of simulated compute per call. `--policy tiny-rynnvla` uses a
tiny RynnVLA-002 checkpoint (wrist view + state in the prompt) in `--action-mode` discrete or continuous. Each setting runs in a fresh
output directory (no resume, no RNG cache), so env creation and worker start-up are included.

    python benchmarks/eval.py [--workers 1 2] [--tasks 0 1] [--trials 3] [--max-steps 40] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

os.environ.setdefault("MUJOCO_GL", "egl")


def make_policy(kind: str, policy_ms: float, workdir: Path, action_mode: str = "discrete"):
    if kind == "tiny-rynnvla":
        from worldvla.policy.policy import WorldVLAPolicy
        from worldvla.testing.fixtures import make_tiny_assets
        from worldvla.testing.tiny_rynnvla import write_tiny_rynnvla_checkpoint

        ckpt = write_tiny_rynnvla_checkpoint(workdir / "ckpt", make_tiny_assets(workdir / "assets"), chunk_size=5,
                                             resolution=256)
        return (WorldVLAPolicy.from_pretrained(ckpt, device="cpu", action_mode=action_mode),
                f"tiny RynnVLA-002 checkpoint (wrist + state, {action_mode} actions, CPU)")
    if kind in ("auto", "tiny"):
        try:
            from worldvla.policy.policy import WorldVLAPolicy
            from worldvla.testing.fixtures import make_tiny_assets
            from worldvla.testing.tiny_model import write_tiny_checkpoint

            ckpt = write_tiny_checkpoint(workdir / "ckpt", make_tiny_assets(workdir / "assets"), chunk_size=5,
                                         resolution=256)
            return WorldVLAPolicy.from_pretrained(ckpt, device="cpu"), "tiny WorldVLA checkpoint (CPU)"
        except ImportError as err:
            if kind == "tiny":
                raise
            print(f"[bench] tiny checkpoint unavailable ({err}); using the hash policy", file=sys.stderr)
    from worldvla.eval.scripted import HashPolicy

    return HashPolicy(chunk_size=5, history=2, resolution=256, delay_s=policy_ms / 1e3), \
        f"hash policy, {policy_ms:g} ms per call"


def run(policy, workers: int, args, out: Path) -> dict:
    from worldvla.eval.config import EvalConfig
    from worldvla.eval.runner import Evaluation

    cfg = EvalConfig(policy="benchmark", suites=[args.suite], tasks=list(args.tasks), num_trials=args.trials,
                     max_steps=args.max_steps, num_workers=workers, videos="none", output_dir=out,
                     policy_threads=args.policy_threads, batch_timeout_s=args.batch_timeout)
    t0 = time.perf_counter()
    summary = Evaluation(cfg, policy=policy, progress=False).execute()
    wall = time.perf_counter() - t0
    recs = [json.loads(x) for x in (out / "episodes.jsonl").read_text().splitlines()]
    steps = sum(r["steps"] or 0 for r in recs)
    pol = summary["policy_this_invocation"]
    return {
        "workers": workers, "episodes": len(recs), "errors": sum(r["status"] == "error" for r in recs),
        "wall_s": wall, "episodes_per_s": len(recs) / wall, "steps": steps,
        "sim_ms_per_step": 1e3 * sum(r["sim_seconds"] for r in recs) / steps,
        "reset_s_per_episode": sum(r["reset_seconds"] for r in recs) / len(recs),
        "policy_ms_per_step": 1e3 * pol["seconds"] / steps,  # main-process compute
        "wait_ms_per_step": 1e3 * sum(r["policy_seconds"] for r in recs) / steps,  # worker waiting for actions
        "mean_batch": pol["mean_batch"],
    }


def policy_batching(policy, sizes: list[int], threads: int, calls: int = 3) -> list[dict]:
    """ms per query of `predict_batch` at each batch size, on random 2-frame queries (no simulator)."""
    rng = np.random.default_rng(0)
    res = policy.resolution

    def frames():
        return [rng.integers(0, 256, (res, res, 3), dtype=np.uint8) for _ in range(2)]

    out = []
    for b in sizes:
        texts = [f"put the bowl number {i} on the plate" for i in range(b)]
        images = [frames() for _ in range(b)]
        wrists = [frames() for _ in range(b)] if getattr(policy, "uses_wrist", False) else None
        states = [rng.uniform(-0.1, 0.1, 8).astype(np.float32) for _ in range(b)] \
            if getattr(policy, "uses_state", False) else None
        best = float("inf")
        with torch_threads(threads):
            policy.predict_batch(texts, images, wrists, states)  # warm-up
            for _ in range(calls):
                t0 = time.perf_counter()
                policy.predict_batch(texts, images, wrists, states)
                best = min(best, time.perf_counter() - t0)
        out.append({"batch": b, "ms_per_call": 1e3 * best, "ms_per_query": 1e3 * best / b})
    return out


@contextmanager
def torch_threads(n: int):
    if "torch" not in sys.modules or not n:
        yield
        return
    torch = sys.modules["torch"]
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--suite", default="libero_goal")
    parser.add_argument("--tasks", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--max-steps", type=int, default=40)
    parser.add_argument("--policy", choices=["auto", "tiny", "tiny-rynnvla", "hash"], default="auto")
    parser.add_argument("--action-mode", choices=["discrete", "continuous"], default="discrete",
                        help="actions of --policy tiny-rynnvla")
    parser.add_argument("--policy-ms", type=float, default=20.0, help="simulated compute of the hash policy")
    parser.add_argument("--policy-threads", type=int, default=1, help="torch threads of the policy process")
    parser.add_argument("--batch-timeout", type=float, default=0.05, help="EvalConfig.batch_timeout_s")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved repeats; the best of each is shown")
    parser.add_argument("--policy-batches", type=int, nargs="*", default=[1, 2, 4],
                        help="also time predict_batch alone at these batch sizes (nothing: skip)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="worldvla_bench_eval_"))
    try:
        policy, desc = make_policy(args.policy, args.policy_ms, work, args.action_mode)
        batching = policy_batching(policy, args.policy_batches, args.policy_threads) if args.policy_batches else []
        runs = []  # repeats interleaved (1, N, 1, N, ...) so that load from other jobs hits both alike
        for rep in range(args.repeats):
            for n in args.workers:
                row = run(policy, n, args, work / f"r{rep}_w{n}")
                row["load_avg"] = os.getloadavg()[0]
                runs.append(row)
                print(f"[bench] repeat {rep} workers {n}: {row['episodes_per_s']:.3f} ep/s "
                      f"(load {row['load_avg']:.1f})", file=sys.stderr)
        rows = [max((r for r in runs if r["workers"] == n), key=lambda r: r["episodes_per_s"]) for n in args.workers]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{args.suite} tasks {args.tasks} x {args.trials} trials, max_steps {args.max_steps}; policy: {desc}; "
          f"batch_timeout_s {args.batch_timeout}, policy threads {args.policy_threads}; {os.cpu_count()} CPUs, MUJOCO_GL={os.environ.get('MUJOCO_GL')}")
    print(f"best of {args.repeats} interleaved repeat(s); load average during the runs: "
          f"{min(r['load_avg'] for r in runs):.1f}-{max(r['load_avg'] for r in runs):.1f}")
    print(f"{'workers':>7} {'episodes':>8} {'wall s':>7} {'ep/s':>6} {'speedup':>7} {'sim ms/step':>11} "
          f"{'policy ms/step':>14} {'wait ms/step':>12} {'reset s/ep':>10} {'batch':>5}")
    base = rows[0]["episodes_per_s"]
    for r in rows:
        print(f"{r['workers']:>7} {r['episodes']:>8} {r['wall_s']:>7.1f} {r['episodes_per_s']:>6.3f} "
              f"{r['episodes_per_s'] / base:>6.2f}x {r['sim_ms_per_step']:>11.1f} {r['policy_ms_per_step']:>14.1f} "
              f"{r['wait_ms_per_step']:>12.1f} {r['reset_s_per_episode']:>10.2f} {r['mean_batch'] or 0:>5.2f}")
    if batching:
        print("policy alone (predict_batch, random 2-frame queries, best of 3): " + ", ".join(
            f"batch {b['batch']}: {b['ms_per_call']:.0f} ms/call = {b['ms_per_query']:.0f} ms/query" for b in batching))
    if args.json:
        args.json.write_text(json.dumps({"policy": desc, "best": rows, "all": runs, "policy_batching": batching},
                                        indent=2))


if __name__ == "__main__":
    main()
