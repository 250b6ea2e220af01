"""Decoding: parallel chunk decoding == sequential masked decoding; cache == no cache; official parse."""

import pytest
import torch
from reference_masks import reference_mask

from benchmarks import baselines as BL
from worldvla import vocab as V
from worldvla.model import free_decode as FD
from worldvla.model import generate as G
from worldvla.model import image_decode as ID
from worldvla.model.masks import to_additive
from worldvla.policy import official_decode as OD
from worldvla.testing.tiny_model import make_tiny_model

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def random_prompt(seed: int, n_images: int = 2, side: int = 4) -> list[int]:
    """BOS, text, images, text?, E: the shape of an action-model prompt (tiny images)."""
    g = torch.Generator().manual_seed(seed)
    ids = [V.BOS_ID] + torch.randint(16100, 16600, (int(torch.randint(3, 12, (1,), generator=g)),), generator=g).tolist()
    for _ in range(n_images):
        ids += [V.BOI_ID, V.size_token_id(side // 2), V.size_token_id(side // 2)]
        for _ in range(side):
            ids += torch.randint(4, 8196, (side,), generator=g).tolist() + [V.ROW_BREAK_ID]
        ids += [V.EOI_ID]
    return ids + [V.END_OF_TURN_ID]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("K", [5, 10])
def test_parallel_equals_sequential(seed, K):
    model = make_tiny_model(seed=seed)
    prompts = [random_prompt(10 * seed + i, n_images=1 + i % 2) for i in range(3)]  # different lengths
    par_stats, seq_stats = G.DecodeStats(), G.DecodeStats()
    par = G.decode_action_chunks(model, prompts, K, "parallel", stats=par_stats)
    seq = G.decode_action_chunks(model, prompts, K, "sequential", stats=seq_stats)
    assert par.shape == (3, K, 9)
    assert torch.equal(par, seq)
    assert par_stats.forward_steps == 7 and seq_stats.forward_steps == 9 * K - 1
    assert (par[..., 0] == V.ACTION_START_ID).all() and (par[..., -1] == V.ACTION_END_ID).all()
    bins = par[..., 1:-1]
    assert ((bins >= G.FIRST_BIN_ID) & (bins <= G.LAST_BIN_ID)).all()
    assert len({tuple(b) for b in bins.reshape(-1, 7).tolist()}) > 2  # the random model is not degenerate
    one_by_one = torch.cat([G.decode_action_chunks(model, [p], K, "parallel") for p in prompts])
    assert torch.equal(par, one_by_one)  # batching over episodes does not change results


def rynnvla_prompt(seed: int, side: int = 4) -> list[int]:
    """RynnVLA-002 action prompt shape: BOS, text, state block [15504, 8 ids, 16004], then third-person and
    wrist images of two frames, E (official_format.md section 10.1)."""
    g = torch.Generator().manual_seed(seed)
    base = random_prompt(seed, n_images=4, side=side)
    n_text = next(i for i, t in enumerate(base) if t == V.BOI_ID)
    state = [15504] + torch.randint(15505, 15761, (8,), generator=g).tolist() + [16004]
    return base[:n_text] + state + base[n_text:]


@pytest.mark.parametrize("overrides", [{"swin_norm": True}, {"n_kv_heads": 2}, {"model_parallel_size": 4}],
                         ids=["swin_norm", "gqa", "per_head_qk_norm"])
@pytest.mark.parametrize("K", [5, 10])
def test_parallel_equals_sequential_other_architectures_and_prompts(overrides, K):
    model = make_tiny_model(seed=20 + K, **overrides)
    prompts = [rynnvla_prompt(200 + K), random_prompt(201 + K, n_images=2), rynnvla_prompt(202 + K, side=2)]
    par = G.decode_action_chunks(model, prompts, K, "parallel")
    seq = G.decode_action_chunks(model, prompts, K, "sequential")
    assert torch.equal(par, seq)
    assert len({tuple(b) for b in par[..., 1:-1].reshape(-1, 7).tolist()}) > 2


def test_without_action_mask_sequential_differs_and_parallel_refuses():
    model = make_tiny_model(seed=4)
    prompts = [random_prompt(40)]
    masked = G.decode_action_chunks(model, prompts, 5, "sequential")
    plain = G.decode_action_chunks(model, prompts, 5, "sequential", action_mask=False)
    assert torch.equal(masked[:, 0], plain[:, 0])  # the first block sees the same context
    assert not torch.equal(masked, plain)
    with pytest.raises(ValueError, match="action mask"):
        G.decode_action_chunks(model, prompts, 5, "parallel", action_mask=False)


def test_no_cache_decoding_equals_cached():
    model = make_tiny_model(seed=5)
    prompts = [random_prompt(50), random_prompt(51, n_images=1)]
    cached = G.decode_action_chunks(model, prompts, 5, "sequential")
    stats = G.DecodeStats()
    plain = BL.decode_action_chunks(model, prompts, 5, "sequential", use_cache=False, stats=stats)
    assert torch.equal(cached, plain) and stats.forward_steps == 35


def greedy_by_full_forward(model, prompt, n):
    """Independent reference: no cache, the official mask of the running ids recomputed each step."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            mask = to_additive(reference_mask(ids))[None, None]
            ids.append(int(model(torch.tensor([ids]), mask=mask)[0, -1].argmax()))
    return ids[len(prompt):]


def test_unconstrained_greedy_matches_full_recompute():
    model = make_tiny_model(seed=6)
    # a prompt that already opened action blocks, so the per-step mask rows matter
    prompts = [random_prompt(60) + [V.ACTION_START_ID, 10100, 10200], random_prompt(61, n_images=1)]
    fast = FD.generate_greedy(model, prompts, max_new_tokens=12, eos_id=-1)
    dense = BL.generate_greedy(model, prompts, max_new_tokens=12, eos_id=-1, dense_official_mask=True)
    assert fast == dense
    for p, out in zip(prompts, fast):
        assert out == greedy_by_full_forward(model, p, 12)


def test_unconstrained_stops_at_eos():
    model = make_tiny_model(seed=7)
    prompt = random_prompt(70)
    first = FD.generate_greedy(model, [prompt], max_new_tokens=3, eos_id=-1)[0]
    out = FD.generate_greedy(model, [prompt], max_new_tokens=50, eos_id=first[1])[0]
    assert out == first[:2]


def test_parse_action_blocks_follows_the_official_rule():
    ids = [1, G.V.ACTION_START_ID, 10010, 10011, G.V.ACTION_END_ID, 5, G.V.ACTION_END_ID,
           G.V.ACTION_START_ID, 10020, G.V.ACTION_START_ID, 10030, 10031, G.V.ACTION_END_ID, G.V.ACTION_START_ID, 10040]
    assert OD.parse_action_blocks(ids) == [[10010, 10011], [10030, 10031]]


def test_constrained_image_generation(tiny_assets, text_tokenizer):
    from worldvla.tokenizers.image import tokens_to_codes

    model = make_tiny_model(seed=8)
    image_ids = torch.as_tensor(text_tokenizer.vocab.image_ids())
    prompt = random_prompt(80, n_images=1) + [V.ACTION_START_ID] + [10100] * 7 + [V.ACTION_END_ID, V.END_OF_TURN_ID]
    span = ID.generate_image(model, [prompt, prompt[:-3] + [V.END_OF_TURN_ID]], 4, 4, image_ids)
    assert span.shape == (2, 4 + 4 * 5)
    for row in span.tolist():
        codes = tokens_to_codes(row, text_tokenizer.vocab)  # valid layout, image ids only
        assert codes.shape == (4, 4)
    # the codes are the greedy choice among image ids given everything before them
    ids = prompt + span[0].tolist()
    with torch.no_grad():
        logits = model(torch.tensor([ids]))[0]
    P = len(prompt)
    for t, plan in enumerate(ID.image_span_plan(4, 4)):
        if plan is None:
            assert ids[P + t] == int(image_ids[logits[P + t - 1, image_ids].argmax()])


def world_prompt(seed: int, views: int) -> list[int]:
    """[BOS] text, one image per view, action block, E: the (bi-view) world-model prompt shape."""
    g = torch.Generator().manual_seed(seed)
    bins = torch.randint(G.FIRST_BIN_ID, G.LAST_BIN_ID + 1, (7,), generator=g).tolist()
    return random_prompt(seed, n_images=views)[:-1] + [V.ACTION_START_ID, *bins, V.ACTION_END_ID, V.END_OF_TURN_ID]


def test_bi_view_world_model_generates_two_images(text_tokenizer):
    from worldvla.tokenizers.image import tokens_to_codes

    model = make_tiny_model(seed=9)
    image_ids = torch.as_tensor(text_tokenizer.vocab.image_ids())
    prompts = [world_prompt(90 + i, views=2) for i in range(3)]  # different text lengths
    both = ID.generate_image(model, prompts, 4, 4, image_ids, n_images=2)
    span = 4 + 4 * 5
    assert both.shape == (3, 2 * span)
    for i, p in enumerate(prompts):  # batching over prompts of different lengths changes nothing
        assert torch.equal(ID.generate_image(model, [p], 4, 4, image_ids, n_images=2)[0], both[i])
    single = ID.generate_image(model, prompts, 4, 4, image_ids)  # the first image is the one-image answer
    assert torch.equal(both[:, :span], single)
    for row in both.tolist():
        third, wrist = ID.split_image_spans(row, 2)
        assert tokens_to_codes(third, text_tokenizer.vocab).shape == (4, 4)  # two well-formed images
        assert tokens_to_codes(wrist, text_tokenizer.vocab).shape == (4, 4)
    # greedy among image ids at every code position of both images, given everything before it
    ids = prompts[0] + both[0].tolist()
    with torch.no_grad():
        logits = model(torch.tensor([ids]), mask=to_additive(reference_mask(ids))[None, None])[0]
    P = len(prompts[0])
    plan = ID.image_span_plan(4, 4, n_images=2)
    assert sum(t is None for t in plan) == 32
    for t, token in enumerate(plan):
        if token is None:
            assert ids[P + t] == int(image_ids[logits[P + t - 1, image_ids].argmax()])
        else:
            assert ids[P + t] == token
    assert len(set(both[:, span:].flatten().tolist())) > 4  # the random model does not emit one code
    with pytest.raises(ValueError, match="n_images"):
        ID.generate_image(model, prompts, 4, 4, image_ids, n_images=0)


def test_decode_benchmark_cli_on_a_scaled_down_7b_stack(tmp_path):
    """benchmarks/decode.py's real-width path (`--model 7b`), shrunk to one narrow layer: the GPU run
    uses the same code; here the compared decoders must agree token for token (fp32 on CPU)."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "decode.py"
    spec = importlib.util.spec_from_file_location("decode_benchmark", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "decode.json"
    bench.main(["--model", "7b", "--layers", "1", "--width", "64", "--repeats", "1", "--sections", "chunks,cache",
                "--json", str(out)])
    result = json.loads(out.read_text())
    assert (result["layers"], result["width"], result["clock"]) == (1, 64, "cpu")
    assert [(r["K"], r["parallel_steps"], r["sequential_steps"], r["equal_tokens"]) for r in result["chunks"]] == \
        [(5, 7, 44, 1.0), (10, 7, 89, 1.0)]
    assert result["cache"]["equal_tokens"] == 1.0 and "masks" not in result
    with pytest.raises(SystemExit):
        bench.main(["--sections", "chunks,nope"])


def test_compiled_step_gives_the_eager_tokens():
    """compile_step=True: one compiled layer function shared by all layers (regional compilation)."""
    from torch._dynamo.utils import counters

    model = make_tiny_model(seed=11)
    prompts = [random_prompt(110), random_prompt(111, n_images=1)]
    eager = G.decode_action_chunks(model, prompts, 3, "sequential")
    counters.clear()
    assert torch.equal(G.decode_action_chunks(model, prompts, 3, "parallel", compile_step=True), eager)
    assert counters["stats"]["unique_graphs"] == 1  # the two layers share one graph
    assert model.cache_shape == (2, G.CACHE_BUCKET)  # compiled runs keep their bucketed cache
    model.clear_caches()
