"""Greedy decoding with a static KV cache: action chunks (parallel or sequential), official
generate-then-parse, and constrained image generation for the world model.

Modes of action decoding (worldvla.policy.decode.DECODE_MODES): `parallel` and `sequential` force K well-formed blocks (bins
among 10006..10261); `official` is the official eval: free greedy generation (300 new tokens, stop at
8710) and the official parsing rule of the checkpoint's family (`parse_official`): WorldVLA executes
every block (longer ones cut to 7, a short one fails the episode when its turn comes), RynnVLA-002
executes the blocks up to the first one that is not 7 long. `unconstrained` is the older lenient
parse (every complete 7-token block, malformed ones skipped), kept for comparison.

Parallel chunk decoding. Under the action mask (worldvla.model.masks) action block i sees the prompt
and its own tokens only, and every block is 9 tokens: [10004, 7 bins, 15004]. So after the prompt
(P tokens, ending with 8710) the K blocks are decoded together: step t feeds the t-th token of every
block as one K-token input at positions P + 9 i + t, writing each into the cache slot it would have
had sequentially, with mask rows that are exactly the rows of the full sequence's mask. 7 forward
steps after prefill instead of 9K - 1, and the same tokens as sequential decoding (tested).

Prompts of different lengths are right-padded (pad slots are masked: they are later positions of the
row's own action blocks, overwritten before they become visible). Cache slot = position throughout.

Two step implementations run the same decode loops (`decode_session` yields either):
- eager (the reference): caches sized to the call and freed after it, one forward per step;
- static (`static=True`, implied by `compile_step=True`): worldvla.model.static_step: batch padded to a
  bucket, cache length rounded up to CACHE_BUCKET, caches kept across calls, inputs copied into
  preallocated tensors, the greedy choice inside the step. `compile_step=True` captures each step shape
  as a CUDA graph on CUDA, and on CPU runs every decoder layer through one torch.compile'd function.
Prefill stays eager in both (its shape changes with every prompt length).

Benchmark baselines (decoding without the KV cache, the official per-step dense mask) live in
benchmarks/baselines.py; this module holds only what eval, serve and imagine run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from worldvla import vocab as V
from worldvla.model.masks import ActionLayout, RowMasker, to_additive
from worldvla.model.static_step import GRAMMAR_FLAG, batch_bucket, greedy_ids, static_decoder
from worldvla.model.transformer import CAUSAL_PREFILL, Transformer
from worldvla.recipe import FAMILIES
from worldvla.spans import SpanError
from worldvla.stats import ACTION_DIM  # tokens between an action block's start and end
# torch._dynamo (torch's compiler stack, ~2 s to import) is imported only when a model is compiled.

BLOCK_LEN = ACTION_DIM + 2  # [10004, 7 bins, 15004]
FIRST_BIN_ID, LAST_BIN_ID = V.ACTION_FIRST_BIN_ID, V.ACTION_LAST_BIN_ID  # 10006..10261 (official_format §2.2)
OFFICIAL_MAX_NEW_TOKENS = 300  # official eval: action_steps (25) * 12
STRUCTURAL_IDS = frozenset((V.BOI_ID, V.EOI_ID, V.ACTION_START_ID, V.ACTION_END_ID))  # the mask changes only at these
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
def kv_session(model: Transformer, batch: int, length: int):
    """Eager static KV caches for one decode call (freed after it); yields the one-token step function."""
    model.setup_caches(batch, length)
    try:
        yield model.forward_hidden
    finally:
        model.clear_caches()


class EagerStepper:
    """Reference step: a forward over the call's caches, then the greedy choice among `head`'s ids."""

    def __init__(self, model: Transformer, forward):
        self.model, self.forward = model, forward

    def __call__(self, tokens, pos, mask, head) -> torch.Tensor:
        return greedy_ids(self.model, self.forward(tokens, input_pos=pos, mask=mask), head)


class StaticStepper:
    """Static step of one cache bucket (worldvla.model.static_step); same call signature as EagerStepper."""

    def __init__(self, decoder, bucket):
        self.decoder, self.bucket = decoder, bucket

    def __call__(self, tokens, pos, mask, head) -> torch.Tensor:
        return self.decoder.step(self.bucket, tokens.shape[1], head)(tokens, pos, mask)

    def constant(self, ids: torch.Tensor) -> torch.Tensor:
        return self.decoder.constant(ids)


@contextmanager
def decode_session(model: Transformer, batch: int, length: int, compile_step: bool = False, static: bool = False):
    """Yields `step(tokens (B, Lq), pos (B, Lq), additive mask (B, 1, Lq, S), head) -> greedy ids (B, Lq)`.

    static=False: the eager reference (caches freed afterwards; compile_step must be False). static=True:
    the static-shape step (`batch` and `length` already bucketed), captured as CUDA graphs when
    compile_step on CUDA, with compiled layers when compile_step on CPU; its caches are kept."""
    if not static:
        if compile_step:
            raise ValueError("compile_step=True needs the static-shape step (static=True)")
        with kv_session(model, batch, length) as forward:
            yield EagerStepper(model, forward)
        return
    capture = compile_step and model.device.type == "cuda"
    run_layer = compiled_layer_runner(model) if compile_step and not capture else None
    decoder = static_decoder(model, capture, run_layer)
    yield StaticStepper(decoder, decoder.bucket(batch, length))


def _static(compile_step: bool, static: bool | None) -> bool:
    return compile_step if static is None else bool(static) or compile_step


@torch.no_grad()
def prefill(model: Transformer, tokens: torch.Tensor, lengths: torch.Tensor, masker: RowMasker) -> torch.Tensor:
    """Run the prompts through the cache; final hidden state of each row's last prompt token (B, dim)."""
    P = tokens.shape[1]
    positions = torch.arange(P, device=tokens.device)
    if masker.causal_below(P):  # no prompt row needs the action mask: SDPA's causal kernel, no mask tensor
        mask = CAUSAL_PREFILL
    else:
        mask = masker(positions)[..., :P]  # (B, 1, P, P)
    hidden = model.forward_hidden(tokens, input_pos=positions, mask=mask)  # (B, P, dim)
    return hidden[torch.arange(len(lengths)), lengths - 1]


@torch.no_grad()
def decode_action_chunks(model: Transformer, prompts: list[list[int]], chunk_size: int, mode: str = "parallel",
                         action_mask: bool = True, compile_step: bool = False, stats: DecodeStats | None = None,
                         static: bool | None = None, grammar: list | None = None) -> torch.Tensor:
    """Constrained greedy decoding of K action blocks per prompt -> (B, K, 9) token ids.

    Block structure is forced (start, 7 ids in 10006..10261, end); `mode` is `parallel` or `sequential`.
    `static` (default: `compile_step`) runs the static-shape step (see the module docstring).
    `grammar` (a list, filled with one bool per prompt): whether the unconstrained argmax over the whole
    vocabulary, at the steps both modes compute (the first block's start after the prompt, every bin),
    would have left the action grammar, i.e. whether free (official) decoding could differ. It costs
    one full LM-head row per decoded token (inside the step: static_step.GRAMMAR_FLAG).
    """
    if mode not in ("parallel", "sequential"):
        raise ValueError(f"mode must be parallel or sequential here, got {mode!r}")
    if mode == "parallel" and not action_mask:
        raise ValueError("parallel chunk decoding is exact only under the action mask; use mode=sequential")
    static = _static(compile_step, static)
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
    check = grammar is not None
    left = torch.zeros(B, dtype=torch.bool, device=device)  # per prompt: argmax left the grammar somewhere
    head = ("grammar", *bins) if check else bins  # the bins' greedy choice, flagged where the free one is no bin
    with decode_session(model, B, total, compile_step, static) as step:
        t0 = clock(device, stats.now)
        last = prefill(model, tokens, lengths, masker)
        if check:
            left |= model.logits(last).argmax(-1) != V.ACTION_START_ID
        t1 = clock(device, stats.now)
        # every decode row at once: the layout is planned, so no per-step mask work (B, 1, K, 9, S)
        positions = starts[..., None] + torch.arange(BLOCK_LEN, device=device)  # (B, K, 9)
        rows = to_additive(masker(positions.reshape(B, -1)), model.dtype).view(B, 1, K, BLOCK_LEN, total)
        if mode == "parallel":
            for t in range(ACTION_DIM):  # feed token t of all K blocks, predict token t + 1
                nxt = step(out[..., t], starts + t, rows[..., t, :], head)  # (B, K)
                if check:
                    left |= (nxt >= GRAMMAR_FLAG).any(1)
                out[..., t + 1] = nxt % GRAMMAR_FLAG
                stats.forward_steps += 1
                stats.tokens_fed += B * K
        else:
            for i in range(K):
                for t in range(BLOCK_LEN if i < K - 1 else BLOCK_LEN - 1):
                    pos = starts[:, i : i + 1] + t  # (B, 1)
                    mask = rows[:, :, i, t : t + 1]  # (B, 1, 1, S)
                    nxt = step(out[:, i, t : t + 1], pos, mask, head)  # (B, 1)
                    if t < ACTION_DIM:  # later tokens are forced; the step only fills the cache
                        out[:, i, t + 1] = nxt[:, 0] % GRAMMAR_FLAG
                        if check:
                            left |= nxt[:, 0] >= GRAMMAR_FLAG
                    stats.forward_steps += 1
                    stats.tokens_fed += B
        stats.prefill_s += t1 - t0
        stats.decode_s += clock(device, stats.now) - t1
    if check:
        grammar[:] = left[:n_prompts].tolist()
    return out[:n_prompts]


def parse_action_blocks(ids: list[int]) -> list[list[int]]:
    """Official generate-then-parse: the ids between each 10004 and the next 15004 (a new 10004 restarts)."""
    blocks, start = [], None
    for i, tok in enumerate(ids):
        if tok == V.ACTION_START_ID:
            start = i
        elif tok == V.ACTION_END_ID and start is not None:
            blocks.append(list(ids[start + 1 : i]))
            start = None
    return blocks


@dataclass
class ParsedActions:
    """What the official eval loop executes from one generation: `blocks` (7 ids each) in order, then,
    if `failure` is set, the exception that ends the episode as a failure (the official loop catches
    any exception of a step, stops the episode and counts it as not successful)."""

    blocks: list[list[int]]
    failure: str | None = None


def _official_blocks(ids: list[int]) -> tuple[list[list[int]], str | None]:
    """The official parser (both repositories): `parse_action_blocks`, except that an end token before
    any start token raises there (its start index is never initialised)."""
    ids = [int(t) for t in ids]
    starts = [i for i, t in enumerate(ids) if t == V.ACTION_START_ID]
    ends = [i for i, t in enumerate(ids) if t == V.ACTION_END_ID]
    if ends and (not starts or ends[0] < starts[0]):
        return [], f"the official parser raises: end token {V.ACTION_END_ID} before any start token {V.ACTION_START_ID}"
    return parse_action_blocks(ids), None


def parse_official_worldvla(ids: list[int]) -> ParsedActions:
    """WorldVLA's eval loop: every parsed block is executed in order. A block longer than 7 is cut to
    its first 7 ids; one id is broadcast to all 7 dimensions (numpy broadcasting in the official
    un-normalisation); any other short block raises when its turn comes, after the earlier blocks ran.
    No block at all: the loop pops from an empty list and fails."""
    raw, failure = _official_blocks(ids)
    blocks: list[list[int]] = []
    if failure is None:
        for i, blk in enumerate(raw):
            if len(blk) >= ACTION_DIM:
                blocks.append(blk[:ACTION_DIM])
            elif len(blk) == 1:
                blocks.append(blk * ACTION_DIM)
            else:
                failure = (f"action block {i} has {len(blk)} ids: the official un-normalisation of a ({len(blk)},) "
                           f"action against ({ACTION_DIM},) statistics raises (WorldVLA rule)")
                break
    if failure is None and not blocks:
        failure = "no action block was generated: the official loop pops from an empty action list"
    return ParsedActions(blocks, failure)


def parse_official_rynnvla002(ids: list[int]) -> ParsedActions:
    """RynnVLA-002's eval loop: blocks are taken in order up to the first one that is not exactly 7 ids
    long (it and all later ones are dropped). No 7-id block first: the loop pops from an empty list
    and fails."""
    raw, failure = _official_blocks(ids)
    blocks: list[list[int]] = []
    if failure is None:
        for blk in raw:
            if len(blk) != ACTION_DIM:
                break
            blocks.append(blk)
    if failure is None and not blocks:
        failure = (f"no {ACTION_DIM}-id action block before the first malformed one: the official loop pops from "
                   "an empty action list (RynnVLA-002 rule)")
    return ParsedActions(blocks, failure)


def parse_official(ids: list[int], family: str) -> ParsedActions:
    """The official parsing rule of a checkpoint family (worldvla.recipe.FAMILIES)."""
    if family == "worldvla":
        return parse_official_worldvla(ids)
    if family == "rynnvla002":
        return parse_official_rynnvla002(ids)
    raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")


@torch.no_grad()
def generate_greedy(model: Transformer, prompts: list[list[int]], max_new_tokens: int = OFFICIAL_MAX_NEW_TOKENS,
                    eos_id: int = V.END_OF_TURN_ID, action_mask: bool = True, compile_step: bool = False, stats: DecodeStats | None = None,
                    static: bool | None = None, failures: list | None = None) -> list[list[int]]:
    """Unconstrained greedy generation until `eos_id` (kept) or `max_new_tokens`, as the official eval.

    Every step's mask row is the official rule's last row for all ids so far; the block layout behind it
    is re-derived only when an image/action start or end token was emitted (`ActionLayout.from_ids`).
    The stop test reads each step's ids on the host (one sync per step, also with the static step).

    A row whose start/end tokens cannot be paired (the official mask code raises inside generation)
    stops there: with a `failures` list, its reason is appended for that row only (None for the other
    rows) and the rest of the batch goes on; without one, the `SpanError` is raised as before.
    """
    static = _static(compile_step, static)
    stats = stats if stats is not None else DecodeStats()
    n_prompts = len(prompts)
    prompts = pad_batch(prompts, static)
    device, B = model.device, len(prompts)
    tokens, lengths = pad_right(prompts, device)
    total = cache_length(model, int(lengths.max()) + max_new_tokens, static)
    seqs = [list(p) for p in prompts]
    done = [False] * n_prompts + [True] * (B - n_prompts)  # padding rows never count
    failed: list[str | None] = [None] * B
    with decode_session(model, B, total, compile_step, static) as step:
        t0 = clock(device, stats.now)
        masker = RowMasker(planned_layouts(prompts, [], total), total, action_mask, device)
        nxt = greedy_ids(model, prefill(model, tokens, lengths, masker), None)  # (B,)
        t1 = clock(device, stats.now)
        for i in range(max_new_tokens):
            new = nxt.tolist()
            for b in range(B):
                if not done[b]:
                    seqs[b].append(int(new[b]))
                    done[b] = seqs[b][-1] == eos_id
            if all(done) or i == max_new_tokens - 1:
                break
            pos = (lengths + i)[:, None]  # (B, 1)
            if i == 0 or any(t in STRUCTURAL_IDS for t in new):  # layout changed
                layouts = _row_layouts(seqs, masker.layouts, total, failed, raise_first=failures is None)
                for b, why in enumerate(failed):
                    done[b] = done[b] or why is not None
                if all(done):
                    break
                masker = RowMasker(layouts, total, action_mask, device)
            mask = to_additive(masker(pos), model.dtype)  # (B, 1, 1, S)
            nxt = step(nxt[:, None], pos, mask, None)[:, 0]
            stats.forward_steps += 1
            stats.tokens_fed += B
        stats.prefill_s += t1 - t0
        stats.decode_s += clock(device, stats.now) - t1
    if failures is not None:
        failures.extend(failed[:n_prompts])
    return [s[len(p):] for s, p in zip(seqs[:n_prompts], prompts)]


def _row_layouts(seqs: list[list[int]], old: list[ActionLayout], total: int, failed: list[str | None],
                 raise_first: bool) -> list[ActionLayout]:
    """Each row's layout from its ids. A row the pairing rule rejects gets its reason in `failed` and keeps
    its old layout (it is done: its mask no longer matters), so one bad generation ends only its own row."""
    layouts = []
    for b, ids in enumerate(seqs):
        if failed[b] is None:
            try:
                layouts.append(ActionLayout.from_ids(ids, open_until=total))
                continue
            except SpanError as err:
                if raise_first:
                    raise
                failed[b] = (f"generation stopped: {err}; the official attention-mask code raises here and "
                             "the official loop fails the episode")
        layouts.append(old[b])
    return layouts


def image_span_plan(h_latent: int, w_latent: int, n_images: int = 1) -> list[int | None]:
    """Token plan of `n_images` consecutive generated images: structural ids, None where a VQ code is chosen."""
    head = [V.BOI_ID, V.size_token_id(h_latent // 2), V.size_token_id(w_latent // 2)]
    return (head + ([None] * w_latent + [V.ROW_BREAK_ID]) * h_latent + [V.EOI_ID]) * n_images


@torch.no_grad()
def generate_image(model: Transformer, prompts: list[list[int]], h_latent: int, w_latent: int,
                   image_ids: torch.Tensor, action_mask: bool = True, compile_step: bool = False,
                   n_images: int = 1, static: bool | None = None) -> torch.Tensor:
    """Constrained greedy image generation: per image boi, size, size, rows of codes + row break, eoi.

    Codes are chosen among `image_ids` only (the official FlexAR constraint: inside an image span only
    image tokens); structural tokens are forced. `n_images` > 1 generates consecutive spans with
    nothing between them, as the bi-view world model's answer `<|image|><|image|>` (third-person,
    then wrist; official_format.md section 10.1). `static` (default: `compile_step`) runs the
    static-shape step. Returns (B, n_images * (4 + h (w + 1))) ids.
    """
    if n_images < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}")
    static = _static(compile_step, static)
    plan = image_span_plan(h_latent, w_latent, n_images)
    n_prompts = len(prompts)
    prompts = pad_batch(prompts, static)
    device, B = model.device, len(prompts)
    image_ids = image_ids.to(device)
    tokens, lengths = pad_right(prompts, device)
    total = cache_length(model, int(lengths.max()) + len(plan), static)
    placeholder = [t if t is not None else int(image_ids[0]) for t in plan]
    masker = RowMasker(planned_layouts(prompts, placeholder, total), total, action_mask, device)
    out = torch.tensor(placeholder, device=device).repeat(B, 1)  # (B, n)
    last_code = max(i for i, p in enumerate(plan) if p is None)
    with decode_session(model, B, total, compile_step, static) as step:
        if static:
            image_ids = step.constant(image_ids)  # one id tensor per content: graphs are keyed by it
        prefill(model, tokens, lengths, masker)  # the first token (boi) is forced
        # mask rows of every fed position at once (the plan fixes the layout): (B, 1, last_code, S)
        fed = lengths[:, None] + torch.arange(last_code, device=device)  # token t - 1 sits at lengths + t - 1
        rows = to_additive(masker(fed), model.dtype)
        for t in range(1, last_code + 1):  # feed token t - 1, predict token t; later tokens are forced
            nxt = step(out[:, t - 1 : t], fed[:, t - 1 : t], rows[:, :, t - 1 : t], image_ids)
            if plan[t] is None:
                out[:, t] = nxt[:, 0]
    return out[:n_prompts]


def split_image_spans(span, n_images: int) -> list:
    """The `n_images` equal-length image spans of `generate_image`'s output row (list or 1-D tensor)."""
    size = len(span) // n_images
    if size * n_images != len(span):
        raise ValueError(f"{len(span)} ids do not split into {n_images} equal image spans")
    return [span[i * size : (i + 1) * size] for i in range(n_images)]
