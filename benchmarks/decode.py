"""Decoding speed on a tiny random WorldVLA model (CPU): side-by-side ratios.

    python benchmarks/decode.py [--threads 1] [--repeats 5] [--compile] [--json out.json]

1. parallel vs sequential action-chunk decoding (K = 5 and 10) on an action prompt with two 256 px
   images (~580 tokens): forward steps after prefill and wall time (decode only, and with prefill);
2. per decode step: our mask rows (RowMasker, from block metadata) vs the official per-step mask
   (full L x L mask of the running ids, additive, last row) at a ~1,100-token context (one 512 px image);
3. sequential decoding with vs without the KV cache (both eager).
Times are minima over `--repeats` interleaved runs (prefill and decode separately; the machine is
shared); the compared variants are checked to produce the same tokens.
`--compile` runs every decode step through torch.compile (gpt-fast style; compile time excluded).
Results are recorded in benchmarks/README.md ("Decoding").
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from worldvla import vocab as V
from worldvla.model import generate as G
from worldvla.model.masks import ActionLayout, RowMasker
from worldvla.testing.tiny_model import make_tiny_model
from worldvla.tokenizers.image import image_token_count


def image_tokens(resolution: int, g: torch.Generator) -> list[int]:
    side = resolution // 16
    ids = [V.BOI_ID, V.size_token_id(side // 2), V.size_token_id(side // 2)]
    for _ in range(side):
        ids += torch.randint(4, 8196, (side,), generator=g).tolist() + [V.ROW_BREAK_ID]
    ids.append(V.EOI_ID)
    assert len(ids) == image_token_count(resolution)
    return ids


def action_prompt(n_images: int, resolution: int, seed: int) -> list[int]:
    """[BOS] text images E: the official action-model prompt shape with random ids."""
    g = torch.Generator().manual_seed(seed)
    ids = [V.BOS_ID] + torch.randint(16100, 16600, (20,), generator=g).tolist()
    for _ in range(n_images):
        ids += image_tokens(resolution, g)
    return ids + [V.END_OF_TURN_ID]


COMPILE = {"compile_step": False}  # set by --compile


def best_of(fns: dict, repeats: int) -> dict:
    """Run each `fn(stats)` `repeats` times, interleaved (load drift hits all alike). Per name: stats with
    the minimum prefill and the minimum decode time over the runs, and the output (identical each run)."""
    best: dict = {}
    for _ in range(repeats):
        for name, fn in fns.items():
            stats = G.DecodeStats()
            result = fn(stats)
            if name in best:
                stats.prefill_s = min(stats.prefill_s, best[name][0].prefill_s)
                stats.decode_s = min(stats.decode_s, best[name][0].decode_s)
            best[name] = (stats, result)
    return best


def bench_chunks(model, repeats: int) -> list[dict]:
    prompt = action_prompt(2, 256, seed=0)
    rows = []
    for K in (5, 10):
        res = best_of({mode: lambda st, K=K, mode=mode: G.decode_action_chunks(
            model, [prompt], K, mode, stats=st, **COMPILE) for mode in ("parallel", "sequential")}, repeats)
        assert torch.equal(res["parallel"][1], res["sequential"][1]), "parallel and sequential tokens differ"
        par, seq = res["parallel"][0], res["sequential"][0]
        rows.append({"K": K, "prompt_tokens": len(prompt), "prefill_ms": 1e3 * min(par.prefill_s, seq.prefill_s),
                     "parallel_steps": par.forward_steps, "sequential_steps": seq.forward_steps,
                     "step_ratio": seq.forward_steps / par.forward_steps,
                     "parallel_decode_ms": 1e3 * par.decode_s, "sequential_decode_ms": 1e3 * seq.decode_s,
                     "decode_speedup": seq.decode_s / par.decode_s,
                     "end_to_end_speedup": (seq.prefill_s + seq.decode_s) / (par.prefill_s + par.decode_s)})
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
        res = best_of({name: lambda st, prompts=prompts, dense=dense: G.decode_action_chunks(
            model, prompts, 4, "sequential", dense_official_mask=dense, stats=st, **COMPILE)
            for name, dense in (("rows", False), ("dense", True))}, repeats)
        assert torch.equal(res["rows"][1], res["dense"][1]), "masks gave different tokens"
        ms = {k: 1e3 * st.decode_s / st.forward_steps for k, (st, _) in res.items()}
        out[f"chunk_b{B}"] = {"rows_step_ms": ms["rows"], "dense_step_ms": ms["dense"],
                              "step_speedup": ms["dense"] / ms["rows"]}
    prompt = action_prompt(1, 512, seed=1) + [V.ACTION_START_ID]
    res = best_of({name: lambda st, dense=dense: G.generate_greedy(
        model, [prompt], steps + 1, eos_id=-1, dense_official_mask=dense, stats=st, **COMPILE)
        for name, dense in (("rows", False), ("dense", True))}, repeats)
    assert res["rows"][1] == res["dense"][1], "masks gave different tokens"
    ms = {k: 1e3 * st.decode_s / st.forward_steps for k, (st, _) in res.items()}
    out["greedy_b1"] = {"rows_step_ms": ms["rows"], "dense_step_ms": ms["dense"], "step_speedup": ms["dense"] / ms["rows"]}
    ids = prompt + [10102] * steps  # the mask construction alone, per step
    layout = G.planned_layouts([prompt], [], len(ids) + 1)
    out["mask_only_ms"] = {
        "rows_planned": min(_timed(lambda: RowMasker(layout, len(ids) + 1)(torch.tensor([[len(ids) - 1]])))
                            for _ in range(repeats)),
        "rows_rebuilt_from_ids": min(_timed(lambda: RowMasker([ActionLayout.from_ids(ids)], len(ids) + 1)(
            torch.tensor([[len(ids) - 1]]))) for _ in range(repeats)),
        "official_dense": min(_timed(lambda: G._official_rows([ids], len(ids) + 1, True, torch.float32, "cpu"))
                              for _ in range(repeats)),
    }
    return out


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return 1e3 * (time.perf_counter() - t0)


def bench_cache(model, repeats: int) -> dict:
    prompt = action_prompt(2, 256, seed=2)
    res = best_of({"cache": lambda st: G.decode_action_chunks(model, [prompt], 5, "sequential", stats=st),
                   "plain": lambda st: G.decode_action_chunks(model, [prompt], 5, "sequential", use_cache=False,
                                                              stats=st)}, repeats)
    (cached, a), (plain, b) = res["cache"], res["plain"]
    assert torch.equal(a, b), "cache and no-cache decoding differ"
    t_cache = cached.prefill_s + cached.decode_s
    return {"K": 5, "prompt_tokens": len(prompt), "cache_ms": 1e3 * t_cache, "no_cache_ms": 1e3 * plain.decode_s,
            "speedup": plain.decode_s / t_cache, "cache_steps": cached.forward_steps,
            "no_cache_steps": plain.forward_steps, "no_cache_tokens_processed": plain.tokens_fed}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: stable on a shared CPU)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--compile", action="store_true", help="torch.compile the one-token decode step")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    COMPILE["compile_step"] = args.compile
    model = make_tiny_model(seed=args.seed)
    cfg = model.cfg
    print(f"tiny model: {cfg.n_layers} layers, width {cfg.dim}, {cfg.n_heads} heads, vocab {cfg.vocab_size}; "
          f"CPU {platform.processor() or platform.machine()}, {args.threads} thread(s), torch {torch.__version__}, "
          f"best of {args.repeats}{', compiled decode step' if args.compile else ', eager'}")
    G.decode_action_chunks(model, [action_prompt(1, 256, 9)], 2, "parallel")  # warm-up

    chunks = bench_chunks(model, args.repeats)
    print("\n1. action chunk decoding: parallel vs sequential (same tokens; decode = after prefill)")
    print(f"{'K':>3} {'prompt':>6} {'steps par/seq':>14} {'ratio':>6} {'prefill ms':>10} {'par ms':>7} "
          f"{'seq ms':>7} {'decode x':>9} {'with prefill x':>14}")
    for r in chunks:
        print(f"{r['K']:>3} {r['prompt_tokens']:>6} {r['parallel_steps']:>6}/{r['sequential_steps']:<7} "
              f"{r['step_ratio']:>6.1f} {r['prefill_ms']:>10.1f} {r['parallel_decode_ms']:>7.1f} "
              f"{r['sequential_decode_ms']:>7.1f} {r['decode_speedup']:>9.1f} {r['end_to_end_speedup']:>14.1f}")

    masks = bench_masks(model, args.repeats)
    print(f"\n2. per decode step at {masks['context_tokens']}+ tokens: our mask rows vs the official dense per-step mask")
    for key, label in [(k, k.replace("chunk_b", "action chunks, batch ").replace("greedy_b", "unconstrained, batch "))
                       for k in masks if k.startswith(("chunk_", "greedy_"))]:
        m = masks[key]
        print(f"   {label:<24} rows {m['rows_step_ms']:.2f} ms/step, dense {m['dense_step_ms']:.2f} ms/step "
              f"-> {m['step_speedup']:.1f}x")
    mo = masks["mask_only_ms"]
    print(f"   mask alone, one row: planned rows {mo['rows_planned']:.3f} ms, rebuilt from ids "
          f"{mo['rows_rebuilt_from_ids']:.3f} ms, official dense {mo['official_dense']:.3f} ms")

    cache = bench_cache(model, args.repeats)
    print(f"\n3. sequential K=5 at {cache['prompt_tokens']} tokens: KV cache {cache['cache_ms']:.1f} ms (prefill + "
          f"{cache['cache_steps']} steps) vs no cache {cache['no_cache_ms']:.1f} ms ({cache['no_cache_steps']} full "
          f"passes, {cache['no_cache_tokens_processed']} tokens) -> {cache['speedup']:.1f}x")
    results = {"threads": args.threads, "repeats": args.repeats, "compile": args.compile, "chunks": chunks,
               "masks": masks, "cache": cache}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
