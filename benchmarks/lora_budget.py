"""LoRA fine-tuning of the 7B on one GPU (train.lora): computed memory budget and epoch time, and a CPU
measurement of the chunked cross entropy (train.loss_chunk).

1. Computed (no GPU needed): peak memory of one process fine-tuning Chameleon-7B with LoRA, at 256 / 512 px,
   batch 1-8, with and without activation checkpointing, whole or chunked CE; which of 24 / 40 / 48 / 80 GB
   GPUs it fits; time per epoch from a tokens/s figure (default: derived from the measured H200 number in
   benchmarks/README.md, see TOKENS_PER_S_NOTE; `--tokens-per-s` replaces it with your own).
2. `--measure-ce`, measured on CPU: the official loss over (1, T, 65536) bf16 logits whole and chunked, each in a
   fresh process: the loss difference and the peak RSS of forward + backward (the logits' share of the budget).
3. `--measure-layer`, measured on CPU: the bytes per token that one decoder layer keeps for backward (autograd's
   saved tensors, bf16 autocast, dropout on, with and without LoRA) at 1/8 of the 7B width; the table scales
   LAYER_BYTES_PER_TOKEN (recorded from this measurement) by 8.

    python benchmarks/lora_budget.py [--rank 32] [--samples 108000] [--tokens-per-s 6700] [--measure-ce] [--measure-layer]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from train import SEVEN_B, seven_b_params

GB = 1e9
GPUS_GB = (24, 40, 48, 80)
HEADROOM = 0.9  # assumption: ~10 % of the card goes to the CUDA context, cuBLAS workspaces and fragmentation
SEQ = {256: 620, 512: 2190}  # action-sample tokens (official layout, K=5), as in the FSDP table
TARGETS = {"q_proj": ("dim", "dim"), "k_proj": ("dim", "dim"), "v_proj": ("dim", "dim"), "o_proj": ("dim", "dim"),
           "gate_proj": ("dim", "ffn"), "up_proj": ("dim", "ffn"), "down_proj": ("ffn", "dim")}
# benchmarks/README.md, H200, 8 layers of 7B width, full fine-tuning, fp32 weights + bf16 autocast, activation
# checkpointing on: 16,263 tokens/s for 2.16 B parameters (~8 N FLOPs per token: forward, recompute, backward
# for activations and weights). LoRA with checkpointing does ~6 N (no weight gradients of the base), so at the
# same MFU the 7.01 B model would run 16263 * (8 * 2.16) / (6 * 7.01) ~ 6,700 tokens/s. Derived, not measured.
MEASURED_STACK_TOKENS_PER_S, MEASURED_STACK_PARAMS = 16263, 2.16e9
# --measure-layer on CPU (torch 2.13), width 512 / ffn 1376 / 4 heads of 128 (the 7B's shape at 1/8 width):
# bytes per token one decoder layer keeps for backward, frozen bf16 weights, bf16 autocast, dropout 0.05
# (residual and LoRA), no L x L attention matrix. The FSDP table's ~(10 d + 4 ffn) x 2 gives 21,248 for the base.
LAYER_BYTES_PER_TOKEN = {"base": 20600, "lora": 47400}
LAYER_WIDTH = 512
TOKENS_PER_S_NOTE = ("derived from the measured H200 8-layer full-fine-tuning stack (16,263 tokens/s, "
                     "benchmarks/README.md) scaled by FLOPs per token (8 x 2.16 B -> 6 x 7.01 B); not measured")
SAMPLES_NOTE = ("assumption: ~450 training trajectories x ~120 frames x 2 sample kinds (action + world); the "
                "trainer logs the real count at start ('N samples ..., S steps per epoch')")


def lora_params(rank: int, targets=tuple(TARGETS), a: dict = SEVEN_B) -> int:
    """Adapter parameters: r x (in + out) per adapted linear, per layer."""
    return a["layers"] * sum(rank * (a[TARGETS[t][0]] + a[TARGETS[t][1]]) for t in targets)


def budget(batch: int, seq: int, rank: int = 32, checkpointing: bool = True, chunked_ce: bool = False,
           a: dict = SEVEN_B, ce_chunk: int = 256) -> dict:
    """Peak bytes (GB) of LoRA fine-tuning on one GPU (the layer term measured, scaled to the width)."""
    d, layers, vocab = a["dim"], a["layers"], a["vocab"]
    tokens = batch * seq
    base = 2 * seven_b_params(a)  # frozen weights in bf16 (no gradients, no optimizer state)
    adapters = 16 * lora_params(rank, a=a)  # fp32 weight 4 + gradient 4 + AdamW exp_avg, exp_avg_sq 8
    # one LoRA decoder layer's saved activations per token, measured at 1/8 width (LAYER_BYTES_PER_TOKEN: the
    # base's ~10 d + 4 ffn bf16 values, plus ~6 bytes per element of the adapters' 6 d-wide and one ffn-wide
    # inputs: peft's fp32 cast, dropout mask, autocast's bf16 copy); every term scales with the width
    per_layer = LAYER_BYTES_PER_TOKEN["lora"] * d / LAYER_WIDTH
    if checkpointing:
        acts = layers * tokens * d * 2 + tokens * per_layer  # every layer's bf16 input + one layer recomputed
    else:
        acts = layers * tokens * per_layer
    mask = batch * seq * seq * 3  # the action mask: bool (B, 1, T, T) and its additive bf16 form
    # loss: bf16 lm_head output, its fp32 copy and the fp32 gradient (10 bytes per logit); chunked: the bf16 logits
    # kept for the recompute and their bf16 gradient (4 bytes) + one chunk (B x ce_chunk positions) at 10 bytes
    logits = tokens * vocab * 10 if not chunked_ce else tokens * vocab * 4 + batch * min(ce_chunk, seq) * vocab * 10
    total = base + adapters + acts + mask + logits
    return {k: v / GB for k, v in {"base": base, "adapters": adapters, "activations": acts, "mask": mask,
                                     "logits": logits, "total": total}.items()}


def fits(total_gb: float) -> str:
    ok = [f"{g}" for g in GPUS_GB if total_gb <= HEADROOM * g]
    return ", ".join(ok) + " GB" if ok else "none (> 72 GB)"


def table(rank: int, chunked_ce: bool, ce_chunk: int = 256) -> str:
    head = ("| px (tokens) | batch | act. ckpt | base bf16 | adapters+AdamW | activations | mask | logits+CE "
            "| total | fits (90 % of card) |")
    rows = [head, "|---|---|---|---|---|---|---|---|---|---|"]
    for px, seq in SEQ.items():
        for batch in (1, 2, 4, 8):
            for ckpt in (True, False):
                m = budget(batch, seq, rank, ckpt, chunked_ce, ce_chunk=ce_chunk)
                rows.append(f"| {px} ({seq}) | {batch} | {'on' if ckpt else 'off'} | {m['base']:.1f} | "
                            f"{m['adapters']:.2f} | {m['activations']:.1f} | {m['mask']:.2f} | {m['logits']:.1f} | "
                            f"**{m['total']:.1f} GB** | {fits(m['total'])} |")
    return "\n".join(rows)


def epoch_table(samples: int, tokens_per_s: float) -> str:
    rows = ["| px | tokens / sample | tokens / epoch | hours / epoch | hours / 40 epochs (official) |", "|---|---|---|---|---|"]
    for px, seq in SEQ.items():
        tokens = samples * seq
        hours = tokens / tokens_per_s / 3600
        rows.append(f"| {px} | {seq} | {tokens / 1e6:.1f} M | {hours:.1f} | {40 * hours:.0f} |")
    return "\n".join(rows)


def derived_tokens_per_s() -> float:
    n = seven_b_params()
    return MEASURED_STACK_TOKENS_PER_S * (8 * MEASURED_STACK_PARAMS) / (6 * n)


# -- 2. the chunked CE, measured on CPU --------------------------------------------------------------
def ce_child(seq: int, chunk: int) -> dict:
    """One fresh process: the official loss over (1, seq, 65536) bf16 logits, forward + backward."""
    import torch

    from worldvla.train.loss import LossConfig, compute_loss

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(1, seq, 64, generator=g).bfloat16()
    weight = (torch.randn(SEVEN_B["vocab"], 64, generator=g) * 0.5).bfloat16().requires_grad_()
    labels = torch.randint(3, 16000, (1, seq), generator=g)  # image codes (weight 0.04) and text / action ids
    labels[:, : seq // 4] = -100
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    logits = hidden @ weight.T  # (1, seq, V) bf16, as autocast's lm_head gives on a GPU
    out = compute_loss(logits, labels, LossConfig(chunk=chunk))
    del logits
    out.total.backward()
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"chunk": chunk, "loss": out.total.item(), "grad_sum": weight.grad.float().abs().sum().item(),
            "peak_mb": (peak - before) / 1024, "seconds": dt}


def measure_ce(seq: int, chunks: list[int]) -> list[dict]:
    res = []
    for chunk in [0, *chunks]:
        p = subprocess.run([sys.executable, __file__, "--ce-child", str(seq), str(chunk)], capture_output=True,
                           text=True, check=True, cwd=HERE.parent)
        res.append(json.loads(p.stdout.strip().splitlines()[-1]))
    return res


# -- 3. one decoder layer's saved activations, measured on CPU ---------------------------------------
def layer_bytes_per_token(width: int = LAYER_WIDTH, with_lora: bool = True, rank: int = 8) -> float:
    """Bytes per token that one training decoder layer saves for backward: the slope between two sequence
    lengths, so the (constant) weights and autocast's weight copies cancel out."""
    import torch

    from worldvla.model.config import ModelConfig
    from worldvla.model.transformer import DecoderLayer, rope_table
    from worldvla.train import lora
    from worldvla.train.config import LoraOptions

    a = SEVEN_B
    cfg = ModelConfig(vocab_size=256, dim=width, n_layers=1, n_heads=width // 128, n_kv_heads=width // 128,
                      intermediate_size=width * a["ffn"] // a["dim"], dropout=0.05)

    def saved(T: int) -> int:
        torch.manual_seed(0)
        holder = torch.nn.Module()
        holder.model = torch.nn.Module()
        holder.model.layers = torch.nn.ModuleList([DecoderLayer(cfg)])
        if with_lora:
            lora.apply(holder, LoraOptions(rank=rank), torch.bfloat16)
        else:
            holder.requires_grad_(False).to(torch.bfloat16)
        x = torch.randn(1, T, width, dtype=torch.bfloat16, requires_grad=True)
        cos, sin = rope_table(T, 128, 1e4)[:, torch.arange(T)[None]].to(x.dtype)[:, :, None]
        mask = torch.zeros(1, 1, T, T, dtype=torch.bfloat16).masked_fill_(
            ~torch.ones(T, T, dtype=torch.bool).tril(), torch.finfo(torch.bfloat16).min)
        kept = {}

        def pack(t):
            kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", torch.bfloat16):
            holder.model.layers[0].train()(x, cos, sin, mask, None)
        for t in (x, mask, cos, sin):  # the layer's inputs: held by the caller anyway
            kept.pop(t.untyped_storage().data_ptr(), None)
        return sum(kept.values())

    return (saved(256) - saved(128)) / 128


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rank", type=int, default=32, help="LoRA rank (all 7 projections of every layer adapted)")
    ap.add_argument("--samples", type=int, default=108000, help="training samples per epoch; " + SAMPLES_NOTE)
    ap.add_argument("--tokens-per-s", type=float, default=0.0, help="your measured LoRA tokens/s (0: derived)")
    ap.add_argument("--ce-chunk", type=int, default=256, help="train.loss_chunk of the chunked-CE table")
    ap.add_argument("--measure-ce", action="store_true", help="also measure the chunked CE on CPU")
    ap.add_argument("--ce-seq", type=int, default=SEQ[512], help="--measure-ce: positions (512 px sample: 2190)")
    ap.add_argument("--measure-layer", action="store_true", help="also measure one layer's saved bytes on CPU")
    ap.add_argument("--ce-child", nargs=2, type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.ce_child:
        print(json.dumps(ce_child(*args.ce_child)))
        return

    n = seven_b_params()
    print(f"Chameleon-7B: {n / 1e9:.2f} B parameters; LoRA rank {args.rank} on all 7 projections: "
          f"{lora_params(args.rank) / 1e6:.1f} M trainable ({100 * lora_params(args.rank) / n:.2f} %)\n")
    for chunked in (False, True):
        print(f"Peak memory, one GPU, {'chunked' if chunked else 'whole'} CE (train.loss_chunk="
              f"{args.ce_chunk if chunked else 0}), computed:\n")
        print(table(args.rank, chunked, args.ce_chunk) + "\n")
    tps = args.tokens_per_s or derived_tokens_per_s()
    note = "measured (--tokens-per-s)" if args.tokens_per_s else TOKENS_PER_S_NOTE
    print(f"Time per epoch at {tps:,.0f} tokens/s ({note}), {args.samples:,} samples ({SAMPLES_NOTE}):\n")
    print(epoch_table(args.samples, tps) + "\n")
    if args.measure_layer:
        base, with_lora = layer_bytes_per_token(with_lora=False), layer_bytes_per_token(with_lora=True)
        print(f"One decoder layer, width {LAYER_WIDTH}, saved for backward (CPU, bf16 autocast, dropout 0.05): "
              f"{base:,.0f} bytes/token without LoRA, {with_lora:,.0f} with LoRA rank 8 on all 7 projections "
              f"(recorded in LAYER_BYTES_PER_TOKEN: {LAYER_BYTES_PER_TOKEN})\n")
    if args.measure_ce:
        print(f"Chunked CE on CPU, (1, {args.ce_seq}, 65536) bf16 logits, forward + backward, one process each:\n")
        rows = ["| train.loss_chunk | loss | difference to whole | peak RSS MB | seconds |", "|---|---|---|---|---|"]
        res = measure_ce(args.ce_seq, [256, 1024])
        for r in res:
            rows.append(f"| {r['chunk']} | {r['loss']:.7f} | {abs(r['loss'] - res[0]['loss']):.1e} | "
                        f"{r['peak_mb']:.0f} | {r['seconds']:.1f} |")
        print("\n".join(rows))


if __name__ == "__main__":
    main()
