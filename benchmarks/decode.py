"""Decoding speed of a random WorldVLA model: side-by-side ratios (CPU tiny model, or a real-width GPU stack).

    python benchmarks/decode.py [--threads 1] [--repeats 5] [--compile] [--json out.json]
    PYTHONPATH=. python benchmarks/decode.py --device cuda --dtype bf16 --model 7b [--layers 32] --json out.json

1. parallel vs sequential action-chunk decoding (K = 5 and 10) on an action prompt with two 256 px
   images (~580 tokens): forward steps after prefill and time (decode only, and with prefill);
2. per decode step: our mask rows (RowMasker, from block metadata) vs the official per-step mask
   (full L x L mask of the running ids, additive, last row) at a ~1,100-token context (one 512 px image);
3. sequential decoding with vs without the KV cache (both eager);
4. (CUDA, or `--flex`) training-shape forward (and forward + backward) with the FlexAttention block
   mask vs the dense SDPA mask: max abs logit difference and times (compiled flex on CUDA).
Times are minima over `--repeats` interleaved runs (prefill and decode separately; the machine is
shared). On CPU in fp32 the compared variants must produce the same tokens (asserted); in bf16 or on
CUDA, kernels differ between batch shapes, so the fraction of equal tokens is reported instead.
`--model 7b` is Chameleon-7B's shape (width 4096, 32 heads, SwiGLU 11008, vocab 65536) with random
weights; `--layers` / `--width` scale it down (the FFN width scales with `--width`).
`--compile` runs every decoder layer of a decode step through one torch.compile'd function shared by all
layers (regional compilation; the first of the `--repeats` runs compiles, times are minima).
Results are recorded in benchmarks/README.md ("Decoding").
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling modules below, also when loaded by path

import baselines as BL
from flex_masks import flex_attention_in, flex_block_mask

from worldvla import vocab as V
from worldvla.model import generate as G
from worldvla.model import image_decode as ID
from worldvla.model.config import ModelConfig
from worldvla.model.masks import ActionLayout, RowMasker, batch_mask, to_additive
from worldvla.model.transformer import Transformer
from worldvla.testing.tiny_model import make_tiny_model

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
SECTIONS = ("chunks", "masks", "cache", "flex", "fastpath", "world")
RUN = {"compile_step": False, "exact": True}  # set from the command line in main()


def image_tokens(resolution: int, g: torch.Generator) -> list[int]:
    """A 256/512 px image span with random codes: boi, 2 size tokens, rows of codes + row break, eoi."""
    side = resolution // 16
    ids = [V.BOI_ID, V.size_token_id(side // 2), V.size_token_id(side // 2)]
    for _ in range(side):
        ids += torch.randint(V.FIRST_IMAGE_ID, V.FIRST_IMAGE_ID + V.NUM_IMAGE_CODES, (side,), generator=g).tolist() + [V.ROW_BREAK_ID]
    return ids + [V.EOI_ID]


def action_prompt(n_images: int, resolution: int, seed: int) -> list[int]:
    """[BOS] text images E: the official action-model prompt shape with random ids."""
    g = torch.Generator().manual_seed(seed)
    ids = [V.BOS_ID] + torch.randint(16100, 16600, (20,), generator=g).tolist()
    for _ in range(n_images):
        ids += image_tokens(resolution, g)
    return ids + [V.END_OF_TURN_ID]


def build_model(name: str, layers: int | None, width: int | None, dtype: torch.dtype, device: str,
                seed: int) -> Transformer:
    """`tiny` (worldvla.testing) or `7b` (Chameleon-7B shape, random init), eval mode, on `device`."""
    if name == "tiny":
        if layers is not None or width is not None:
            raise SystemExit("--layers / --width apply to --model 7b only")
        return make_tiny_model(seed=seed).to(device=device, dtype=dtype)
    full = ModelConfig.preset("7b")
    overrides = {"n_layers": layers or full.n_layers}
    if width is not None:
        if width % full.n_heads:
            raise SystemExit(f"--width {width} must be a multiple of the {full.n_heads} heads")
        ffn = round(full.intermediate_size * width / full.dim / 8) * 8  # scaled SwiGLU width
        overrides.update(dim=width, intermediate_size=ffn)
    cfg = ModelConfig.preset("7b", **overrides)
    torch.manual_seed(seed)
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build in place on the device: no fp32 copy of 7B weights on the host
    try:
        with torch.device(device):
            model = Transformer(cfg)
    finally:
        torch.set_default_dtype(before)
    return model.eval()


def same_tokens(a, b, what: str) -> float:
    """Fraction of equal tokens; in exact mode (CPU fp32) anything but 1.0 is a bug."""
    a = torch.as_tensor(a).cpu()
    b = torch.as_tensor(b).cpu()
    frac = float((a == b).float().mean()) if a.shape == b.shape else 0.0
    if RUN["exact"]:
        assert frac == 1.0, f"{what}: different tokens"
    elif frac < 1.0:
        print(f"   note: {what}: {100 * frac:.1f} % equal tokens (low-precision kernels differ by shape)")
    return frac


def best_of(fns: dict, repeats: int, warmup: bool = False) -> dict:
    """Run each `fn(stats)` `repeats` times, interleaved (load drift hits all alike). Per name: stats whose
    prefill_s / decode_s are the medians over the runs (`.runs`: every run's (prefill_s, decode_s)), and the
    output (identical each run). `warmup`: one untimed run of each first (compilation, graph capture)."""
    if warmup:
        for fn in fns.values():
            fn(BL.new_stats())
    runs: dict = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            stats = BL.new_stats()
            result = fn(stats)
            runs[name].append((stats, result))
    out = {}
    for name, rs in runs.items():
        stats = rs[-1][0]
        stats.runs = [(st.prefill_s, st.decode_s) for st, _ in rs]
        stats.prefill_s = statistics.median(p for p, _ in stats.runs)
        stats.decode_s = statistics.median(d for _, d in stats.runs)
        out[name] = (stats, rs[-1][1])
    return out


def spread(values) -> dict:
    """median and [min, max] of per-run values (times in ms or per-run ratios)."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def fmt(sp: dict, f: str = ".1f") -> str:
    return f"{sp['median']:{f}} [{sp['min']:{f}}-{sp['max']:{f}}]"


def bench_chunks(model, repeats: int) -> list[dict]:
    prompt = action_prompt(2, 256, seed=0)
    rows = []
    for K in (5, 10):
        res = best_of({mode: lambda st, K=K, mode=mode: G.decode_action_chunks(
            model, [prompt], K, mode, stats=st, compile_step=RUN["compile_step"])
            for mode in ("parallel", "sequential")}, repeats)
        equal = same_tokens(res["parallel"][1], res["sequential"][1], f"K={K} parallel vs sequential")
        par, seq = res["parallel"][0], res["sequential"][0]
        paired = list(zip(par.runs, seq.runs))  # the two modes of one repeat ran back to back
        rows.append({"K": K, "prompt_tokens": len(prompt), "prefill_ms": 1e3 * statistics.median(p for p, _ in par.runs + seq.runs),
                     "parallel_steps": par.forward_steps, "sequential_steps": seq.forward_steps,
                     "step_ratio": seq.forward_steps / par.forward_steps,
                     "parallel_decode_ms": 1e3 * par.decode_s, "sequential_decode_ms": 1e3 * seq.decode_s,
                     "decode_speedup": seq.decode_s / par.decode_s,
                     "end_to_end_speedup": (seq.prefill_s + seq.decode_s) / (par.prefill_s + par.decode_s),
                     "decode_speedup_spread": spread([s[1] / p[1] for p, s in paired]),
                     "end_to_end_speedup_spread": spread([sum(s) / sum(p) for p, s in paired]),
                     "parallel_decode_ms_spread": spread([1e3 * p[1] for p, _ in paired]),
                     "sequential_decode_ms_spread": spread([1e3 * s[1] for _, s in paired]),
                     "equal_tokens": equal})
    return rows


def bench_masks(model, repeats: int, steps: int = 32, batches=(1, 8)) -> dict:
    """Per decode step at ~1,100 tokens (one 512 px image): our mask rows vs the official per-step mask.

    a) constrained sequential action decoding (the policy path), batch 1 and 8: rows from the planned
       block layout, computed once per call;
    b) unconstrained greedy decoding, batch 1: rows rebuilt from the running ids every step.
    The baseline rebuilds the official mask of all ids so far each step and keeps its last row."""
    out = {"context_tokens": len(action_prompt(1, 512, seed=1))}
    for B in batches:
        prompts = [action_prompt(1, 512, seed=1 + b) for b in range(B)]
        res = best_of({name: lambda st, prompts=prompts, dense=dense: BL.decode_action_chunks(
            model, prompts, 4, "sequential", dense_official_mask=dense, stats=st, compile_step=RUN["compile_step"])
            for name, dense in (("rows", False), ("dense", True))}, repeats)
        equal = same_tokens(res["rows"][1], res["dense"][1], f"batch {B}: mask rows vs dense mask")
        ms = {k: 1e3 * st.decode_s / st.forward_steps for k, (st, _) in res.items()}
        out[f"chunk_b{B}"] = {"rows_step_ms": ms["rows"], "dense_step_ms": ms["dense"],
                              "step_speedup": ms["dense"] / ms["rows"], "equal_tokens": equal}
    prompt = action_prompt(1, 512, seed=1) + [V.ACTION_START_ID]
    res = best_of({name: lambda st, dense=dense: BL.generate_greedy(
        model, [prompt], steps + 1, eos_id=-1, dense_official_mask=dense, stats=st, compile_step=RUN["compile_step"])
        for name, dense in (("rows", False), ("dense", True))}, repeats)
    equal = same_tokens(res["rows"][1], res["dense"][1], "unconstrained: mask rows vs dense mask")
    ms = {k: 1e3 * st.decode_s / st.forward_steps for k, (st, _) in res.items()}
    out["greedy_b1"] = {"rows_step_ms": ms["rows"], "dense_step_ms": ms["dense"],
                        "step_speedup": ms["dense"] / ms["rows"], "equal_tokens": equal}
    out["mask_only_ms"] = mask_work_per_step(prompt, steps, repeats)
    return out


def mask_work_per_step(prompt: list[int], steps: int, repeats: int, chunk: int = 4) -> dict:
    """The mask work alone per decode step at this context (CPU), as each decoder does it:
    - planned: chunk decoding builds the RowMasker and all 9K rows once (additive), amortised per step;
    - incremental: unconstrained decoding, one row per step from a layout rebuilt at start/end tokens;
    - official: the full mask of the running ids, additive, last row, every step."""
    block = [V.ACTION_START_ID] + [G.FIRST_BIN_ID] * 7 + [V.ACTION_END_ID]
    S = len(prompt) + G.BLOCK_LEN * chunk
    layouts = G.planned_layouts([prompt], block * chunk, S)
    positions = torch.arange(len(prompt), S)[None]
    masker = RowMasker([ActionLayout.from_ids(prompt, open_until=S)], S)
    ids = prompt + [10102] * steps
    best = lambda fn: statistics.median([_timed(fn) for _ in range(repeats)])
    return {
        "planned": best(lambda: to_additive(RowMasker(layouts, S)(positions))) / (G.BLOCK_LEN * chunk - 1),
        "incremental": best(lambda: to_additive(masker(torch.tensor([[S - 1]])))),
        "official": best(lambda: BL.official_rows([ids], len(ids) + 1, True, torch.float32, "cpu")),
    }


def _timed(fn, device="cpu") -> float:
    t0 = BL.clock(device)
    fn()
    return 1e3 * (BL.clock(device) - t0)


def bench_cache(model, repeats: int) -> dict:
    prompt = action_prompt(2, 256, seed=2)
    res = best_of({"cache": lambda st: G.decode_action_chunks(model, [prompt], 5, "sequential", stats=st),
                   "plain": lambda st: BL.decode_action_chunks(model, [prompt], 5, "sequential", use_cache=False,
                                                              stats=st)}, repeats)
    (cached, a), (plain, b) = res["cache"], res["plain"]
    equal = same_tokens(a, b, "cache vs no-cache decoding")
    t_cache = cached.prefill_s + cached.decode_s
    return {"K": 5, "prompt_tokens": len(prompt), "cache_ms": 1e3 * t_cache, "no_cache_ms": 1e3 * plain.decode_s,
            "speedup": plain.decode_s / t_cache, "cache_steps": cached.forward_steps,
            "no_cache_steps": plain.forward_steps, "no_cache_tokens_processed": plain.tokens_fed,
            "equal_tokens": equal}


def training_batch(batch: int, chunk: int = 10, multiple: int = 128) -> tuple[list[list[int]], int]:
    """Action-model training samples (one 512 px image, K action blocks, E), padded to a multiple of
    the flex block size: ~1,200 tokens each, with the action mask active on the K blocks."""
    rows = []
    for b in range(batch):
        g = torch.Generator().manual_seed(100 + b)
        ids = action_prompt(1, 512, seed=100 + b)[: 21 - b]  # different text lengths per row
        ids += image_tokens(512, g) + [V.END_OF_TURN_ID]
        for _ in range(chunk):
            ids += [V.ACTION_START_ID] + torch.randint(G.FIRST_BIN_ID, G.LAST_BIN_ID + 1, (7,), generator=g).tolist() \
                + [V.ACTION_END_ID]
        rows.append(ids + [V.END_OF_TURN_ID])
    length = -(-max(map(len, rows)) // multiple) * multiple
    return rows, length


def bench_flex(model, repeats: int, batch: int, backward: bool, out: dict) -> dict:
    """Full-sequence forward (and forward + backward) with the dense SDPA mask vs the flex BlockMask.
    Fills `out` as it goes, so a failure (e.g. in compilation) keeps what was measured before it."""
    device = model.device
    rows, L = training_batch(batch)
    tokens, _ = G.pad_right(rows, device)
    tokens = torch.nn.functional.pad(tokens, (0, L - tokens.shape[1]), value=V.PAD_ID)
    out.update(batch=batch, tokens=L)
    out["flex_mask_first_build_ms"] = _timed(lambda: flex_block_mask(rows, L, device=device), device)  # one-time setup
    out["dense_mask_build_ms"] = min(_timed(lambda: batch_mask(rows, L).to(device), device) for _ in range(repeats))
    out["flex_mask_build_ms"] = min(_timed(lambda: flex_block_mask(rows, L, device=device), device)
                                    for _ in range(repeats))
    dense = batch_mask(rows, L).to(device)
    block = flex_block_mask(rows, L, device=device)
    masks = {"sdpa": dense, "flex": block}

    def run(m):  # the dense mask is made additive inside the timed forward, as the model used to do itself
        if m is block:
            with flex_attention_in(block):
                return model(tokens)
        return model(tokens, mask=to_additive(m, model.dtype))

    with torch.no_grad():
        logits = {k: run(m).float() for k, m in masks.items()}  # also compiles flex (CUDA)
    diff = (logits["sdpa"] - logits["flex"]).abs()
    out["max_abs_logit_diff"] = float(diff.max())
    out["logit_scale"] = float(logits["sdpa"].abs().max())
    out["argmax_agreement"] = float((logits["sdpa"].argmax(-1) == logits["flex"].argmax(-1)).float().mean())
    del logits, diff

    def forward(m):
        with torch.no_grad():
            run(m)

    def forward_backward(m):
        loss = run(m).float().logsumexp(-1).mean()
        loss.backward()
        model.zero_grad(set_to_none=True)

    cases = [("forward", forward)] + ([("forward_backward", forward_backward)] if backward else [])
    for label, fn in cases:
        fn(block)  # warm-up (compiles the backward kernels too)
        times = {k: min(_timed(lambda m=m, fn=fn: fn(m), device) for _ in range(repeats)) for k, m in masks.items()}
        out[f"{label}_ms"] = times
        out[f"{label}_flex_speedup"] = times["sdpa"] / times["flex"]
    return out


def world_prompt(resolution: int, seed: int) -> list[int]:
    """The world model's prompt shape: [BOS] text, the current frame, its action block, E."""
    g = torch.Generator().manual_seed(seed)
    action = [V.ACTION_START_ID] + torch.randint(G.FIRST_BIN_ID, G.LAST_BIN_ID + 1, (7,), generator=g).tolist()
    return action_prompt(1, resolution, seed)[:-1] + action + [V.ACTION_END_ID, V.END_OF_TURN_ID]


def step_variants(graph: bool) -> dict:
    """eager (the reference), static (the static-shape step, no capture) and, with `graph`, compile_step=True
    (CUDA graphs on CUDA, compiled layers on CPU)."""
    out = {"eager": {"static": False}, "static": {"static": True}}
    if graph:
        out["graph"] = {"compile_step": True}
    return out


def bench_fastpath(model, repeats: int, batches: list[int], graph: bool, Ks=(5, 10)) -> list[dict]:
    """Parallel K-action chunks at several batch sizes (prompts of different lengths), per step variant:
    chunk ms (prefill + 7 decode steps), decode ms per step, chunks/s, tokens equal to eager's."""
    rows = []
    for K in Ks:
        for B in batches:
            full = [action_prompt(2, 256, seed=10 + b) for b in range(B)]
            prompts = [ids[:1] + ids[1 + b % 4:] for b, ids in enumerate(full)]  # text 20..17 tokens: lengths differ
            res = best_of({name: lambda st, kw=kw, prompts=prompts, K=K: G.decode_action_chunks(
                model, prompts, K, "parallel", stats=st, **kw) for name, kw in step_variants(graph).items()},
                repeats, warmup=True)
            row = {"K": K, "batch": B, "prompt_tokens": [len(p) for p in prompts][:4]}
            for name, (st, out) in res.items():
                chunk = [1e3 * (p + d) for p, d in st.runs]
                row[name] = {"chunk_ms": spread(chunk), "prefill_ms": spread([1e3 * p for p, _ in st.runs]),
                             "decode_ms": spread([1e3 * d for _, d in st.runs]),
                             "step_ms": 1e3 * st.decode_s / st.forward_steps,
                             "chunks_per_s": B / (st.prefill_s + st.decode_s),
                             "equal_tokens_vs_eager": same_tokens(out, res["eager"][1], f"K={K} B={B} {name} vs eager")}
            if graph:
                row["graph"]["equal_tokens_vs_static"] = same_tokens(res["graph"][1], res["static"][1],
                                                                     f"K={K} B={B} graph vs static")
                paired = zip(res["eager"][0].runs, res["graph"][0].runs)
                row["graph_speedup"] = spread([sum(e) / sum(g) for e, g in paired])
            rows.append(row)
            print_fastpath([row], header=len(rows) == 1)
    return rows


def bench_world(model, repeats: int, resolution: int, graph: bool) -> dict:
    """The world model's next frame (constrained image generation, resolution px), per step variant."""
    side = resolution // 16
    prompt = world_prompt(resolution, seed=5)
    image_ids = torch.arange(4, 4 + V.NUM_IMAGE_CODES)
    out = {"resolution": resolution, "prompt_tokens": len(prompt), "generated_tokens": len(ID.image_span_plan(side, side))}
    results = {}
    for name, kw in step_variants(graph).items():
        ID.generate_image(model, [prompt], side, side, image_ids, **kw)  # warm-up / capture
        times = [_timed(lambda kw=kw, name=name: results.__setitem__(
            name, ID.generate_image(model, [prompt], side, side, image_ids, **kw)), model.device) for _ in range(repeats)]
        out[name] = {"frame_ms": spread(times),
                     "equal_tokens_vs_eager": same_tokens(results[name], results["eager"], f"world {name} vs eager")}
    return out


def print_fastpath(rows, header: bool = True):
    if header:
        print("\n5. parallel chunks per step variant: chunk ms = prefill + 7 steps, median [min-max]; equal = tokens "
              "as eager")
    for r in rows:
        parts = [f"{name} {fmt(r[name]['chunk_ms'])} ms ({r[name]['step_ms']:.2f} ms/step, "
                 f"{r[name]['chunks_per_s']:.1f} chunks/s, equal {r[name]['equal_tokens_vs_eager']:.3f})"
                 for name in ("eager", "static", "graph") if name in r]
        extra = f"; graph {fmt(r['graph_speedup'], '.2f')}x eager" if "graph_speedup" in r else ""
        print(f"   K={r['K']:<2} batch {r['batch']:>2}: " + "; ".join(parts) + extra, flush=True)


def print_world(w):
    print(f"\n6. world model next frame at {w['resolution']} px ({w['generated_tokens']} tokens after a "
          f"{w['prompt_tokens']}-token prompt): " + "; ".join(
              f"{name} {fmt(w[name]['frame_ms'], '.0f')} ms (equal {w[name]['equal_tokens_vs_eager']:.3f})"
              for name in ("eager", "static", "graph") if name in w))


def describe(args, model) -> str:
    cfg = model.cfg
    if args.device == "cuda":
        where = f"GPU {torch.cuda.get_device_name()}"
    else:
        where = f"CPU {platform.processor() or platform.machine()}, {args.threads} thread(s)"
    return (f"{args.model} model: {cfg.n_layers} layers, width {cfg.dim}, {cfg.n_heads} heads, FFN "
            f"{cfg.intermediate_size}, vocab {cfg.vocab_size}, {args.dtype}; {where}, torch {torch.__version__}, "
            f"median of {args.repeats} interleaved runs{', compiled decode step' if args.compile else ', eager'}, "
            f"{args.clock} clock")


def print_chunks(chunks):
    print("\n1. action chunk decoding: parallel vs sequential (decode = after prefill)")
    print(f"{'K':>3} {'prompt':>6} {'steps par/seq':>14} {'ratio':>6} {'prefill ms':>10} {'par ms':>7} "
          f"{'seq ms':>7} {'decode x':>9} {'with prefill x':>14} {'equal':>6}")
    for r in chunks:
        print(f"{r['K']:>3} {r['prompt_tokens']:>6} {r['parallel_steps']:>6}/{r['sequential_steps']:<7} "
              f"{r['step_ratio']:>6.1f} {r['prefill_ms']:>10.1f} {r['parallel_decode_ms']:>7.1f} "
              f"{r['sequential_decode_ms']:>7.1f} {r['decode_speedup']:>9.1f} {r['end_to_end_speedup']:>14.1f} "
              f"{r['equal_tokens']:>6.3f}")
        print(f"    per repeat: decode speed-up {fmt(r['decode_speedup_spread'], '.2f')}x, with prefill "
              f"{fmt(r['end_to_end_speedup_spread'], '.2f')}x; parallel {fmt(r['parallel_decode_ms_spread'])} ms, "
              f"sequential {fmt(r['sequential_decode_ms_spread'])} ms")


def print_masks(masks):
    print(f"\n2. per decode step at {masks['context_tokens']}+ tokens: our mask rows vs the official dense per-step mask")
    for key in [k for k in masks if k.startswith(("chunk_", "greedy_"))]:
        m = masks[key]
        label = key.replace("chunk_b", "action chunks, batch ").replace("greedy_b", "unconstrained, batch ")
        print(f"   {label:<24} rows {m['rows_step_ms']:.2f} ms/step, dense {m['dense_step_ms']:.2f} ms/step "
              f"-> {m['step_speedup']:.1f}x")
    mo = masks["mask_only_ms"]
    print(f"   mask work alone per step: planned rows {mo['planned']:.4f} ms, incremental rows "
          f"{mo['incremental']:.4f} ms, official dense {mo['official']:.3f} ms "
          f"-> {mo['official'] / mo['planned']:.0f}x / {mo['official'] / mo['incremental']:.0f}x")


def print_cache(cache):
    print(f"\n3. sequential K=5 at {cache['prompt_tokens']} tokens: KV cache {cache['cache_ms']:.1f} ms (prefill + "
          f"{cache['cache_steps']} steps) vs no cache {cache['no_cache_ms']:.1f} ms ({cache['no_cache_steps']} full "
          f"passes, {cache['no_cache_tokens_processed']} tokens) -> {cache['speedup']:.1f}x")


def print_flex(flex):
    print(f"\n4. training shape, batch {flex['batch']} x {flex['tokens']} tokens: flex block mask vs dense SDPA mask")
    if "error" in flex:
        print(f"   FAILED: {flex['error']}")
    if "max_abs_logit_diff" not in flex:
        return
    print(f"   max |logit diff| {flex['max_abs_logit_diff']:.3g} (logits up to {flex['logit_scale']:.3g}), "
          f"argmax agreement {100 * flex['argmax_agreement']:.2f} %")
    print(f"   mask build: dense {flex['dense_mask_build_ms']:.1f} ms, flex {flex['flex_mask_build_ms']:.1f} ms "
          f"(first call {flex['flex_mask_first_build_ms']:.0f} ms: one-time setup)")
    for label in ("forward", "forward_backward"):
        if f"{label}_ms" in flex:
            t = flex[f"{label}_ms"]
            print(f"   {label:<16} sdpa {t['sdpa']:.1f} ms, flex {t['flex']:.1f} ms -> {flex[f'{label}_flex_speedup']:.2f}x")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    ap.add_argument("--model", choices=("tiny", "7b"), default="tiny")
    ap.add_argument("--layers", type=int, default=None, help="--model 7b: decoder layers (default 32)")
    ap.add_argument("--width", type=int, default=None, help="--model 7b: hidden width (default 4096)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: stable on a shared CPU)")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per variant (default 5 on CPU, 3 on CUDA)")
    ap.add_argument("--clock", choices=("cpu", "wall"), default=None,
                    help="cpu: process CPU seconds (robust on a shared machine; single-threaded runs only), "
                         "wall: elapsed seconds (default: cpu on CPU with --threads 1, else wall)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--compile", action="store_true", help="torch.compile the one-token decode step")
    ap.add_argument("--flex", action=argparse.BooleanOptionalAction, default=None,
                    help="section 4, flex vs SDPA at training shape (default: on for CUDA only)")
    ap.add_argument("--flex-batch", type=int, default=4)
    ap.add_argument("--no-backward", action="store_true", help="section 4: time the forward only")
    ap.add_argument("--sections", default="chunks,masks,cache,flex",
                    help="comma-separated subset of chunks,masks,cache,flex (flex also needs CUDA or --flex)")
    ap.add_argument("--json", default=None, help="also write the results here (rewritten after each section)")
    ap.add_argument("--batches", default=None, help="fastpath: batch sizes (default 1,4,16 on CUDA, 1,3 on CPU)")
    ap.add_argument("--graph", action=argparse.BooleanOptionalAction, default=None,
                    help="fastpath/world: also compile_step=True (default: on for CUDA, where it captures CUDA graphs)")
    ap.add_argument("--world-resolution", type=int, default=256)
    ap.add_argument("--world-repeats", type=int, default=None, help="world: timed frames per variant (default --repeats)")
    args = ap.parse_args(argv)
    sections = set(args.sections.split(","))
    if sections - set(SECTIONS):
        raise SystemExit(f"--sections: unknown {sorted(sections - set(SECTIONS))}; valid: {','.join(SECTIONS)}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device visible to torch")
    args.repeats = args.repeats or (3 if args.device.startswith("cuda") else 5)
    args.flex = args.device.startswith("cuda") if args.flex is None else args.flex
    args.graph = args.device.startswith("cuda") if args.graph is None else args.graph
    args.batches = [int(b) for b in (args.batches or ("1,4,16" if args.device.startswith("cuda") else "1,3")).split(",")]
    if args.compile and args.repeats < 2:
        raise SystemExit("--compile needs --repeats >= 2: the first run of each shape compiles (times are minima)")
    torch.set_num_threads(args.threads)
    args.clock = args.clock or ("cpu" if args.device == "cpu" and args.threads == 1 else "wall")
    if args.clock == "cpu" and args.device != "cpu":
        raise SystemExit("--clock cpu measures host CPU time: use it with --device cpu")
    before = BL.TIMER["now"]
    BL.TIMER["now"] = time.process_time if args.clock == "cpu" else time.perf_counter
    try:
        return run(args, sections)
    finally:
        BL.TIMER["now"] = before  # main() may be called in-process (tests)


def run(args, sections: set[str]) -> dict:
    RUN["compile_step"] = args.compile
    RUN["exact"] = args.device == "cpu" and args.dtype == "fp32"
    model = build_model(args.model, args.layers, args.width, DTYPES[args.dtype], args.device, args.seed)
    print(describe(args, model), flush=True)
    results = {"setup": describe(args, model), "device": args.device, "dtype": args.dtype, "model": args.model,
               "layers": model.cfg.n_layers, "width": model.cfg.dim, "threads": args.threads,
               "repeats": args.repeats, "compile": args.compile, "clock": args.clock}

    def save(key, value, show):
        results[key] = value
        show(value)
        sys.stdout.flush()
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))

    def section(key, bench, show):
        """On CUDA a failing section is recorded and the others still run (device time is scarce);
        on CPU it raises (tests run this script)."""
        try:
            value = bench()
        except Exception as exc:
            if args.device == "cpu":
                raise
            print(f"\n{key}: FAILED {type(exc).__name__}: {exc}")
            results[f"{key}_error"] = f"{type(exc).__name__}: {exc}"
            return
        save(key, value, show)

    t_start = time.perf_counter()
    G.decode_action_chunks(model, [action_prompt(1, 256, 9)], 2, "parallel")  # warm-up
    if "chunks" in sections:
        section("chunks", lambda: bench_chunks(model, args.repeats), print_chunks)
    if "masks" in sections:
        section("masks", lambda: bench_masks(model, args.repeats), print_masks)
    if "cache" in sections:
        section("cache", lambda: bench_cache(model, args.repeats), print_cache)
    if "fastpath" in sections:
        section("fastpath", lambda: bench_fastpath(model, args.repeats, args.batches, args.graph), lambda rows: None)
    if "world" in sections:
        section("world", lambda: bench_world(model, args.world_repeats or args.repeats, args.world_resolution,
                                             args.graph), print_world)
    if args.flex and "flex" in sections:
        # FlexAttention has no CPU backward; on CPU it runs eager (unfused): a correctness check only
        backward = not args.no_backward and model.device.type == "cuda"
        flex = {"batch": args.flex_batch, "tokens": 0}
        try:
            bench_flex(model, args.repeats, args.flex_batch, backward, flex)
        except Exception as exc:  # noqa: BLE001 -- a failed compile must not lose sections 1-3
            flex["error"] = f"{type(exc).__name__}: {exc}"
        save("flex", flex, print_flex)
    results["total_s"] = time.perf_counter() - t_start
    print(f"\ntotal {results['total_s']:.0f} s" + (f"; wrote {args.json}" if args.json else ""))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
