"""Constrained greedy image generation for the world model: image spans whose structural tokens are
forced and whose codes are chosen among the image ids (the official FlexAR constraint)."""

from __future__ import annotations

import torch

from worldvla import vocab as V
from worldvla.model.generate import cache_length, decode_session, pad_batch, pad_right, planned_layouts, prefill, \
    resolve_static
from worldvla.model.masks import RowMasker, to_additive
from worldvla.model.transformer import Transformer


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
    static = resolve_static(compile_step, static)
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
    with decode_session(model, B, total, compile_step, static) as run:
        if static:
            image_ids = run.constant(image_ids)  # one id tensor per content: graphs are keyed by it
        prefill(model, tokens, lengths, masker)  # the first token (boi) is forced
        # mask rows of every fed position at once (the plan fixes the layout): (B, 1, last_code, S)
        fed = lengths[:, None] + torch.arange(last_code, device=device)  # token t - 1 sits at lengths + t - 1
        rows = to_additive(masker(fed), model.dtype)
        for t in range(1, last_code + 1):  # feed token t - 1, predict token t; later tokens are forced
            nxt, _ = run(out[:, t - 1 : t], fed[:, t - 1 : t], rows[:, :, t - 1 : t], image_ids)
            if plan[t] is None:
                out[:, t] = nxt[:, 0]
    return out[:n_prompts]


def split_image_spans(span, n_images: int) -> list:
    """The `n_images` equal-length image spans of `generate_image`'s output row (list or 1-D tensor)."""
    size = len(span) // n_images
    if size * n_images != len(span):
        raise ValueError(f"{len(span)} ids do not split into {n_images} equal image spans")
    return [span[i * size : (i + 1) * size] for i in range(n_images)]
