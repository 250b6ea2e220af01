"""Training throughput and memory: the tiny model on this machine, and the 7B budget on 8 x 80 GB.

1. Measured: `configs/tiny.yaml` on pipeline-made 64 px shards (worldvla.train.tiny_data) for a few
   steps, per batching mode (random = official order, length_grouped) and with/without activation
   checkpointing: tokens/s (real tokens, padding excluded), padding fraction, step time, peak RSS.
2. Computed: per-GPU memory of the 7B WorldVLA model under FSDP full shard (fp32 master weights,
   fp32 gradients, AdamW moments, all sharded; bf16 gathered layers; checkpointed activations;
   fp32 logits of the loss) for the sequence lengths of the 256 / 512 px samples and the 4096 cap.

    python benchmarks/train.py [--steps 40] [--threads 1] [--out /tmp/bench_train]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GB = 1e9

# Chameleon-7B / WorldVLA architecture (official_format.md §6).
SEVEN_B = {"vocab": 65536, "dim": 4096, "layers": 32, "ffn": 11008}


def seven_b_params(a: dict = SEVEN_B) -> int:
    per_layer = 4 * a["dim"] ** 2 + 3 * a["dim"] * a["ffn"] + 2 * a["dim"] + 4 * 128  # attn, SwiGLU, norms, qk-norm
    return 2 * a["vocab"] * a["dim"] + a["layers"] * per_layer + a["dim"]


def fsdp_memory(n_gpus: int, batch: int, seq: int, a: dict = SEVEN_B) -> dict:
    """Per-GPU bytes (GB) of the FSDP full-shard bf16 recipe with activation checkpointing."""
    n = seven_b_params(a)
    tokens = batch * seq
    layer = 4 * a["dim"] ** 2 + 3 * a["dim"] * a["ffn"]
    states = 16 * n / n_gpus  # fp32 master (4) + fp32 grad shard (4) + AdamW exp_avg, exp_avg_sq (8)
    gathered = (2 * layer * 2 + 2 * a["vocab"] * a["dim"]) * 2  # bf16: current + prefetched layer, embed + lm_head
    checkpoints = a["layers"] * tokens * a["dim"] * 2  # bf16 input of every decoder layer
    # one layer recomputed in backward: q, k, v, attention out, o-proj, residuals, norms (~10 d) and
    # gate, up, silu, product (4 ffn) per token, bf16; SDPA/flash keeps no L x L matrix
    recompute = tokens * (10 * a["dim"] + 4 * a["ffn"]) * 2
    logits = tokens * a["vocab"] * (2 + 4 + 4)  # bf16 lm_head output, fp32 copy for the CE, fp32 gradient
    total = states + gathered + checkpoints + recompute + logits
    return {k: v / GB for k, v in {"states": states, "gathered": gathered, "checkpoints": checkpoints,
                                     "recompute": recompute, "logits": logits, "total": total}.items()}


def memory_table() -> str:
    rows = ["| GPUs | seq len (sample) | params+grads+AdamW | gathered bf16 | layer inputs | 1-layer recompute | logits+CE | total / GPU |",
            "|---|---|---|---|---|---|---|---|"]
    for n_gpus in (2, 4, 8):
        for seq, what in ((620, "256 px action"), (2190, "512 px action"), (4096, "max_seq_len")):
            m = fsdp_memory(n_gpus, 8, seq)
            rows.append(f"| {n_gpus} | {seq} ({what}) | {m['states']:.1f} | {m['gathered']:.1f} | {m['checkpoints']:.1f} "
                        f"| {m['recompute']:.1f} | {m['logits']:.1f} | **{m['total']:.1f} GB** |")
    return "\n".join(rows)


def run_tiny(data, out: Path, steps: int, overrides: list[str]) -> dict:
    from worldvla.config import load_config
    from worldvla.train.config import TrainConfig
    from worldvla.train.loop import train
    from worldvla.train.tracking import read_log

    cfg = load_config(TrainConfig, ROOT / "configs" / "tiny.yaml", [
        f"data.train=[{data.train}]", f"data.tokenizer={data.tokenizer}", f"train.output_dir={out}",
        f"train.max_steps={steps}", "train.save_every_steps=0", "train.resume=none", "logging.progress_bar=false",
        "logging.log_every=5", "logging.plot=false", *overrides])
    t0 = time.perf_counter()
    train(cfg)
    wall = time.perf_counter() - t0
    recs = [r for r in read_log(out / "train_log.jsonl") if "tokens_per_s" in r][1:]  # first window: warm-up
    return {"tokens_per_s": statistics.median(r["tokens_per_s"] for r in recs),
            "step_ms": 1e3 * statistics.median(r["step_s"] for r in recs),
            "padding": statistics.mean(r["padding"] for r in recs), "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--out", type=Path, default=Path("/tmp/worldvla_bench_train"))
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: per-core numbers)")
    args = parser.parse_args()
    import logging

    import torch

    from worldvla.train.tiny_data import make_tiny_data

    logging.basicConfig(level=logging.WARNING)
    data = make_tiny_data(args.out / "data")
    torch.set_num_threads(args.threads)  # after pretokenize, which sets its own thread count in-process
    variants = {
        "random order, checkpointing": ["data.batching=random"],
        "length_grouped, checkpointing": ["data.batching=length_grouped"],
        "length_grouped, no checkpointing": ["data.batching=length_grouped", "model.activation_checkpointing=false"],
    }
    print(f"tiny model ({ROOT / 'configs/tiny.yaml'}), batch 8, fp32, CPU threads {torch.get_num_threads()}, "
          f"{args.steps} steps each")
    print(f"{'variant':<34} {'tokens/s':>9} {'step ms':>8} {'padding':>8} {'peak RSS GB':>12}")
    for name, ov in variants.items():
        r = run_tiny(data, args.out / name.replace(" ", "_").replace(",", ""), args.steps, ov)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB  # Linux: KiB; process-wide peak so far
        print(f"{name:<34} {r['tokens_per_s']:>9.0f} {r['step_ms']:>8.1f} {r['padding']:>8.1%} {rss:>12.2f}")
    print(f"\n7B ({seven_b_params() / 1e9:.2f} B parameters), FSDP full shard, bf16, activation checkpointing, "
          "batch 8 / GPU (computed, GB per GPU):")
    print(memory_table())
    print(json.dumps({"seven_b_params": seven_b_params()}))


if __name__ == "__main__":
    main()
