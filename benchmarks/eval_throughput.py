"""Evaluation throughput at scale: N simulator workers and one batched policy, for a fixed time.

    python benchmarks/eval_throughput.py --policy 7b --device cuda --workers 16 --seconds 180 --json out.json
    python benchmarks/eval_throughput.py --policy tiny --device cpu --workers 2 --seconds 30   # CPU check

Runs the real evaluation (worldvla.eval.runner: worker pool, batched `predict_batch`, protocol step
budgets) on real LIBERO episodes (or `--env-factory` for a toy env), stops after `--seconds`, and
reports episodes/s, the per-step split (simulator step, worker waiting for its chunk, the policy's
batched call: VQ-GAN encoding / prefill / decode), and the time for 2,000 episodes extrapolated from
the measured rate. `--policy 7b` is Chameleon-7B's shape with random weights in bf16 and a
Chameleon-size VQ-GAN with random weights (speed does not depend on the values; a random policy
never succeeds, so every episode runs its full step budget: the extrapolation is an upper bound for a
real policy, whose successful episodes end early). `--policy tiny` is the tiny test checkpoint.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class Timed:
    """Accumulated seconds of a wrapped callable (synchronising CUDA so GPU work is counted)."""

    def __init__(self, fn, device):
        self.fn, self.device, self.seconds, self.calls = fn, device, 0.0, 0

    def __call__(self, *args, **kwargs):
        from worldvla.model.generate import clock

        t0 = clock(self.device)
        out = self.fn(*args, **kwargs)
        self.seconds += clock(self.device) - t0
        self.calls += 1
        return out


def build_policy(args, work: Path):
    """(policy, description, timers): a WorldVLAPolicy whose VQ-GAN encode and decode calls are timed."""
    import torch

    from worldvla.data.processor import Processor
    from worldvla.model import generate as G
    from worldvla.policy.policy import WorldVLAPolicy
    from worldvla.recipe import Recipe
    from worldvla.testing.fixtures import make_tiny_assets

    assets = make_tiny_assets(work / "assets")
    if args.policy == "tiny":
        from worldvla.testing.tiny_model import write_tiny_checkpoint

        ckpt = write_tiny_checkpoint(work / "ckpt", assets, chunk_size=args.chunk, resolution=args.resolution)
        policy = WorldVLAPolicy.from_pretrained(ckpt, device=args.device, compile_step=args.compile)
        desc = "tiny WorldVLA checkpoint"
    else:
        from worldvla.model.config import ModelConfig
        from worldvla.model.transformer import Transformer
        from worldvla.model.vqgan import VQGAN, VQGANConfig
        from worldvla.tokenizers import ImageTokenizer, TextTokenizer

        overrides = {"n_layers": args.layers} if args.layers else {}
        if args.width:
            overrides.update(dim=args.width, intermediate_size=args.width * 11008 // 4096)
        cfg = ModelConfig.preset("7b", **overrides)
        dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
        before = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            with torch.device(args.device):
                model = Transformer(cfg).eval()
        finally:
            torch.set_default_dtype(before)
        text = TextTokenizer(assets.tokenizer_json)
        vq_cfg = VQGANConfig() if args.vqgan == "full" else VQGANConfig(ch=32, num_res_blocks=1, z_channels=32,
                                                                        embed_dim=32)
        images = ImageTokenizer(VQGAN(vq_cfg).to(args.device), text.vocab, args.resolution)
        settings = Recipe(chunk_size=args.chunk, resolution=args.resolution)
        policy = WorldVLAPolicy(model, Processor(settings, text, images), compile_step=args.compile, name="7b-random")
        desc = (f"random-init Chameleon-7B shape ({cfg.n_layers} layers, width {cfg.dim}, {dtype}), "
                f"{args.vqgan} VQ-GAN (random)")
    timers = {"vqgan_encode": Timed(policy.images.encode, args.device)}
    policy.images.encode = timers["vqgan_encode"]
    stats = G.DecodeStats()
    decode = G.decode_action_chunks

    def decode_with_stats(*a, **kw):
        kw.setdefault("stats", stats)
        return decode(*a, **kw)

    G.decode_action_chunks = decode_with_stats  # the policy calls it through the module (restored by measure)
    timers["_restore"] = lambda: setattr(G, "decode_action_chunks", decode)
    return policy, desc + f", compile_step={args.compile}, {args.device}", timers, stats


def read_records(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def measure(args) -> dict:
    work = Path(tempfile.mkdtemp(prefix="worldvla_eval_throughput_"))
    policy, desc, timers, dstats = build_policy(args, work)
    restore = timers.pop("_restore")
    try:
        return _measure(args, work, policy, desc, timers, dstats)
    finally:
        restore()


def _measure(args, work, policy, desc, timers, dstats) -> dict:
    from worldvla.eval.config import EvalConfig
    from worldvla.eval.runner import Evaluation

    compile_error = None
    try:
        warm_up(policy, args)
    except Exception as exc:  # device time is scarce: measure eagerly rather than not at all
        if not policy.compile_step:
            raise
        compile_error = f"{type(exc).__name__}: {exc}"
        print(f"[bench] compile_step failed ({compile_error}); measuring the eager step", file=sys.stderr)
        policy.compile_step = False
        warm_up(policy, args)
    n_tasks = 10
    cfg = EvalConfig(policy="benchmark", suites=[args.suite], num_trials=args.trials, num_workers=args.workers,
                     videos="none", output_dir=work / "eval", max_batch=args.max_batch,
                     batch_timeout_s=args.batch_timeout, env_factory=args.env_factory,
                     tasks=list(range(n_tasks)) if not args.env_factory else None, max_steps=args.max_steps)
    ev = Evaluation(cfg, policy=policy, progress=False)
    for t in timers.values():
        t.seconds, t.calls = 0.0, 0
    dstats.__init__()
    start = time.perf_counter()
    done_at: list[float] = []
    thread = threading.Thread(target=ev.execute, daemon=True)
    thread.start()
    path = work / "eval" / "episodes.jsonl"
    while thread.is_alive() and time.perf_counter() - start < args.seconds:
        time.sleep(0.5)
        n = len(read_records(path))
        done_at += [time.perf_counter() - start] * (n - len(done_at))
    elapsed = time.perf_counter() - start
    recs = [r for r in read_records(path) if r.get("steps")]
    st = dict(ev.stats)
    result = summarize(args, desc, recs, done_at, elapsed, st, timers, dstats)
    result["finished"] = not thread.is_alive()
    result["compile_step"] = bool(policy.compile_step)
    if compile_error:
        result["compile_error"] = compile_error
    return result


def warm_up(policy, args) -> None:
    """CUDA graphs of the first and the full batch, at both prompt lengths, are captured here."""
    for b in sorted({1, args.workers}):
        for frames in (1, 2):  # an episode's first query has one frame, later ones two
            policy.predict_batch(["warm up"] * b, [[_frame(args.resolution, i)] * frames for i in range(b)])


def _frame(res: int, seed: int):
    import numpy as np

    return np.random.default_rng(seed).integers(0, 256, (res, res, 3), dtype=np.uint8)


def summarize(args, desc, recs, done_at, elapsed, st, timers, dstats) -> dict:
    steps = sum(r["steps"] for r in recs)
    out = {"policy": desc, "suite": args.suite, "workers": args.workers, "seconds": round(elapsed, 1),
           "episodes": len(recs), "steps": steps, "cpus": os.cpu_count(), "mujoco_gl": os.environ.get("MUJOCO_GL"),
           "load_avg": os.getloadavg()[0], "errors": sum(r["status"] == "error" for r in recs)}
    calls = max(st.get("policy_calls", 0), 1)
    out["policy_call"] = {
        "calls": st.get("policy_calls", 0), "mean_batch": st.get("policy_queries", 0) / calls,
        "ms_per_call": 1e3 * st.get("policy_seconds", 0.0) / calls,
        "vqgan_encode_ms_per_call": 1e3 * timers["vqgan_encode"].seconds / calls,
        "prefill_ms_per_call": 1e3 * dstats.prefill_s / calls,
        "decode_ms_per_call": 1e3 * dstats.decode_s / calls,
    }
    if not recs:
        out["note"] = "no episode finished within the time limit"
        return out
    # steady state: every worker always runs an episode, so the pool finishes workers / (mean episode wall
    # time) episodes per second; completions come in waves of similar episodes, so counting them over a few
    # minutes would depend on where the waves fall. Start-up (spawn, env creation) is paid once per run.
    mean_episode_s = statistics.mean(r["seconds"] for r in recs)
    rate = args.workers / mean_episode_s
    out.update({
        "episodes_per_s": len(recs) / elapsed,  # whole window, start-up included
        "steady_episodes_per_s": rate,
        "mean_episode_s": mean_episode_s,
        "startup_s": max(0.0, done_at[0] - mean_episode_s) if done_at else None,
        "ms_per_step": {
            "simulator": 1e3 * sum(r["sim_seconds"] for r in recs) / steps,
            "worker_waits_for_policy": 1e3 * sum(r["policy_seconds"] for r in recs) / steps,
            "reset_per_episode_s": sum(r["reset_seconds"] for r in recs) / len(recs),
        },
    })
    out["extrapolated_2000_episodes_min"] = ((out["startup_s"] or 0.0) + 2000 / rate) / 60
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", choices=("7b", "tiny"), default="tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--compile", action="store_true", help="compile_step=True (CUDA graphs on CUDA)")
    ap.add_argument("--layers", type=int, default=None, help="7b: decoder layers (default 32)")
    ap.add_argument("--width", type=int, default=None, help="7b: hidden width (default 4096; small for a CPU check)")
    ap.add_argument("--vqgan", choices=("full", "small"), default="full", help="7b: Chameleon-size or a small VQ-GAN")
    ap.add_argument("--suite", default="libero_goal")
    ap.add_argument("--trials", type=int, default=50, help="episodes per task queued (the run stops at --seconds)")
    ap.add_argument("--max-steps", type=int, default=None, help="None: the protocol budget of the suite")
    ap.add_argument("--workers", type=int, default=16)
    ap.add_argument("--max-batch", type=int, default=0)
    ap.add_argument("--batch-timeout", type=float, default=0.05)
    ap.add_argument("--seconds", type=float, default=180.0)
    ap.add_argument("--chunk", type=int, default=5)
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--env-factory", default="", help="module:callable instead of LIBERO (CPU checks)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    result = measure(args)
    text = json.dumps(result, indent=1)
    print(text, flush=True)
    if args.json:
        args.json.write_text(text)
    return result


if __name__ == "__main__":
    main()
    for child in mp.active_children():  # a time-limited run leaves workers mid-episode
        child.terminate()
    sys.stdout.flush()
    os._exit(0)
