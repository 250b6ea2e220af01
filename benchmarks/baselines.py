"""The decoders' benchmark baselines, outside the package (which keeps only what eval/serve/imagine run).

- `decode_action_chunks(..., use_cache=False)`: sequential decoding that re-runs the whole growing
  sequence every step (no KV cache);
- `dense_official_mask=True` (`decode_action_chunks` sequential, `generate_greedy`): every step's mask
  row rebuilt the official way, the full L x L mask of the running ids (tests/reference_masks.py, the
  literal official loops), additive, last row;
- `TIMER` / `new_stats()` / `clock()`: the clock the timings are read from (`time.process_time` for
  `--clock cpu`: CPU seconds, robust to a shared machine).
Both wrappers take worldvla.model.generate's arguments and call it unchanged when no baseline is asked
for, so benchmarks/decode.py times every variant through one signature. The baselines are eager
(`static=False`) and produce the same tokens as the package's decoders (tested in tests/test_model_decode.py).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script or loaded by file path: the tests' oracle is `tests.reference_masks`
    sys.path.insert(0, str(ROOT))

from tests.reference_masks import reference_mask
from worldvla import vocab as V
from worldvla.model import free_decode as FD
from worldvla.model import generate as G
from worldvla.model.masks import RowMasker, to_additive
from worldvla.stats import ACTION_DIM

TIMER = {"now": time.perf_counter}  # decode.py --clock cpu switches it to time.process_time


def new_stats() -> G.DecodeStats:
    """Stats whose seconds come from TIMER's clock."""
    return G.DecodeStats(now=TIMER["now"])


def clock(device="cpu") -> float:
    """TIMER's reading after the device's queued work is done."""
    return G.clock(device, TIMER["now"])


def official_rows(seqs: list[list[int]], num_keys: int, action_mask: bool, dtype, device) -> torch.Tensor:
    """The official per-step mask (B, 1, 1, S): the full mask of the running ids, additive, last row only."""
    rows = torch.zeros(len(seqs), 1, 1, num_keys, dtype=dtype, device=device)
    rows.fill_(torch.finfo(dtype).min)
    for b, s in enumerate(seqs):
        full = reference_mask(s) if action_mask else torch.tril(torch.ones(len(s), len(s), dtype=torch.bool))
        rows[b, 0, 0, : len(s)] = to_additive(full[-1].to(device), dtype)
    return rows


def decode_action_chunks(model, prompts: list[list[int]], chunk_size: int, mode: str = "parallel",
                         action_mask: bool = True, use_cache: bool = True, dense_official_mask: bool = False,
                         compile_step: bool = False, stats: G.DecodeStats | None = None,
                         static: bool | None = None, grammar: list | None = None) -> torch.Tensor:
    """generate.decode_action_chunks, or one of its baselines (sequential, eager, same tokens):
    `use_cache=False` re-runs the whole sequence every step; `dense_official_mask=True` rebuilds each
    step's mask row the official way."""
    if use_cache and not dense_official_mask:
        return G.decode_action_chunks(model, prompts, chunk_size, mode, action_mask=action_mask,
                                      compile_step=compile_step, stats=stats, static=static, grammar=grammar)
    if mode not in ("parallel", "sequential"):
        raise ValueError(f"mode must be parallel or sequential here, got {mode!r}")
    if mode == "parallel" and dense_official_mask:
        raise ValueError("dense_official_mask is a sequential-decoding baseline")
    if G.resolve_static(compile_step, static):
        raise ValueError("use_cache=False and dense_official_mask=True are eager baselines (static=False)")
    if mode != "sequential" or grammar is not None:
        raise ValueError("the baselines are supported for mode=sequential without the grammar check only")
    stats = stats if stats is not None else G.DecodeStats()
    device, K = model.device, chunk_size
    tokens, lengths = G.pad_right(prompts, device)
    total = G.cache_length(model, int(lengths.max()) + G.BLOCK_LEN * K, False)
    block = [V.ACTION_START_ID] + [G.FIRST_BIN_ID] * ACTION_DIM + [V.ACTION_END_ID]
    masker = RowMasker(G.planned_layouts(prompts, block * K, total), total, action_mask, device)
    out = torch.full((len(prompts), K, G.BLOCK_LEN), V.ACTION_START_ID, dtype=torch.long, device=device)
    out[..., -1] = V.ACTION_END_ID  # (B, K, 9): starts and ends forced, bins filled in below
    if not use_cache:
        return _sequential_nocache(model, tokens, lengths, out, masker, stats)
    return _sequential_dense(model, prompts, tokens, lengths, out, masker, total, action_mask, stats)


def _greedy_bin(model, hidden: torch.Tensor) -> torch.Tensor:
    """Greedy bin id (10006..10261) from hidden states, computing only those logits."""
    return model.logits(hidden, slice(G.FIRST_BIN_ID, G.LAST_BIN_ID + 1)).argmax(-1) + G.FIRST_BIN_ID


@torch.no_grad()
def _sequential_nocache(model, tokens, lengths, out, masker, stats) -> torch.Tensor:
    """Sequential decoding that re-runs the full (growing) sequence each step: no KV cache."""
    B, K = out.shape[:2]
    t0 = G.clock(tokens.device, stats.now)
    rows = torch.arange(B, device=tokens.device)
    seq = torch.cat([tokens, torch.zeros(B, G.BLOCK_LEN * K, dtype=torch.long, device=tokens.device)], 1)
    for i in range(K):
        base = lengths + G.BLOCK_LEN * i  # (B,) position of block i's start token
        for t in range(ACTION_DIM):
            seq[rows, base + t] = out[:, i, t]
            L = int((base + t).max()) + 1
            positions = torch.arange(L, device=tokens.device)
            mask = to_additive(masker(positions)[..., :L], model.dtype)
            hidden = model.forward_hidden(seq[:, :L], mask=mask)  # (B, L, dim)
            out[:, i, t + 1] = _greedy_bin(model, hidden[rows, base + t])
            stats.forward_steps += 1
            stats.tokens_fed += B * L
        for t in (ACTION_DIM, ACTION_DIM + 1):
            seq[rows, base + t] = out[:, i, t]
    stats.decode_s += G.clock(tokens.device, stats.now) - t0
    return out


@torch.no_grad()
def _sequential_dense(model, prompts, tokens, lengths, out, masker, total, action_mask, stats) -> torch.Tensor:
    """Cached sequential decoding whose every step's mask row is the official one of the running ids."""
    B, K = out.shape[:2]
    device = model.device
    starts = lengths[:, None] + G.BLOCK_LEN * torch.arange(K, device=device)  # (B, K) block start positions
    bins = (G.FIRST_BIN_ID, G.LAST_BIN_ID)
    with G.decode_session(model, B, total) as run:
        t0 = G.clock(device, stats.now)
        G.prefill(model, tokens, lengths, masker)
        t1 = G.clock(device, stats.now)
        for i in range(K):
            for t in range(G.BLOCK_LEN if i < K - 1 else G.BLOCK_LEN - 1):
                running = [list(p) + out[b, :i].flatten().tolist() + out[b, i, : t + 1].tolist()
                           for b, p in enumerate(prompts)]
                mask = official_rows(running, total, action_mask, model.dtype, device)  # (B, 1, 1, S)
                nxt, _ = run(out[:, i, t : t + 1], starts[:, i : i + 1] + t, mask, bins)  # (B, 1)
                if t < ACTION_DIM:  # later tokens are forced; the step only fills the cache
                    out[:, i, t + 1] = nxt[:, 0]
                stats.forward_steps += 1
                stats.tokens_fed += B
        stats.prefill_s += t1 - t0
        stats.decode_s += G.clock(device, stats.now) - t1
    return out


@torch.no_grad()
def generate_greedy(model, prompts: list[list[int]], max_new_tokens: int = FD.OFFICIAL_MAX_NEW_TOKENS,
                    eos_id: int = V.END_OF_TURN_ID, action_mask: bool = True, dense_official_mask: bool = False,
                    compile_step: bool = False, stats: G.DecodeStats | None = None,
                    static: bool | None = None) -> list[list[int]]:
    """free_decode.generate_greedy, or (`dense_official_mask=True`) the same loop with every step's mask row
    rebuilt the official way (full L x L mask of the running ids, additive, last row): same result."""
    if not dense_official_mask:
        return FD.generate_greedy(model, prompts, max_new_tokens, eos_id, action_mask=action_mask,
                                  compile_step=compile_step, stats=stats, static=static)
    if G.resolve_static(compile_step, static):
        raise ValueError("dense_official_mask=True is an eager baseline (static=False)")
    stats = stats if stats is not None else G.DecodeStats()
    device, B = model.device, len(prompts)
    tokens, lengths = G.pad_right(prompts, device)
    total = G.cache_length(model, int(lengths.max()) + max_new_tokens, False)
    seqs = [list(p) for p in prompts]
    done = [False] * B
    with G.decode_session(model, B, total) as run:
        t0 = G.clock(device, stats.now)
        masker = RowMasker(G.planned_layouts(prompts, [], total), total, action_mask, device)
        nxt, _ = G.choose(model, G.prefill(model, tokens, lengths, masker), None)  # (B,)
        t1 = G.clock(device, stats.now)
        for i in range(max_new_tokens):
            for b, tok in enumerate(nxt.tolist()):
                if not done[b]:
                    seqs[b].append(int(tok))
                    done[b] = seqs[b][-1] == eos_id
            if all(done) or i == max_new_tokens - 1:
                break
            mask = official_rows(seqs, total, action_mask, model.dtype, device)  # (B, 1, 1, S)
            nxt = run(nxt[:, None], (lengths + i)[:, None], mask, None)[0][:, 0]
            stats.forward_steps += 1
            stats.tokens_fed += B
        stats.prefill_s += t1 - t0
        stats.decode_s += G.clock(device, stats.now) - t1
    return [s[len(p):] for s, p in zip(seqs, prompts)]
