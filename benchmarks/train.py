"""Training throughput and memory: the tiny model through the real loop, a real-size layer stack, the 7B budget.

1. `--model tiny` (default), measured: `configs/tiny.yaml` on pipeline-made 64 px shards
   (worldvla.train.tiny_data) for a few steps, per batching mode (random = official order,
   length_grouped) and with/without activation checkpointing: tokens/s (real tokens, padding excluded),
   padding fraction, step time, peak RSS.
2. `--model 7b --layers N`, measured: N decoder layers of Chameleon-7B width (4096, 32 heads, SwiGLU
   11008, vocab 65536; `--width` scales it down for a CPU check), random init, fp32 master weights with
   bf16 autocast (the official recipe) or pure bf16 (`--precision bf16`), on synthetic 256 px
   action-model samples (official layout: BOS, text, 2 images of 276 tokens, K=5 action blocks; 620 tokens)
   through the trainer's own pieces (collate, action mask, loss, clipping, AdamW): tokens/s, step ms,
   MFU and peak memory, without and with activation checkpointing.
3. Computed: per-GPU memory of the 7B WorldVLA model under FSDP full shard (fp32 master weights,
   fp32 gradients, AdamW moments, all sharded; bf16 gathered layers; checkpointed activations;
   fp32 logits of the loss) for the sequence lengths of the 256 / 512 px samples and the 4096 cap.

    python benchmarks/train.py [--steps 40] [--threads 1] [--out /tmp/bench_train]
    PYTHONPATH=. python benchmarks/train.py --model 7b --layers 8 --device cuda --batch 4 --steps 10
    python benchmarks/train.py --model 7b --layers 2 --width 256 --device cpu --batch 2 --steps 3   # CPU check
"""

from __future__ import annotations

import argparse
import json
import math
import os
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


# -- a real-size layer stack on synthetic samples ------------------------------------------------
def synthetic_action_sample(rng, chunk: int = 5, text_len: int = 20, image_side: int = 256):
    """One action-model sample in the official 256 px layout (official_format.md §4.1) with random codes:
    [BOS] text I(t-1) I(t) E | A x K E; labels on the action blocks and the final E."""
    from worldvla import vocab as V
    from worldvla.data.sequence import Sample, Span

    latent = image_side // 16  # VQ-GAN downsampling
    ids, spans = [V.BOS_ID] + rng.integers(16100, 65536, text_len).tolist(), []
    for _ in range(2):
        start = len(ids)
        ids += [V.BOI_ID, V.size_token_id(image_side // 32), V.size_token_id(image_side // 32)]
        for _ in range(latent):
            ids += rng.integers(4, 4 + V.NUM_IMAGE_CODES, latent).tolist() + [V.ROW_BREAK_ID]
        ids.append(V.EOI_ID)
        spans.append(Span("image", start, len(ids)))
    ids.append(V.END_OF_TURN_ID)
    prompt = len(ids)
    for _ in range(chunk):
        spans.append(Span("action", len(ids), len(ids) + 9))
        ids += [V.ACTION_START_ID] + rng.integers(V.ACTION_FIRST_BIN_ID, V.ACTION_LAST_BIN_ID + 1, 7).tolist() + [V.ACTION_END_ID]
    ids.append(V.END_OF_TURN_ID)
    labels = [V.IGNORE_INDEX] * prompt + ids[prompt:]
    return Sample(ids, labels, spans)


def stack_config(args):
    from worldvla.model.config import ModelConfig

    if args.width % 128:
        raise SystemExit(f"--width {args.width}: must be a multiple of 128 (head_dim 128)")
    heads = args.width // 128
    ffn = 11008 * args.width // 4096  # SwiGLU width in Chameleon-7B's ratio
    return ModelConfig.preset("7b", n_layers=args.layers, dim=args.width, n_heads=heads, n_kv_heads=heads,
                              intermediate_size=ffn, dropout=0.05)


def time_stack(model, batch, args, device, peak_tflops: float) -> dict:
    """Warm-up, then `--steps` timed optimizer steps of the trainer's forward / loss / backward / clip / AdamW."""
    import torch

    from worldvla.train import modeling
    from worldvla.train.loss import LossConfig
    from worldvla.train.optim import build_optimizer
    from worldvla.train.tracking import flops_per_token

    opt = build_optimizer(model.parameters(), 5e-6, 0.1, [0.9, 0.95])
    ids, labels = batch.input_ids.to(device), batch.labels.to(device)
    mask = modeling.attention_mask(batch, True, device, model.dtype)
    autocast = args.precision == "autocast"
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times, act_peak = [], 0
    for i in range(args.warmup + args.steps):
        sync()
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            out = modeling.compute_loss(model(ids, mask=mask), labels, LossConfig())
        out["loss"].backward()
        if cuda:  # forward + backward peak: what activation checkpointing changes (AdamW's step comes after)
            act_peak = max(act_peak, torch.cuda.max_memory_allocated())
        torch.nn.utils.clip_grad_norm_(model.parameters(), 4.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
        if not math.isfinite(float(out["loss"].detach())):
            raise SystemExit(f"non-finite loss at benchmark step {i}")
    step_s = statistics.median(times)
    n_params, n_layers, dim = modeling.size(model.cfg)
    tokens = int(batch.lengths.sum())
    res = {"step_ms": 1e3 * step_s, "tokens_per_s": tokens / step_s, "loss": float(out["loss"].detach())}
    if peak_tflops > 0:
        flops = flops_per_token(n_params, n_layers, dim, batch.input_ids.shape[1]) * batch.input_ids.numel()
        res["mfu"] = flops / step_s / (peak_tflops * 1e12)
    if cuda:
        res["peak_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30  # whole step, optimizer included
        res["fwd_bwd_peak_gb"] = act_peak / 2**30
    del opt
    return res


def run_stack(args) -> list[dict]:
    import numpy as np
    import torch

    from worldvla.data.collate import collate
    from worldvla.model.transformer import Transformer
    from worldvla.train.distributed import apply_activation_checkpointing
    from worldvla.train.modeling import block_class
    from worldvla.train.tracking import guess_peak_tflops

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device visible")
    cfg = stack_config(args)
    torch.manual_seed(0)
    with torch.device(device):
        model = Transformer(cfg)  # random init directly on the device
    if args.precision == "bf16":
        model = model.to(torch.bfloat16)
    model.train()
    rng = np.random.default_rng(0)
    batch = collate([synthetic_action_sample(rng, args.chunk) for _ in range(args.batch)], max_len=4096)
    peak = args.peak_tflops or guess_peak_tflops()
    n_params = sum(p.numel() for p in model.parameters())
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"layer stack: {cfg.n_layers} layers x width {cfg.dim} ({cfg.n_heads} heads, SwiGLU {cfg.intermediate_size}, "
          f"vocab {cfg.vocab_size}), {n_params / 1e9:.2f} B parameters, precision {args.precision}, batch {args.batch} "
          f"x {batch.input_ids.shape[1]} tokens, {name}, peak {peak or 'unknown'} TFLOP/s, torch {torch.__version__}")
    rows = []
    for ckpt in (False, True):  # the same weights and optimizer settings; checkpointing wraps the layers in place
        if ckpt:
            apply_activation_checkpointing(model, block_class(model))
        r = {"activation_checkpointing": ckpt, **time_stack(model, batch, args, device, peak)}
        rows.append(r)
        mem = f"{r['peak_mem_gb']:>6.1f}" if "peak_mem_gb" in r else f"{'-':>6}"
        act = f"{r['fwd_bwd_peak_gb']:>6.1f}" if "fwd_bwd_peak_gb" in r else f"{'-':>6}"
        mfu = f"{r['mfu']:>6.1%}" if "mfu" in r else f"{'-':>6}"
        print(f"  checkpointing {'on ' if ckpt else 'off'}: {r['tokens_per_s']:>9.0f} tokens/s {r['step_ms']:>9.1f} ms/step"
              f"  MFU {mfu}  peak GiB: step {mem}, forward+backward {act}  (loss {r['loss']:.3f})", flush=True)
    return rows


def spread(values, fmt: str = ".0f") -> str:
    """median [min-max]"""
    return f"{statistics.median(values):{fmt}} [{min(values):{fmt}}-{max(values):{fmt}}]"


def run_tiny_variants(args) -> None:
    import torch

    from worldvla.train.tiny_data import make_tiny_data

    data = make_tiny_data(args.out / "data")
    torch.set_num_threads(args.threads)  # after pretokenize, which sets its own thread count in-process
    variants = {
        "random order, checkpointing": ["data.batching=random"],
        "length_grouped, checkpointing": ["data.batching=length_grouped"],
        "length_grouped, no checkpointing": ["data.batching=length_grouped", "model.activation_checkpointing=false"],
    }
    print(f"tiny model ({ROOT / 'configs/tiny.yaml'}), batch 8, fp32, CPU threads {torch.get_num_threads()}, "
          f"{args.steps} steps each, {args.repeats} interleaved repeat(s); median [min-max] over the repeats")
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    for rep in range(args.repeats):  # interleaved: load drift from other jobs hits every variant alike
        for name, ov in variants.items():
            out = args.out / f"{name.replace(' ', '_').replace(',', '')}_r{rep}"
            r = run_tiny(data, out, args.steps, ov)
            r["load_avg"] = os.getloadavg()[0]
            runs[name].append(r)
            print(f"  repeat {rep} {name}: {r['tokens_per_s']:.0f} tokens/s (load {r['load_avg']:.1f})", flush=True)
    print(f"{'variant':<34} {'tokens/s':>22} {'step ms':>22} {'padding':>8}")
    for name, rs in runs.items():
        print(f"{name:<34} {spread([r['tokens_per_s'] for r in rs]):>22} {spread([r['step_ms'] for r in rs]):>22} "
              f"{statistics.mean(r['padding'] for r in rs):>8.1%}")
    base = runs["random order, checkpointing"]
    for name, rs in runs.items():  # per-repeat ratios against the official order (same load)
        ratios = [r["tokens_per_s"] / b["tokens_per_s"] for r, b in zip(rs, base)]
        print(f"  {name}: {spread(ratios, '.2f')}x the tokens/s of random order (per repeat)")
    loads = [r["load_avg"] for rs in runs.values() for r in rs]
    print(f"load average during the runs: {min(loads):.1f}-{max(loads):.1f}; "
          f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB:.2f} GB")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(runs, indent=1))
    print(f"\n7B ({seven_b_params() / 1e9:.2f} B parameters), FSDP full shard, bf16, activation checkpointing, "
          "batch 8 / GPU (computed, GB per GPU):")
    print(memory_table())
    print(json.dumps({"seven_b_params": seven_b_params()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("tiny", "7b"), default="tiny",
                        help="tiny: the real loop on tiny shards (CPU); 7b: a Chameleon-7B-width layer stack")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 40 tiny, 10 for 7b)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/worldvla_bench_train"), help="tiny: data and runs")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: per-core numbers)")
    parser.add_argument("--device", default="cpu", help="7b: cpu | cuda | cuda:N")
    parser.add_argument("--layers", type=int, default=8, help="7b: decoder layers (Chameleon-7B has 32)")
    parser.add_argument("--width", type=int, default=4096, help="7b: hidden size (4096 = real; smaller for a CPU check)")
    parser.add_argument("--batch", type=int, default=4, help="7b: samples per step (620 tokens each)")
    parser.add_argument("--chunk", type=int, default=5, help="7b: actions per sample K (5: 620 tokens, 10: 665)")
    parser.add_argument("--precision", choices=("autocast", "bf16"), default="autocast",
                        help="7b: autocast = fp32 weights + bf16 compute (official); bf16 = bf16 weights and states")
    parser.add_argument("--warmup", type=int, default=2, help="7b: untimed steps first")
    parser.add_argument("--peak-tflops", type=float, default=0.0, help="7b: device peak for MFU (0: from the GPU name)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    parser.add_argument("--repeats", type=int, default=1, help="tiny: interleaved repeats of the variants")
    args = parser.parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING)
    if args.model == "tiny":
        args.steps = args.steps or 40
        run_tiny_variants(args)
        return
    import torch

    torch.set_num_threads(args.threads)
    args.steps = args.steps or 10
    rows = run_stack(args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": rows}, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
