"""decode=official on hand-made logits: the WorldVLA and RynnVLA-002 parsing rules, 8710 ending the
generation, the three modes agreeing on a model whose argmax follows the grammar, the grammar check."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from worldvla import vocab as V
from worldvla.model import free_decode as FD
from worldvla.model import generate as G
from worldvla.model.masks import to_additive
from worldvla.policy import official_decode as OD
from worldvla.recipe import FAMILIES
from worldvla.spans import SpanError

S, E, EOT = V.ACTION_START_ID, V.ACTION_END_ID, V.END_OF_TURN_ID
VOCAB = 65536


def block(*bins):
    return [S, *bins, E]


class ScriptedModel:
    """A stand-in transformer whose greedy next token after position p of row b is `table[b, p]`:
    logits = -|id - table[b, p]| (hand-made logits; the constrained modes pick the nearest allowed id).
    Hidden states are (row, position); masks and caches are ignored (the script is mask-free)."""

    def __init__(self, scripts: list[list[int]], prompt_lengths: list[int], length: int = 1024):
        self.table = torch.full((len(scripts), length), EOT, dtype=torch.long)
        for b, (script, p) in enumerate(zip(scripts, prompt_lengths)):
            self.table[b, p - 1: p - 1 + len(script)] = torch.tensor(script)
        self.cfg = SimpleNamespace(max_seq_len=length)
        self.device, self.dtype = torch.device("cpu"), torch.float32

    def setup_caches(self, batch, length, dtype=None, device=None):
        pass

    def clear_caches(self):
        pass

    def forward_hidden(self, tokens, input_pos=None, mask=None, run_layer=None):
        pos = torch.arange(tokens.shape[1]) if input_pos is None else torch.as_tensor(input_pos)
        pos = pos.expand(tokens.shape)
        row = torch.arange(tokens.shape[0]).view(-1, *([1] * (tokens.ndim - 1))).expand(tokens.shape)
        return torch.stack([row, pos], -1).float()

    def logits(self, hidden, vocab_ids=None):
        target = self.table[hidden[..., 0].long(), hidden[..., 1].long()]
        ids = torch.arange(VOCAB)
        if vocab_ids is not None:
            ids = ids[vocab_ids]
        return -(ids - target[..., None]).abs().float()


def prompt(n, seed=0):
    return [int(t) for t in np.random.default_rng(seed).integers(100, 8000, n)]


# -- the parsing rules ---------------------------------------------------------------------------
def test_worldvla_rule_cuts_long_blocks_to_7():
    ids = block(*range(10010, 10019)) + block(*range(10020, 10027)) + [EOT]  # 9 bins, then 7
    parsed = OD.parse_official_worldvla(ids)
    assert parsed.failure is None
    assert parsed.blocks == [list(range(10010, 10017)), list(range(10020, 10027))]


def test_worldvla_rule_short_block_fails_after_the_earlier_blocks():
    ids = block(*range(10010, 10017)) + block(10030, 10031, 10032) + block(*range(10040, 10047)) + [EOT]
    parsed = OD.parse_official_worldvla(ids)
    assert parsed.blocks == [list(range(10010, 10017))]  # executed before the failing one
    assert "block 1 has 3 ids" in parsed.failure
    # one id broadcasts to the 7 dimensions (numpy broadcasting in the official un-normalisation)
    assert OD.parse_official_worldvla(block(10050) + [EOT]) == OD.ParsedActions([[10050] * 7])
    assert "has 0 ids" in OD.parse_official_worldvla(block() + [EOT]).failure


def test_rynnvla002_rule_stops_at_the_first_malformed_block():
    ids = (block(*range(10010, 10017)) + block(*range(10020, 10029)) + block(*range(10040, 10047)) + [EOT])
    parsed = OD.parse_official_rynnvla002(ids)
    assert parsed == OD.ParsedActions([list(range(10010, 10017))])  # the 9-long block and all after: dropped
    assert OD.parse_official_worldvla(ids).blocks == [list(range(10010, 10017)), list(range(10020, 10027)),
                                                     list(range(10040, 10047))]
    first_bad = OD.parse_official_rynnvla002(block(10010, 10011) + block(*range(10020, 10027)))
    assert first_bad.blocks == [] and "empty action list" in first_bad.failure


@pytest.mark.parametrize("family", FAMILIES)
def test_no_block_and_end_before_start_fail(family):
    assert "empty action list" in OD.parse_official([1, 2, 3, EOT], family).failure
    bad = OD.parse_official([E] + block(*range(10010, 10017)), family)
    assert bad.blocks == [] and "before any start token" in bad.failure
    with pytest.raises(ValueError, match="family"):
        OD.parse_official([], "openvla")


def test_8710_ends_generation():
    p = prompt(12)
    script = block(*range(10010, 10017)) + [EOT] + block(*range(10020, 10027)) + [EOT]
    model = ScriptedModel([script], [len(p)])
    out = FD.generate_greedy(model, [p], max_new_tokens=FD.OFFICIAL_MAX_NEW_TOKENS)[0]
    assert out == block(*range(10010, 10017)) + [EOT]  # stops at (and keeps) 8710
    assert OD.parse_official_worldvla(out).blocks == [list(range(10010, 10017))]
    # without the 8710 the budget ends it: 300 new tokens at most, an unclosed block is not parsed
    endless = ScriptedModel([block(*range(10010, 10017)) * 40], [len(p)])
    out = FD.generate_greedy(endless, [p], max_new_tokens=FD.OFFICIAL_MAX_NEW_TOKENS)[0]
    assert len(out) == 300 and len(OD.parse_official_worldvla(out).blocks) == 300 // 9


# -- the three modes -----------------------------------------------------------------------------
def grammar_script(seed, K):
    rng = np.random.default_rng(seed)
    bins = rng.integers(G.FIRST_BIN_ID, G.LAST_BIN_ID + 1, (K, 7))
    return [t for row in bins for t in block(*row.tolist())] + [EOT], bins


@pytest.mark.parametrize("family", FAMILIES)
def test_three_modes_agree_when_the_argmax_follows_the_grammar(family):
    K = 5
    prompts = [prompt(20, 1), prompt(27, 2)]
    scripts, want = zip(*(grammar_script(s, K) for s in (3, 4)))
    model = ScriptedModel(list(scripts), [len(p) for p in prompts])
    for mode in ("parallel", "sequential"):
        grammar = []
        out = G.decode_action_chunks(model, prompts, K, mode=mode, grammar=grammar)
        np.testing.assert_array_equal(out[..., 1:-1].numpy(), np.stack(want))
        assert grammar == [False, False]
    for b, ids in enumerate(FD.generate_greedy(model, prompts)):
        np.testing.assert_array_equal(np.asarray(OD.parse_official(ids, family).blocks), want[b])


def test_grammar_violation_is_flagged_per_prompt():
    K = 3
    prompts = [prompt(15, 5), prompt(15, 6), prompt(15, 7)]
    good, _ = grammar_script(8, K)
    short = list(good)
    short[9 + 6] = E  # block 1 would end after 5 bins
    late = list(good)
    late[0] = 42  # the model does not start an action block at all
    model = ScriptedModel([good, short, late], [len(p) for p in prompts])
    for mode in ("parallel", "sequential"):
        grammar = []
        out = G.decode_action_chunks(model, prompts, K, mode=mode, grammar=grammar)
        assert grammar == [False, True, True], mode
        assert out[1, 1, 6] == G.LAST_BIN_ID  # constrained: the nearest bin to 15004 (hand-made logits)
    free = FD.generate_greedy(ScriptedModel([short], [len(prompts[1])]), prompts[1:2])[0]
    assert "block 1 has 5 ids" in OD.parse_official_worldvla(free).failure


def test_grammar_check_stops_once_every_prompt_is_flagged(monkeypatch):
    """The flag is per prompt: after the step that flags the last unflagged prompt, no step computes the
    check (its full LM-head rows) any more; the flags are those of the full check."""
    K = 3
    prompts = [prompt(15, 5), prompt(15, 6)]
    good, _ = grammar_script(8, K)
    short, late = list(good), list(good)
    short[9 + 6] = E  # flagged at the parallel step that predicts bin 6 (the 6th of 7)
    late[0] = 42  # flagged at the prompt's end
    model = ScriptedModel([late, short], [len(p) for p in prompts])
    checked, step = [], G.step
    monkeypatch.setattr(G, "step", lambda *a: checked.append(a[5]) or step(*a))
    grammar = []
    G.decode_action_chunks(model, prompts, K, "parallel", grammar=grammar)
    assert grammar == [True, True] and checked == [True] * 6 + [False]


# -- the policy in official mode -----------------------------------------------------------------
@pytest.fixture(scope="module")
def policy_parts(text_tokenizer, image_tokenizer):
    return text_tokenizer, image_tokenizer


def scripted_policy(parts, script, family="worldvla", decode="official", chunk_size=5):
    from worldvla.data.processor import Processor
    from worldvla.policy.policy import WorldVLAPolicy
    from worldvla.recipe import Recipe

    text, images = parts
    frame = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    pol = WorldVLAPolicy(None, Processor(Recipe(chunk_size=chunk_size, family=family), text, images), decode=decode)
    n = len(pol.prompt_ids("pick it up", [frame]))
    pol.model = ScriptedModel([script], [n])
    return pol, frame


def test_policy_official_mode_executes_every_parsed_block(policy_parts):
    from worldvla.tokenizers import ActionTokenizer

    script = [t for i in range(7) for t in block(*range(10010 + i, 10017 + i))] + [EOT]  # 7 blocks, K = 5
    pol, frame = scripted_policy(policy_parts, script)
    actions = pol.predict("pick it up", [frame])
    want = ActionTokenizer().decode(np.array([list(range(10010 + i, 10017 + i)) for i in range(7)]))
    np.testing.assert_array_equal(actions, want)
    assert pol.last_decode_info == [{"failure": None, "grammar_violation": None}]
    assert pol.decode_mode == "official"


def test_policy_official_failure_is_reported_not_raised(policy_parts):
    script = block(*range(10010, 10017)) + block(10020, 10021) + [EOT]
    for family, n_actions in (("worldvla", 1), ("rynnvla002", 1)):
        pol, frame = scripted_policy(policy_parts, script, family)
        actions = pol.predict("pick it up", [frame])
        assert actions.shape == (n_actions, 7)
        failure = pol.last_decode_info[0]["failure"]
        assert (failure is not None) == (family == "worldvla")  # RynnVLA-002 just drops the short block
    pol, frame = scripted_policy(policy_parts, [EOT], "rynnvla002")
    assert pol.predict("pick it up", [frame]).shape == (0, 7)
    assert "empty action list" in pol.last_decode_info[0]["failure"]


def test_policy_constrained_mode_reports_grammar_violations(policy_parts):
    script, _ = grammar_script(9, 5)
    script[5] = EOT  # the free argmax would stop in the middle of block 0
    pol, frame = scripted_policy(policy_parts, script, decode="parallel")
    assert pol.predict("pick it up", [frame]).shape == (5, 7)
    assert pol.last_decode_info == [{"failure": None, "grammar_violation": True}]


def test_auto_resolves_by_checkpoint_kind():
    from worldvla.policy.policy import resolve_decode

    assert resolve_decode("auto", True) == "parallel" and resolve_decode("auto", False) == "official"
    assert resolve_decode("sequential", False) == "sequential"


def test_auto_is_official_for_an_official_folder_and_parallel_for_ours(tiny_assets, tmp_path):
    import shutil

    from worldvla.policy.interface import PolicySource, load_policy, policy_info
    from worldvla.testing.tiny_model import one_torch_thread, write_tiny_checkpoint

    ckpt = write_tiny_checkpoint(tmp_path / "ours", tiny_assets, chunk_size=5)
    official = tmp_path / "official"
    official.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(ckpt / name, official)
    with one_torch_thread():
        assert policy_info(load_policy(str(ckpt)))["decode_mode"] == "parallel"
        settings = {"chunk_size": 5, "resolution": 256, "action_stats": "worldvla"}
        pol = load_policy(PolicySource(str(official), tokenizer=str(ckpt / "tokenizer"), recipe=settings))
        assert policy_info(pol)["decode_mode"] == "official"
        assert load_policy(str(ckpt), decode="sequential").decode_mode == "sequential"


@pytest.mark.parametrize("folder, family", [("VLA_model_256/libero_goal", "rynnvla002"),
                                            ("model_256/libero_10", "worldvla")])
def test_released_folders_pick_their_parsing_rule(folder, family):
    """decode=official on a released folder parses with its family's rule (the table sets it)."""
    from worldvla.policy.official_checkpoints import find_official

    assert find_official(f"ckpts/{folder}").settings.get("family", "worldvla") == family
    ids = block(*range(10010, 10017)) + block(10020, 10021) + [EOT]  # a short second block
    parsed = OD.parse_official(ids, family)
    assert parsed.blocks == [list(range(10010, 10017))]
    assert (parsed.failure is None) == (family == "rynnvla002")


def test_grammar_flag_is_where_the_free_argmax_leaves_the_range():
    from worldvla.testing.tiny_model import make_tiny_model

    model = make_tiny_model(seed=30)
    hidden = torch.randn(4, 50, model.lm_head.weight.shape[1], generator=torch.Generator().manual_seed(0))
    lo, hi = 0, model.lm_head.weight.shape[0] // 2  # a wide range, so both cases occur
    ids, flag = G.choose(model, hidden, (lo, hi), grammar=True)
    free = model.logits(hidden).argmax(-1)
    outside = (free < lo) | (free > hi)
    assert 0 < int(outside.sum()) < outside.numel()
    assert flag.dtype == torch.bool and torch.equal(flag, outside)  # its own output, not packed into the ids
    assert torch.equal(ids, G.choose(model, hidden, (lo, hi))[0]) and G.choose(model, hidden, (lo, hi))[1] is None
    assert torch.equal(ids, model.logits(hidden, slice(lo, hi + 1)).argmax(-1) + lo)


@pytest.mark.parametrize("mode", ["parallel", "sequential"])
def test_grammar_check_static_step_equals_eager_and_a_full_forward(mode):
    import sys
    from pathlib import Path

    from reference_masks import reference_mask

    from worldvla.testing.tiny_model import make_tiny_model

    sys.path.insert(0, str(Path(__file__).parent))
    from test_model_decode import random_prompt

    model, K = make_tiny_model(seed=31), 3
    prompts = [random_prompt(s) for s in range(3)]
    eager, static = [], []
    out = G.decode_action_chunks(model, prompts, K, mode, grammar=eager)
    assert torch.equal(G.decode_action_chunks(model, prompts, K, mode, grammar=static, static=True), out)
    assert torch.equal(G.decode_action_chunks(model, prompts, K, mode), out)  # the check changes no token
    ref = []
    for b, p in enumerate(prompts):  # the free argmax at the prompt end and at every bin, by a full forward
        ids = p + out[b].flatten().tolist()
        with torch.no_grad():
            free = model(torch.tensor([ids]), mask=to_additive(reference_mask(ids))[None, None])[0].argmax(-1)
        n = len(p)
        bins = free[[n + 9 * i + t for i in range(K) for t in range(7)]]
        ref.append(bool(free[n - 1] != S) or bool(((bins < G.FIRST_BIN_ID) | (bins > G.LAST_BIN_ID)).any()))
    assert eager == static == ref


# -- one unparsable generation in a batch (issue #23, point 1) -------------------------------------
def unpairable_script():
    """Two 10004 before any 15004: the official attention-mask code cannot pair them and raises."""
    return [S, 10010, 10011, S, 10012] + block(*range(10020, 10027)) + [EOT]


def test_unpairable_generation_stops_only_its_row():
    prompts = [prompt(14, 11), prompt(14, 12)]
    good, want = grammar_script(13, 2)
    model = ScriptedModel([good, unpairable_script()], [len(p) for p in prompts])
    failures = []
    out = FD.generate_greedy(model, prompts, failures=failures)
    assert failures[0] is None and "not pairable" in failures[1]
    np.testing.assert_array_equal(np.asarray(OD.parse_official(out[0], "worldvla").blocks), want)
    assert out[1] == [S, 10010, 10011, S]  # stopped at the token the official mask code raises on
    with pytest.raises(SpanError):  # without a failures list: the old behaviour, an exception
        FD.generate_greedy(model, prompts)


def two_query_policy(parts):
    """A policy whose batch of two identical prompts gets one good and one unparsable generation."""
    from worldvla.data.processor import Processor
    from worldvla.policy.policy import WorldVLAPolicy
    from worldvla.recipe import Recipe

    text, images = parts
    frame = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    pol = WorldVLAPolicy(None, Processor(Recipe(chunk_size=5, family="worldvla"), text, images), decode="official")
    n = len(pol.prompt_ids("pick it up", [frame]))
    good, _ = grammar_script(14, 5)
    pol.model = ScriptedModel([good, unpairable_script()], [n, n])
    return pol, frame


def test_policy_batch_with_an_unparsable_generation_fails_that_query_only(policy_parts):
    pol, frame = two_query_policy(policy_parts)
    actions = pol.predict_batch(["pick it up"] * 2, [[frame], [frame]])
    assert actions[0].shape == (5, 7) and actions[1].shape == (0, 7)
    assert pol.last_decode_info[0]["failure"] is None
    assert "not pairable" in pol.last_decode_info[1]["failure"]


class Inbox(list):
    put = list.append


def test_pool_batch_with_an_unparsable_generation_fails_that_episode_only(policy_parts, tmp_path):
    from worldvla.eval.config import EvalConfig
    from worldvla.eval.fake_env import FakeEnv
    from worldvla.eval.pool import WorkerPool
    from worldvla.eval.protocol import EpisodeKey
    from worldvla.eval.rollout import Query, RolloutOptions, run_episode
    from worldvla.policy.interface import ActionChunk, decode_infos

    pol, frame = two_query_policy(policy_parts)

    def predict(queries):  # what the evaluation's main process does (Evaluation.predict)
        chunks = pol.predict_batch([q.instruction for q in queries], [q.images for q in queries])
        return [ActionChunk(c, d.get("failure")) for c, d in zip(chunks, decode_infos(pol, len(chunks)))]

    pool = WorkerPool(EvalConfig(policy="x"), {}, tmp_path, predict, lambda rec: None, 2)
    pool.inboxes = [Inbox(), Inbox()]
    pool.pending = {w: Query("pick it up", [frame], None, None) for w in (0, 1)}
    pool._answer()
    (kind0, good), = pool.inboxes[0]
    (kind1, bad), = pool.inboxes[1]
    assert kind0 == kind1 == "chunk"  # no "error" for either worker: the batch is not failed as a whole
    assert good.failure is None and len(good.actions) == 5
    assert len(bad.actions) == 0 and "not pairable" in bad.failure
    # the rollout records that episode as a failure with its reason, as the official loop does
    rec = run_episode(FakeEnv("libero_goal", 0), EpisodeKey("libero_goal", 0, 0), RolloutOptions(max_steps=20),
                      lambda q: bad)
    assert rec["status"] == "failure" and rec["error"] is None and "not pairable" in rec["failure_reason"]
