"""worldvla.model.grammar: the grammar flag equals the full LM head's argmax outside the range, whether
the bound decides it (most queries of a trained-like head) or the full row does."""

import pytest
import torch
from reference_masks import reference_mask
from test_model_decode import random_prompt

from worldvla.model import generate as G
from worldvla.model import grammar as GR
from worldvla.model.masks import to_additive
from worldvla.testing.tiny_model import make_tiny_model

LO, HI = 10006, 10261


def reference(model, hidden):
    free = model.logits(hidden).argmax(-1)
    return (free < LO) | (free > HI)


def flag(model, hidden):
    return GR.outside_range(model, hidden, LO, HI, model.logits(hidden, slice(LO, HI + 1)).amax(-1))


def clustered_model(seed: int = 0):
    """A head like a trained one's: the range rows apart, 200 rows far from the others (fewer than
    EXACT_ROWS), every other row within ~0.3 of one centre."""
    model = make_tiny_model(seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        w = model.lm_head.weight
        centre = torch.randn(w.shape[1], generator=g) * 0.2
        w.copy_(centre + 0.04 * torch.randn(w.shape, generator=g))
        w[LO : HI + 1] = torch.randn(HI + 1 - LO, w.shape[1], generator=g)
        w[:200] = centre + 2.0 * torch.randn(200, w.shape[1], generator=g)
    return model


def full_rows(model, monkeypatch) -> list:
    """Records how many queries each full LM-head call computes."""
    calls, logits = [], model.logits

    def spy(hidden, vocab_ids=None):
        if vocab_ids is None:
            calls.append(hidden.shape[0])
        return logits(hidden, vocab_ids)

    monkeypatch.setattr(model, "logits", spy)
    return calls


def test_bound_decides_a_trained_like_head_without_the_full_rows(monkeypatch):
    model = clustered_model()
    hidden = torch.randn(6, 7, model.cfg.dim, generator=torch.Generator().manual_seed(1))
    want = reference(model, hidden)
    calls = full_rows(model, monkeypatch)
    assert torch.equal(flag(model, hidden), want)
    assert sum(calls) <= 2  # nearly every query decided by the bound


def test_rows_the_bound_cannot_decide_fall_back_to_the_full_head(monkeypatch):
    """The winner is a row of the bounded rest, just above the best in-range logit: only the full row
    sees it (with the bound's radius term dropped this query would be called inside the range)."""
    model = clustered_model(seed=2)
    h = torch.randn(1, model.cfg.dim, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        w = model.lm_head.weight
        unit = h[0] / h[0].norm()
        w[:200] -= (w[:200] @ unit)[:, None] * unit + 3 * unit  # the far rows: still far, low logits here
        logits = (w @ h[0]).clone()
        logits[LO : HI + 1] = -torch.inf
        top = float(logits.max())
        assert int(logits.argmax()) >= 200  # the winner is one of the bounded rows
        w[LO : HI + 1] = h[0] * (top - 1e-3) / h[0].dot(h[0]) * torch.linspace(0.5, 1.0, HI + 1 - LO)[:, None]
    assert bool(reference(model, h)[0])
    calls = full_rows(model, monkeypatch)
    assert torch.equal(flag(model, h), reference(model, h)) and calls
    with torch.no_grad():  # and the range row clearly on top: decided without the full row
        w[HI] = h[0] * (top + 5.0) / h[0].dot(h[0])
    calls.clear()
    assert not bool(flag(model, h)[0]) and not calls


def test_random_head_and_refreshed_weights():
    model = make_tiny_model(seed=4)
    hidden = torch.randn(3, 5, model.cfg.dim, generator=torch.Generator().manual_seed(5))
    assert torch.equal(flag(model, hidden), reference(model, hidden))
    first = GR.range_bound(model, LO, HI)
    with torch.no_grad():
        model.lm_head.weight[0] += 10.0  # in place: a new weight version, a new bound
    assert GR.range_bound(model, LO, HI) is not first
    assert torch.equal(flag(model, hidden), reference(model, hidden))


@pytest.mark.parametrize("seed", range(3))
def test_decode_flags_equal_the_full_check_on_a_clustered_head(seed):
    model = clustered_model(seed)
    prompts = [random_prompt(10 * seed + b) for b in range(3)]
    got = []
    G.decode_action_chunks(model, prompts, 4, "parallel", grammar=got)
    with torch.no_grad():  # the full check by hand: free argmax at the prompt end and at every bin
        want = []
        out = G.decode_action_chunks(model, prompts, 4, "parallel")
        for b, p in enumerate(prompts):
            ids = torch.tensor([p + out[b].flatten().tolist()])
            free = model(ids, mask=to_additive(reference_mask(ids[0].tolist()))[None, None])[0].argmax(-1)
            n = len(p)
            bins = free[[n + 9 * i + t for i in range(4) for t in range(7)]]
            want.append(bool(free[n - 1] != 10004) or bool(((bins < LO) | (bins > HI)).any()))
    assert got == want


@pytest.mark.parametrize("mode", ["parallel", "sequential"])
def test_static_steps_report_the_eager_flags(mode, monkeypatch):
    """The static step's flag output (its own preallocated tensor) equals the eager step's, on steps that
    really compute it: the head is set so that no prompt is flagged at its end (10004 wins there)."""
    model = make_tiny_model(seed=7)
    prompts = [random_prompt(40 + s, n_images=1) for s in range(3)]
    with torch.no_grad():  # prompts without action blocks: the causal forward is the prefill's
        ends = torch.stack([model.forward_hidden(torch.tensor([p]))[0, -1] for p in prompts])
        model.lm_head.weight[10004] = 50 * (ends / ends.norm(dim=-1, keepdim=True)).sum(0)
    checked, step = [], G.step
    monkeypatch.setattr(G, "step", lambda *a: checked.append(a[5]) or step(*a))
    eager, static = [], []
    out = G.decode_action_chunks(model, prompts, 3, mode, grammar=eager)
    assert any(checked)  # the steps computed the flag (not everything decided at the prompt's end)
    assert torch.equal(G.decode_action_chunks(model, prompts, 3, mode, grammar=static, static=True), out)
    assert static == eager
