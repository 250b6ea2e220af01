"""Greedy decoding of action chunks with a static KV cache, and the pieces every decoder shares.

One step function (`step`): a forward of some query rows over the cache, then the greedy choice among
a head's ids and, if asked, the grammar flag: whether the unconstrained argmax over the whole vocabulary
would have left the head's id range (its own output, one bool per row). `decode_session` holds the
caches of one call and gives `step` either as it is (the eager reference: caches sized to the call and
freed after it) or wrapped at this call site by worldvla.model.static_step (`static=True`, implied by
`compile_step=True`): batch padded to a bucket, cache length rounded up to CACHE_BUCKET, caches kept
across calls, inputs copied into preallocated tensors; `compile_step=True` captures each step shape as
a CUDA graph on CUDA, and on CPU runs every decoder layer through one torch.compile'd function. Prefill
stays eager in both (its shape changes with every prompt length).

Parallel chunk decoding. Under the action mask (worldvla.model.masks) action block i sees the prompt
and its own tokens only, and every block is 9 tokens: [10004, 7 bins, 15004]. So after the prompt
(P tokens, ending with 8710) the K blocks are decoded together: step t feeds the t-th token of every
block as one K-token input at positions P + 9 i + t, writing each into the cache slot it would have
had sequentially, with mask rows that are exactly the rows of the full sequence's mask. 7 forward
steps after prefill instead of 9K - 1, and the same tokens as sequential decoding (tested).

Prompts of different lengths are right-padded (pad slots are masked: they are later positions of the
row's own action blocks, overwritten before they become visible). Cache slot = position throughout.
Free-running generation is worldvla.model.free_decode, image generation worldvla.model.image_decode;
how the official eval parses free generations is the policy's (worldvla.policy.official_decode).
Benchmark baselines (no KV cache, the official per-step dense mask) live in benchmarks/baselines.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial

import torch

from worldvla import vocab as V
from worldvla.model.grammar import outside_range
from worldvla.model.layout import ActionLayout
from worldvla.model.masks import RowMasker, to_additive
from worldvla.model.static_step import batch_bucket, static_decoder
from worldvla.model.transformer import Transformer
from worldvla.stats import ACTION_DIM  # tokens between an action block's start and end

# torch._dynamo (torch's compiler stack, ~2 s to import) is imported only when a model is compiled.

BLOCK_LEN = ACTION_DIM + 2  # [10004, 7 bins, 15004]
FIRST_BIN_ID, LAST_BIN_ID = V.ACTION_FIRST_BIN_ID, V.ACTION_LAST_BIN_ID  # 10006..10261 (official_format §2.2)
CACHE_BUCKET = 256  # compiled steps: cache lengths rounded up to this, so shapes (and graphs) repeat
COMPILED_SHAPES = 64  # dynamo graphs kept per compiled step


@dataclass
class DecodeStats:
    """Accumulated over calls: model calls after prefill, tokens fed, seconds in prefill / decode steps.
    `now` is the clock the seconds are read from (benchmarks pass time.process_time: CPU seconds)."""

    forward_steps: int = 0
    tokens_fed: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    now: Callable[[], float] = field(default=time.perf_counter, repr=False, compare=False)


def clock(device, now: Callable[[], float] = time.perf_counter) -> float:
    """`now()` after the device's queued work is done (CUDA runs asynchronously)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    return now()


def pad_right(prompts: list[list[int]], device, pad_id: int = V.PAD_ID) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, P_max) tokens right-padded with `pad_id`, (B,) lengths."""
    lengths = torch.tensor([len(p) for p in prompts], device=device)
    tokens = torch.full((len(prompts), int(lengths.max())), pad_id, dtype=torch.long, device=device)
    for b, p in enumerate(prompts):
        tokens[b, : len(p)] = torch.as_tensor(p, dtype=torch.long)
    return tokens, lengths


def planned_layouts(prompts: list[list[int]], suffix: list[int], length: int) -> list[ActionLayout]:
    """Layouts of prompt + suffix (the structure of what will be generated), over `length` slots."""
    return [ActionLayout(length, lay.blocks, lay.last_image_end)
            for lay in (ActionLayout.from_ids(list(p) + suffix) for p in prompts)]


def cache_length(model: Transformer, needed: int, static: bool) -> int:
    if needed > model.cfg.max_seq_len:
        raise ValueError(f"prompt + generation needs {needed} positions > max_seq_len {model.cfg.max_seq_len}")
    if not static:
        return needed
    return min(-(-needed // CACHE_BUCKET) * CACHE_BUCKET, model.cfg.max_seq_len)


def pad_batch(prompts: list[list[int]], static: bool) -> list[list[int]]:
    """Static steps run whole batch buckets: pad with copies of the last prompt (their rows are dropped)."""
    if not static:
        return list(prompts)
    return list(prompts) + [prompts[-1]] * (batch_bucket(len(prompts)) - len(prompts))


# -- the step --------------------------------------------------------------------------------------
# A `head` says which ids the greedy choice ranges over: an inclusive (lo, hi) id range, a 1-D id tensor,
# or None for the full vocabulary (with the model's image-logit masking, as Transformer.logits).
def choose(model: Transformer, hidden: torch.Tensor, head, grammar: bool = False):
    """Greedy ids among `head` from hidden states (..., dim), computing only the head's logits (ties: lowest
    position); with `grammar` (a (lo, hi) head) also the flag: the free argmax over the whole vocabulary
    lies outside lo..hi (worldvla.model.grammar). Returns (ids, flag | None)."""
    if head is None:
        return model.logits(hidden).argmax(-1), None
    if isinstance(head, tuple):
        lo, hi = head
        logits = model.logits(hidden, slice(lo, hi + 1))
        ids = logits.argmax(-1) + lo
        return ids, (outside_range(model, hidden, lo, hi, logits.amax(-1)) if grammar else None)
    if grammar:
        raise ValueError("the grammar flag needs an id-range head (lo, hi)")
    return head[model.logits(hidden, head).argmax(-1)], None


def step(model: Transformer, tokens, pos, mask, head, grammar: bool = False, run_layer=None):
    """One decode step: `tokens` (B, Lq) at positions `pos` (B, Lq) through the cache under the additive
    `mask` (B, 1, Lq, S) -> (greedy ids (B, Lq), grammar flag (B, Lq) bool or None); see `choose`."""
    return choose(model, model.forward_hidden(tokens, pos, mask, run_layer=run_layer), head, grammar)


def _run_layer(layer, x, cos, sin, mask, input_pos):
    return layer(x, cos, sin, mask, input_pos)


def compiled_layer_runner(model: Transformer):
    """One `torch.compile`d function that runs any decoder layer (regional compilation: compiled once per
    shape, not once per layer, so a 32-layer 7B compiles about as fast as a 2-layer model)."""
    run_layer = getattr(model, "_compiled_run_layer", None)
    if run_layer is None:
        import torch._dynamo

        # one graph per (batch, query rows, cache bucket): more than dynamo's default 8 in a long eval
        cfg = torch._dynamo.config
        name = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"
        setattr(cfg, name, max(getattr(cfg, name), COMPILED_SHAPES))
        run_layer = model._compiled_run_layer = torch.compile(_run_layer, dynamic=False)
    return run_layer


@contextmanager
def decode_session(model: Transformer, batch: int, length: int, compile_step: bool = False, static: bool = False):
    """Caches for one decode call; yields `run(tokens, pos, mask, head, grammar=False) -> (ids, flag)`: `step`
    on this model. static=False: the eager reference (caches freed afterwards; compile_step must be False).
    static=True: `step` wrapped by the static decoder (`batch`, `length` already bucketed), captured as CUDA
    graphs when compile_step on CUDA, with compiled layers when compile_step on CPU; its caches are kept."""
    if not static:
        if compile_step:
            raise ValueError("compile_step=True needs the static-shape step (static=True)")
        model.setup_caches(batch, length)
        try:
            yield partial(step, model)
        finally:
            model.clear_caches()
        return
    capture = compile_step and model.device.type == "cuda"
    run_layer = compiled_layer_runner(model) if compile_step and not capture else None
    yield static_decoder(model, capture, run_layer).runner(step, batch, length)


def resolve_static(compile_step: bool, static: bool | None) -> bool:
    return compile_step if static is None else bool(static) or compile_step


@torch.no_grad()
def prefill(model: Transformer, tokens: torch.Tensor, lengths: torch.Tensor, masker: RowMasker) -> torch.Tensor:
    """Run the prompts through the cache; final hidden state of each row's last prompt token (B, dim)."""
    P = tokens.shape[1]
    positions = torch.arange(P, device=tokens.device)
    mask = None  # no prompt row needs the action mask: SDPA's causal kernel, no mask tensor
    if not masker.causal_below(P):
        mask = to_additive(masker(positions)[..., :P], model.dtype)  # (B, 1, P, P)
    hidden = model.forward_hidden(tokens, input_pos=positions, mask=mask)  # (B, P, dim)
    return hidden[torch.arange(len(lengths)), lengths - 1]


# -- action chunks ---------------------------------------------------------------------------------
@torch.no_grad()
def decode_action_chunks(model: Transformer, prompts: list[list[int]], chunk_size: int, mode: str = "parallel",
                         action_mask: bool = True, compile_step: bool = False, stats: DecodeStats | None = None,
                         static: bool | None = None, grammar: list | None = None) -> torch.Tensor:
    """Constrained greedy decoding of K action blocks per prompt -> (B, K, 9) token ids.

    Block structure is forced (start, 7 ids in 10006..10261, end); `mode` is `parallel` or `sequential`.
    `static` (default: `compile_step`) runs the static-shape step (see the module docstring).
    `grammar` (a list, filled with one bool per prompt): whether the unconstrained argmax over the whole
    vocabulary, at the steps both modes compute (the first block's start after the prompt, every bin),
    would have left the action grammar, i.e. whether free (official) decoding could differ. Each step
    reports its flag (worldvla.model.grammar); once every prompt is flagged, later steps skip the check.
    """
    if mode not in ("parallel", "sequential"):
        raise ValueError(f"mode must be parallel or sequential here, got {mode!r}")
    if mode == "parallel" and not action_mask:
        raise ValueError("parallel chunk decoding is exact only under the action mask; use mode=sequential")
    static = resolve_static(compile_step, static)
    stats = stats if stats is not None else DecodeStats()
    n_prompts = len(prompts)
    prompts = pad_batch(prompts, static)
    device, K, B = model.device, chunk_size, len(prompts)
    tokens, lengths = pad_right(prompts, device)
    total = cache_length(model, int(lengths.max()) + BLOCK_LEN * K, static)
    block = [V.ACTION_START_ID] + [FIRST_BIN_ID] * ACTION_DIM + [V.ACTION_END_ID]
    layouts = planned_layouts(prompts, block * K, total)
    if mode == "parallel":
        for b, lay in enumerate(layouts):  # e.g. an unclosed image or action block in the prompt
            if len(lay.blocks) < K or lay.isolated()[-K:] != list(range(len(lay.blocks) - K, len(lay.blocks))):
                raise ValueError(f"prompt {b}: under its mask the generated action blocks see each other "
                                 "(an unclosed image/action span?); parallel decoding would not be exact: "
                                 "use mode=sequential")
    masker = RowMasker(layouts, total, action_mask, device)
    out = torch.full((B, K, BLOCK_LEN), V.ACTION_START_ID, dtype=torch.long, device=device)
    out[..., -1] = V.ACTION_END_ID
    bins = (FIRST_BIN_ID, LAST_BIN_ID)
    starts = lengths[:, None] + BLOCK_LEN * torch.arange(K, device=device)  # (B, K) block start positions
    left = torch.zeros(B, dtype=torch.bool, device=device)  # per prompt: the free argmax left the grammar
    left[n_prompts:] = True  # padding rows need no check
    check = grammar is not None

    def flag(rows_left: torch.Tensor | None) -> bool:
        """Fold one step's flags in; whether later steps still need the check (on CUDA always: no host
        sync per step)."""
        if rows_left is not None:
            left.logical_or_(rows_left.reshape(B, -1).any(1))
        return check and (device.type == "cuda" or not bool(left.all()))

    with decode_session(model, B, total, compile_step, static) as run:
        t0 = clock(device, stats.now)
        last = prefill(model, tokens, lengths, masker)
        if check:  # the free argmax after the prompt is the first block's start
            check = flag(choose(model, last, (V.ACTION_START_ID, V.ACTION_START_ID), grammar=True)[1])
        t1 = clock(device, stats.now)
        # every decode row at once: the layout is planned, so no per-step mask work (B, 1, K, 9, S)
        positions = starts[..., None] + torch.arange(BLOCK_LEN, device=device)  # (B, K, 9)
        rows = to_additive(masker(positions.reshape(B, -1)), model.dtype).view(B, 1, K, BLOCK_LEN, total)
        if mode == "parallel":
            for t in range(ACTION_DIM):  # feed token t of all K blocks, predict token t + 1
                nxt, rows_left = run(out[..., t], starts + t, rows[..., t, :], bins, check)  # (B, K)
                out[..., t + 1] = nxt
                check = flag(rows_left)
                stats.forward_steps += 1
                stats.tokens_fed += B * K
        else:
            for i in range(K):
                for t in range(BLOCK_LEN if i < K - 1 else BLOCK_LEN - 1):
                    pos = starts[:, i : i + 1] + t  # (B, 1)
                    mask = rows[:, :, i, t : t + 1]  # (B, 1, 1, S)
                    bin_step = t < ACTION_DIM  # later tokens are forced; the step only fills the cache
                    nxt, rows_left = run(out[:, i, t : t + 1], pos, mask, bins, check and bin_step)  # (B, 1)
                    if bin_step:
                        out[:, i, t + 1] = nxt[:, 0]
                        check = flag(rows_left)
                    stats.forward_steps += 1
                    stats.tokens_fed += B
        stats.prefill_s += t1 - t0
        stats.decode_s += clock(device, stats.now) - t1
    if grammar is not None:
        grammar[:] = left[:n_prompts].tolist()
    return out[:n_prompts]
