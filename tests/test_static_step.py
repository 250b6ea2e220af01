"""The static-shape decode step (worldvla.model.static_step) gives the eager reference step's tokens.

On CPU the static code runs without capture: these tests check exactly the code that CUDA captures
(bucketed batch and cache, kept caches, in-place inputs, greedy choice inside the step).
"""

import pytest
import torch
from test_model_decode import random_prompt, rynnvla_prompt

from benchmarks import baselines as BL
from worldvla import vocab as V
from worldvla.model import free_decode as FD
from worldvla.model import generate as G
from worldvla.model import image_decode as ID
from worldvla.model import static_step as S
from worldvla.testing.tiny_model import make_tiny_model

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def model():
    return make_tiny_model(seed=5)


def prompts_of(batch: int, seed: int) -> list[list[int]]:
    """`batch` prompts of different lengths (1 or 2 images, RynnVLA-002 state block)."""
    makers = [lambda s: random_prompt(s, n_images=2), lambda s: random_prompt(s, n_images=1), rynnvla_prompt]
    return [makers[i % 3](seed + i) for i in range(batch)]


@pytest.mark.parametrize("mode", ["parallel", "sequential"])
@pytest.mark.parametrize("K", [5, 10])
@pytest.mark.parametrize("batch", [1, 3])
def test_static_chunks_equal_eager(model, mode, K, batch):
    prompts = prompts_of(batch, 100 * K + batch)
    assert len({len(p) for p in prompts}) == batch  # different prompt lengths
    eager_stats, static_stats = G.DecodeStats(), G.DecodeStats()
    eager = G.decode_action_chunks(model, prompts, K, mode, stats=eager_stats)
    static = G.decode_action_chunks(model, prompts, K, mode, static=True, stats=static_stats)
    assert static.shape == (batch, K, 9)  # the padding rows of bucket 4 are dropped
    assert torch.equal(static, eager)
    assert static_stats.forward_steps == eager_stats.forward_steps == (7 if mode == "parallel" else 9 * K - 1)
    assert len({tuple(b) for b in eager[..., 1:-1].reshape(-1, 7).tolist()}) > 2  # not degenerate
    assert model.cache_shape == (S.batch_bucket(batch), G.CACHE_BUCKET)  # the static caches stay installed


def test_parallel_static_equals_sequential_eager(model):
    prompts = prompts_of(3, 7)
    assert torch.equal(G.decode_action_chunks(model, prompts, 5, "parallel", static=True),
                       G.decode_action_chunks(model, prompts, 5, "sequential"))


def test_caches_and_programs_are_kept_across_calls(model):
    """The second call in a bucket reuses its caches and step program (what a CUDA graph needs), and the
    stale slots an earlier, longer call left behind never leak into the result."""
    long_prompts, short_prompts = prompts_of(3, 40), [random_prompt(41, n_images=1)] * 3
    G.decode_action_chunks(model, long_prompts, 5, "parallel", static=True)
    dec = model._static_decoder
    bucket = dec.buckets[(4, G.CACHE_BUCKET)]
    ptrs = [c.k.data_ptr() for c in bucket.caches]
    programs = dict(bucket.programs)
    got = G.decode_action_chunks(model, short_prompts, 5, "parallel", static=True)
    assert model._static_decoder is dec and dec.buckets[(4, G.CACHE_BUCKET)] is bucket
    assert [c.k.data_ptr() for c in bucket.caches] == ptrs
    assert bucket.programs == programs  # no new program: the same (rows, head) shape
    assert torch.equal(got, G.decode_action_chunks(model, short_prompts, 5, "parallel"))


def test_least_recently_used_bucket_goes_first(model):
    dec = S.static_decoder(model, capture=False)
    dec.buckets.clear()
    for keys in range(1, S.KEPT_CACHE_BUCKETS + 2):
        dec.bucket(1, keys * G.CACHE_BUCKET)
    assert list(dec.buckets) == [(1, k * G.CACHE_BUCKET) for k in range(2, S.KEPT_CACHE_BUCKETS + 2)]
    dec.buckets.clear()


def test_unconstrained_static_equals_eager(model):
    prompts = prompts_of(3, 60)
    eager = FD.generate_greedy(model, prompts, max_new_tokens=24)
    assert FD.generate_greedy(model, prompts, max_new_tokens=24, static=True) == eager
    assert [len(s) for s in eager] == [24] * 3


@pytest.mark.parametrize("n_images", [1, 2])
@pytest.mark.parametrize("batch", [1, 3])
def test_world_model_frames_static_equal_eager(model, n_images, batch):
    image_ids = torch.arange(4, 8196)  # code ids of the fixture vocabulary
    prompts = [random_prompt(70 + i, n_images=1 + i % 2) + [V.ACTION_START_ID] for i in range(batch)]
    eager = ID.generate_image(model, prompts, 4, 4, image_ids, n_images=n_images)
    static = ID.generate_image(model, prompts, 4, 4, image_ids, n_images=n_images, static=True)
    assert static.shape == eager.shape == (batch, n_images * len(ID.image_span_plan(4, 4)))
    assert torch.equal(static, eager)
    codes = eager[:, 3:3 + 4]
    assert len(set(codes.reshape(-1).tolist())) > 1  # the random model is not degenerate


def test_one_tensor_per_head_id_list(model):
    """Image generation passes its id list anew each call; the same ids must find the same program."""
    image_ids = torch.arange(4, 8196)
    prompt = [random_prompt(80) + [V.ACTION_START_ID]]
    ID.generate_image(model, prompt, 2, 2, image_ids, static=True)
    bucket = next(reversed(model._static_decoder.buckets.values()))
    n = len(bucket.programs)
    ID.generate_image(model, prompt, 2, 2, image_ids.clone(), static=True)
    assert len(bucket.programs) == n


@pytest.mark.parametrize("grammar", [False, True])
def test_step_traces_to_one_graph_without_host_syncs(model, grammar):
    """No .item()/.tolist() or Python branching on device values inside the step: dynamo traces the
    whole static step (all layers, head and argmax included, and the grammar flag) as one graph."""
    G.decode_action_chunks(model, prompts_of(1, 90), 5, "parallel", static=True)
    dec = model._static_decoder
    bucket = dec.buckets[(1, G.CACHE_BUCKET)]
    bins = (G.FIRST_BIN_ID, G.LAST_BIN_ID)
    if not grammar:
        assert (G.step, 5, ("range", *bins), False) in bucket.programs  # the program the decode ran
    program = dec.program(G.step, bucket, 5, bins, grammar)
    assert (program.flag is not None) == grammar
    torch._dynamo.reset()
    torch.compile(program._body, backend="eager", fullgraph=True)()


def test_weights_moved_give_a_new_decoder(model):
    dec = S.static_decoder(model, capture=False)
    assert S.static_decoder(model, capture=False) is dec
    other = make_tiny_model(seed=5).double()
    assert S.static_decoder(other, capture=False) is not model._static_decoder
    model.lm_head.weight.data = model.lm_head.weight.data.clone()
    assert S.static_decoder(model, capture=False) is not dec


def test_batch_buckets_and_errors(model):
    assert [S.batch_bucket(b) for b in (1, 2, 3, 5, 16, 17, 64, 65)] == [1, 2, 4, 8, 16, 32, 64, 128]
    with pytest.raises(ValueError):
        S.batch_bucket(0)
    with pytest.raises(ValueError, match="CUDA"):
        S.StaticDecoder(model, capture=True)
    with pytest.raises(ValueError, match="eager baseline"):
        BL.decode_action_chunks(model, prompts_of(1, 3), 5, "sequential", use_cache=False, static=True)
    with pytest.raises(ValueError, match="eager baseline"):
        BL.generate_greedy(model, prompts_of(1, 3), 4, dense_official_mask=True, static=True)


def test_parallel_refuses_prompts_whose_blocks_would_see_each_other(model):
    """An unclosed image span in the prompt extends to the end: no generated block is isolated, so
    parallel decoding would read half-written blocks (and the static step stale slots)."""
    bad = random_prompt(95)[:5] + [V.BOI_ID, V.END_OF_TURN_ID]
    with pytest.raises(ValueError, match="see each other"):
        G.decode_action_chunks(model, [random_prompt(96), bad], 5, "parallel", static=True)
    G.decode_action_chunks(model, [bad], 5, "sequential", static=True)  # exact in sequential mode


def test_one_decoder_per_setting_is_kept(model):
    plain = S.static_decoder(model, capture=False)
    compiled = S.static_decoder(model, capture=False, run_layer=G.compiled_layer_runner(model))
    assert compiled is not plain and S.static_decoder(model, capture=False) is plain  # not rebuilt
