"""Free-running greedy generation (the official eval's generate-then-parse): unconstrained greedy steps
until the end-of-turn token or a token budget, with every step's mask row the official rule's for the
ids so far. The official parsing of what it generates is the policy's (worldvla.policy.official_decode).
"""

from __future__ import annotations

import torch

from worldvla import vocab as V
from worldvla.model.generate import (DecodeStats, cache_length, choose, clock, decode_session, pad_batch, pad_right,
                                     planned_layouts, prefill, resolve_static)
from worldvla.model.layout import ActionLayout
from worldvla.model.masks import RowMasker, to_additive
from worldvla.model.transformer import Transformer
from worldvla.spans import SpanError

STRUCTURAL_IDS = frozenset((V.BOI_ID, V.EOI_ID, V.ACTION_START_ID, V.ACTION_END_ID))  # the mask changes only at these
OFFICIAL_MAX_NEW_TOKENS = 300  # the official eval's generation budget: action_steps (25) * 12


@torch.no_grad()
def generate_greedy(model: Transformer, prompts: list[list[int]], max_new_tokens: int = OFFICIAL_MAX_NEW_TOKENS,
                    eos_id: int = V.END_OF_TURN_ID, action_mask: bool = True, compile_step: bool = False,
                    stats: DecodeStats | None = None, static: bool | None = None,
                    failures: list | None = None) -> list[list[int]]:
    """Unconstrained greedy generation until `eos_id` (kept) or `max_new_tokens`, as the official eval.

    Every step's mask row is the official rule's last row for all ids so far; the block layout behind it
    is re-derived only when an image/action start or end token was emitted (`ActionLayout.from_ids`).
    The stop test reads each step's ids on the host (one sync per step, also with the static step).

    A row whose start/end tokens cannot be paired (the official mask code raises inside generation)
    stops there: with a `failures` list, its reason is appended for that row only (None for the other
    rows) and the rest of the batch goes on; without one, the `SpanError` is raised as before.
    """
    static = resolve_static(compile_step, static)
    stats = stats if stats is not None else DecodeStats()
    n_prompts = len(prompts)
    prompts = pad_batch(prompts, static)
    device, B = model.device, len(prompts)
    tokens, lengths = pad_right(prompts, device)
    total = cache_length(model, int(lengths.max()) + max_new_tokens, static)
    seqs = [list(p) for p in prompts]
    done = [False] * n_prompts + [True] * (B - n_prompts)  # padding rows never count
    failed: list[str | None] = [None] * B
    with decode_session(model, B, total, compile_step, static) as run:
        t0 = clock(device, stats.now)
        masker = RowMasker(planned_layouts(prompts, [], total), total, action_mask, device)
        nxt, _ = choose(model, prefill(model, tokens, lengths, masker), None)  # (B,)
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
            nxt = run(nxt[:, None], pos, mask, None)[0][:, 0]
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
