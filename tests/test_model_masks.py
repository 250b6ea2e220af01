"""Attention masks: every implementation against the literal official algorithm (reference_mask)."""

import warnings

import numpy as np
import pytest
import torch
from reference_masks import reference_mask

from benchmarks.flex_masks import flex_block_mask, flex_mask_mod, flex_tables
from worldvla import vocab as V
from worldvla.data.sequence import SequenceBuilder, Span, action_conversation, world_conversation
from worldvla.model import masks as M

A0, A1 = V.ACTION_START_ID, V.ACTION_END_ID


pytestmark = pytest.mark.usefixtures("single_torch_thread")


def random_layout(rng, allow_malformed=True) -> list[int]:
    """Random text / image / action pieces, cut at a random point (unmatched starts, surplus ends)."""
    ids = [V.BOS_ID]
    for _ in range(rng.integers(1, 9)):
        r = rng.random()
        if r < 0.25:
            ids += [V.BOI_ID] + rng.integers(4, 8196, rng.integers(0, 5)).tolist() + [V.EOI_ID]
        elif r < 0.75:
            ids += [A0] + rng.integers(10006, 10262, rng.integers(1, 8)).tolist() + [A1]
        else:
            ids += rng.integers(16100, 16600, rng.integers(1, 4)).tolist()
    if allow_malformed and rng.random() < 0.2:
        ids += [A1]  # surplus end
    return ids[: rng.integers(1, len(ids) + 1)] if allow_malformed else ids


def test_hand_drawn_example():
    #      0  1        2  3        4   5  6   7   8  9   10
    ids = [0, V.BOI_ID, 5, V.EOI_ID, A0, 7, A1, A0, 8, A1, V.END_OF_TURN_ID]
    want = np.tril(np.ones((11, 11), dtype=bool))
    want[7:10, 4:7] = False  # the second block does not see the first
    assert np.array_equal(reference_mask(ids).numpy(), want)
    assert np.array_equal(M.dense_mask(ids).numpy(), want)
    assert np.array_equal(M.dense_mask(ids, action_mask=False).numpy(), np.tril(np.ones((11, 11), dtype=bool)))
    # an image after the actions: no block starts after the last image -> plain causal
    ids2 = ids[:-1] + [V.BOI_ID, 3, V.EOI_ID]
    assert torch.equal(M.dense_mask(ids2), torch.tril(torch.ones(13, 13, dtype=torch.bool)))
    # unmatched start extends to L-1; a surplus end is dropped
    ids3 = [A0, 1, A1, A0, 2, 3]
    want3 = np.tril(np.ones((6, 6), dtype=bool))
    want3[3:6, 0:3] = False
    assert np.array_equal(M.dense_mask(ids3).numpy(), want3)
    assert [(s.start, s.end) for s in M.spans_from_ids(ids3 + [A1, A1])] == [(0, 3), (3, 7)]


def test_unpairable_tokens_raise():
    with pytest.raises(M.MaskError, match="action"):
        M.spans_from_ids([A0, A0, 5])
    with pytest.raises(M.MaskError, match="image"):
        reference_mask([V.EOI_ID, V.EOI_ID, 1])


def test_sdpa_rows_match_reference_on_random_layouts():
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(400):
        ids = random_layout(rng)
        try:
            ref = reference_mask(ids)
        except M.MaskError:
            continue
        L = len(ids)
        assert torch.equal(M.dense_mask(ids), ref), ids
        assert torch.equal(M.dense_mask(M.spans_from_ids(ids), L), ref), ids
        q = torch.from_numpy(rng.choice(L, size=min(L, 3), replace=False))
        rows = M.mask_rows(M.ActionLayout.from_ids(ids), q, L + 4)  # extra key slots are causal-only
        assert torch.equal(rows[0, 0, :, :L], ref[q]) and not rows[0, 0, :, L:].any()
        checked += 1
    assert checked > 300


def test_open_layout_rows_hold_until_the_next_start_or_end_token():
    """Decoding rebuilds the layout only at start/end tokens: between them, the open layout's row for
    each new position must equal the official last row of the ids so far (open spans end at L-1 there)."""
    rng = np.random.default_rng(5)
    structural = {V.BOI_ID, V.EOI_ID, A0, A1}
    checked = 0
    for _ in range(150):
        ids = random_layout(rng)
        S = len(ids) + 2
        for cut in range(1, len(ids) + 1):
            if ids[cut - 1] not in structural and cut > 1:
                continue  # layouts are rebuilt after start/end tokens (and once after the prompt)
            try:
                masker = M.RowMasker(M.ActionLayout.from_ids(ids[:cut], open_until=S), S)
            except M.MaskError:
                continue
            for q in range(cut - 1, len(ids)):
                if q >= cut and ids[q] in structural:
                    break  # the decoder rebuilds here
                want = reference_mask(ids[: q + 1])[-1]
                assert torch.equal(masker(torch.tensor([q]))[0, 0, 0, : q + 1], want), (ids, cut, q)
                checked += 1
    assert checked > 1000


def test_batch_mask_and_additive_form():
    rng = np.random.default_rng(1)
    rows = [random_layout(rng, allow_malformed=False) for _ in range(4)]
    L = max(map(len, rows)) + 3
    batch = M.batch_mask(rows, L)
    assert batch.shape == (4, 1, L, L)
    for b, ids in enumerate(rows):
        n = len(ids)
        assert torch.equal(batch[b, 0, :n, :n], reference_mask(ids))
        assert torch.equal(batch[b, 0, n:], torch.tril(torch.ones(L, L, dtype=torch.bool))[n:])  # padding: causal
    add = M.to_additive(batch, torch.bfloat16)
    assert add.dtype == torch.bfloat16 and (add[batch] == 0).all() and (add[~batch] == torch.finfo(torch.bfloat16).min).all()


def test_flex_block_mask_matches_reference():
    from torch.nn.attention.flex_attention import create_mask, flex_attention

    rng = np.random.default_rng(2)
    rows = [random_layout(rng, allow_malformed=False) for _ in range(3)]
    L = max(map(len, rows))
    layouts = [M.ActionLayout(L, lay.blocks, lay.last_image_end) for lay in map(M.ActionLayout.from_ids, rows)]
    dense = create_mask(flex_mask_mod(layouts, L), len(rows), 1, L, L, device="cpu")  # (B, 1, L, L)
    want = M.batch_mask(rows, L)
    assert torch.equal(dense, want)
    block = flex_block_mask(rows, L, block_size=16)
    q, k, v = torch.randn(3, len(rows), 2, L, 8).unbind(0)
    with warnings.catch_warnings():  # eager flex on CPU warns (once per process) about the unfused path
        warnings.simplefilter("ignore", UserWarning)
        out = flex_attention(q, k, v, block_mask=block)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=want)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    causal = create_mask(flex_mask_mod(layouts, L, action_mask=False), 1, 1, L, L, device="cpu")
    assert torch.equal(causal[0, 0], torch.tril(torch.ones(L, L, dtype=torch.bool)))


def test_flex_refuses_overlapping_blocks():
    ids = [A0, 1, A0, 2, A1]  # starts 0, 2; ends 4, L-1 -> overlapping pairs (0, 4), (2, 4)
    with pytest.raises(M.MaskError, match="overlapping"):
        flex_tables([M.ActionLayout.from_ids(ids)], len(ids))
    assert torch.equal(M.dense_mask(ids), reference_mask(ids))  # the SDPA path handles them exactly


@pytest.fixture(scope="module")
def builder(text_tokenizer):
    return SequenceBuilder(text_tokenizer)


def fake_image(rng, side=4) -> list[int]:
    body = [tok for _ in range(side) for tok in rng.integers(4, 8196, side).tolist() + [V.ROW_BREAK_ID]]
    return [V.BOI_ID, V.size_token_id(side // 2), V.size_token_id(side // 2)] + body + [V.EOI_ID]


@pytest.mark.parametrize("kind", ["action1", "action2", "world", "state"])
def test_spans_of_sequence_builder_samples_give_the_official_mask(builder, kind):
    rng = np.random.default_rng(3)
    acts = [rng.uniform(-1, 1, 7) for _ in range(5)]
    if kind.startswith("action"):
        n = int(kind[-1])
        record = {"conversations": action_conversation("put the bowl on the stove", n, 5),
                  "image": [fake_image(rng) for _ in range(n)], "action": acts}
    elif kind == "world":
        record = {"conversations": world_conversation(2), "image": [fake_image(rng) for _ in range(3)],
                  "action": acts[:2]}
    else:
        record = {"conversations": action_conversation("turn on the stove", 2, 5, n_states=1),
                  "image": [fake_image(rng) for _ in range(2)], "action": acts, "state": [rng.uniform(-1, 1, 8)]}
    sample = builder.build(record)
    L = len(sample)
    ref = reference_mask(sample.input_ids)
    from_spans = M.dense_mask(sample.spans, L)
    assert torch.equal(from_spans, ref) and torch.equal(M.dense_mask(sample.input_ids), ref)
    ours = M.ActionLayout.from_spans(sample.spans, L)
    assert ours == M.ActionLayout.from_ids(sample.input_ids)
    if kind.startswith("action"):
        assert len(ours.isolated()) == 5 and not torch.equal(ref, torch.tril(torch.ones_like(ref)))
    # truncation: spans past L are clipped like an unmatched start
    cut = L - 4
    assert torch.equal(M.dense_mask(sample.spans, cut), reference_mask(sample.input_ids[:cut]))


def test_span_metadata_with_state_blocks_is_ignored():
    spans = [Span("image", 1, 4), Span("state", 4, 14), Span("action", 15, 24), Span("action", 24, 33)]
    mask = M.dense_mask(spans, 34)
    assert not mask[24:33, 15:24].any() and mask[24:33, 4:14].all()
