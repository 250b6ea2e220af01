"""The joint loss on a hand-computed example, both forms, and gradient flow through the tiny model."""

import math

import pytest
import torch

from worldvla import vocab as V
from worldvla.model.masks import batch_mask, to_additive
from worldvla.testing.tiny_model import make_tiny_model
from worldvla.train.loss import LossConfig, compute_loss

VOCAB = 16640
IGN = V.IGNORE_INDEX


pytestmark = pytest.mark.usefixtures("single_torch_thread")


def peaked_logits(targets_and_heights, length):
    """Logits that are 0 except `a` at the target id: nll = log(e^a + V - 1) - a, lse = log(e^a + V - 1)."""
    logits = torch.zeros(1, length, VOCAB)
    for pos, (target, a) in enumerate(targets_and_heights):
        logits[0, pos, target] = a
    return logits


def by_hand(a):
    lse = math.log(math.exp(a) + VOCAB - 1)
    return lse - a, lse


def test_official_weighted_mean_on_a_hand_computed_example():
    # world sample: inputs 0..5; labels shifted by one inside compute_loss
    # targets (labels[1:]): BOI (w 1), image code 100 (w 0.04), code 3 (w 0.04: in the official slice),
    # 8195 (w 1: the slice stops at 8194), eoi (w 1)
    targets = [(V.BOI_ID, 2.0), (100, 1.0), (3, 3.0), (8195, 0.5), (V.EOI_ID, -1.0)]
    labels = torch.tensor([[IGN] + [t for t, _ in targets]])
    logits = peaked_logits(targets + [(0, 0.0)], 6)
    out = compute_loss(logits, labels, LossConfig())
    weights = [1.0, 0.04, 0.04, 1.0, 1.0]
    nll = [by_hand(a)[0] for _, a in targets]
    lse = [by_hand(a)[1] for _, a in targets]
    ce = sum(w * n for w, n in zip(weights, nll)) / sum(weights)
    z = sum(x * x for x in lse) / len(lse)
    assert out.ce.item() == pytest.approx(ce, rel=1e-6)
    assert out.z_loss.item() == pytest.approx(z, rel=1e-6)
    assert out.total.item() == pytest.approx(ce + 1e-5 * z, rel=1e-6)
    assert out.world_ce.item() == pytest.approx(sum(nll) / 5, rel=1e-6) and out.action_ce is None
    assert (out.n_world, out.n_action) == (5, 0)


def test_paper_form_and_separate_terms():
    # row 0: action sample (bin targets); row 1: world sample (BOI + codes); one ignored position each
    act = [(IGN, 0.0), (10100, 1.5), (10200, 0.2), (V.ACTION_END_ID, 2.5)]
    world = [(V.BOI_ID, 0.7), (IGN, 0.0), (500, 1.1), (600, -0.4)]
    labels = torch.tensor([[IGN] + [t for t, _ in act], [IGN] + [t for t, _ in world]])
    logits = torch.cat([peaked_logits([(max(t, 0), a) for t, a in rows] + [(0, 0.0)], 5) for rows in (act, world)])
    a_nll = [by_hand(a)[0] for t, a in act if t != IGN]
    w_nll = [by_hand(a)[0] for t, a in world if t != IGN]
    lse = [by_hand(a)[1] for t, a in act + world if t != IGN]
    z = sum(x * x for x in lse) / len(lse)
    paper = compute_loss(logits, labels, LossConfig(form="paper", world_weight=0.04))
    action_ce, world_ce = sum(a_nll) / 3, sum(w_nll) / 3
    assert paper.action_ce.item() == pytest.approx(action_ce, rel=1e-6)
    assert paper.world_ce.item() == pytest.approx(world_ce, rel=1e-6)
    assert paper.total.item() == pytest.approx(action_ce + 0.04 * world_ce + 1e-5 * z, rel=1e-6)
    official = compute_loss(logits, labels, LossConfig())
    w = [1, 1, 1, 1, 0.04, 0.04]  # action targets, BOI, then two image codes
    ce = sum(wi * n for wi, n in zip(w, a_nll + w_nll)) / sum(w)
    assert official.ce.item() == pytest.approx(ce, rel=1e-6)
    assert official.action_ce.item() == pytest.approx(action_ce, rel=1e-6)  # reported either way
    assert (official.n_action, official.n_world) == (3, 3)
    with pytest.raises(ValueError, match=r"^form: 'mean' not one of \['official', 'paper'\]$"):
        LossConfig(form="mean")


def test_weight_is_a_config_value():
    labels = torch.tensor([[IGN, 100, V.BOI_ID]])
    logits = peaked_logits([(100, 2.0), (V.BOI_ID, -1.0), (0, 0.0)], 3)
    n1, n2 = by_hand(2.0)[0], by_hand(-1.0)[0]
    for w in (0.04, 0.5, 1.0):
        out = compute_loss(logits, labels, LossConfig(world_weight=w, z_loss_weight=0.0))
        assert out.total.item() == pytest.approx((w * n1 + n2) / (w + 1), rel=1e-6)


def test_gradients_reach_every_parameter():
    model = make_tiny_model(seed=1, dropout=0.05).train()
    g = torch.Generator().manual_seed(0)
    image = [V.BOI_ID, 8806, 8806] + torch.randint(4, 8196, (4,), generator=g).tolist() + [V.EOI_ID]
    block = lambda: [V.ACTION_START_ID] + torch.randint(10006, 10262, (7,), generator=g).tolist() + [V.ACTION_END_ID]
    prompt = [V.BOS_ID, 16200, 16300] + image + [V.END_OF_TURN_ID]
    action = prompt + block() + block() + [V.END_OF_TURN_ID]
    world = prompt[:-1] + block() + [V.END_OF_TURN_ID] + image + [V.END_OF_TURN_ID]
    L = max(len(action), len(world))
    ids = torch.zeros(2, L, dtype=torch.long)
    labels = torch.full((2, L), IGN)
    for b, (row, n_prompt) in enumerate(((action, len(prompt)), (world, len(prompt) + 9))):
        ids[b, : len(row)] = torch.tensor(row)
        labels[b, n_prompt : len(row)] = torch.tensor(row[n_prompt:])
    out = compute_loss(model(ids, mask=to_additive(batch_mask([action, world], L))), labels, LossConfig())
    out.total.backward()
    assert out.action_ce is not None and out.world_ce is not None
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_activation_checkpointing_gives_the_same_gradients():
    """The trainer's activation checkpointing (the only one: the model has no knob of its own)."""
    from worldvla.model.convert import clean_key
    from worldvla.train.distributed import apply_activation_checkpointing
    from worldvla.train.modeling import block_class

    ids = torch.randint(0, 16640, (2, 24), generator=torch.Generator().manual_seed(3))
    labels = ids.clone()
    grads = []
    for ckpt in (False, True):
        model = make_tiny_model(seed=2).train()
        if ckpt:
            assert apply_activation_checkpointing(model, block_class(model)) == len(model.layers)
        compute_loss(model(ids), labels).total.backward()
        grads.append({clean_key(n): p.grad for n, p in model.named_parameters()})  # without the wrapper prefix
    assert grads[0].keys() == grads[1].keys()
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, atol=1e-6, rtol=1e-5)


def test_logits_at_supervised_positions_give_the_same_loss_and_gradients():
    """Training asks the model for the logits the loss reads only (`at=`): same total, terms and gradients
    as the full (B, L, V) logits, for both loss forms, with padding, prompt and both sample kinds."""
    from worldvla.train.loss import predicting_positions

    g = torch.Generator().manual_seed(5)
    ids = torch.randint(4, 16640, (3, 30), generator=g)
    labels = torch.full_like(ids, IGN)
    labels[0, 12:25] = ids[0, 12:25]  # action-like row: supervised tail, padding after
    labels[1, 8:30] = ids[1, 8:30]
    labels[1, 9] = V.BOI_ID  # a world row (its targets hold an image)
    labels[2, 20:22] = ids[2, 20:22]
    for form in ("official", "paper"):
        results = []
        for packed in (False, True):
            model = make_tiny_model(seed=4).train()
            torch.manual_seed(0)  # the same dropout draws
            logits = model(ids, at=predicting_positions(labels) if packed else None)
            out = compute_loss(logits, labels, LossConfig(form=form))
            out.total.backward()
            results.append((out, {n: p.grad.clone() for n, p in model.named_parameters()}))
        (full, g_full), (part, g_part) = results
        assert part.total.shape == () and int(predicting_positions(labels).sum()) == 13 + 22 + 2
        for term in ("total", "ce", "action_ce", "world_ce", "z_loss"):
            torch.testing.assert_close(getattr(part, term), getattr(full, term), rtol=1e-6, atol=1e-6, msg=term)
        assert (part.n_action, part.n_world) == (full.n_action, full.n_world)
        for name, grad in g_full.items():
            torch.testing.assert_close(g_part[name], grad, rtol=1e-5, atol=1e-7, msg=name)
    with pytest.raises(ValueError, match="one row per supervised label"):
        compute_loss(torch.zeros(5, 16640), labels)
