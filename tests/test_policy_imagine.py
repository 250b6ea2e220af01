"""WorldVLAPolicy.imagine: the single-view world model and the bi-view (third person + wrist) one agree
with the rollout of worldvla.eval.imagine and with the constrained decoder called directly."""

import numpy as np
import pytest

from worldvla.eval.imagine import imagine_views, world_prompt

R = 128  # 8x8 codes per image: fast


pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def pol(tiny_assets, tmp_path_factory):
    from worldvla.policy.policy import WorldVLAPolicy
    from worldvla.testing.tiny_model import write_tiny_checkpoint

    ckpt = write_tiny_checkpoint(tmp_path_factory.mktemp("policy_imagine"), tiny_assets, resolution=R, with_wrist=True)
    return WorldVLAPolicy.from_pretrained(ckpt)


def _decode_direct(pol, prompt, n_images):
    """The constrained decode of `prompt` -> per view (image, span), bypassing the policy."""
    from worldvla.model.image_decode import generate_image, split_image_spans

    span = generate_image(pol.model, [prompt], R // 16, R // 16, pol.image_ids, n_images=n_images)[0].tolist()
    return [(pol.images.tokens_to_image(s), s) for s in split_image_spans(span, n_images)]


def _find(seq, sub):
    for i in range(len(seq) - len(sub) + 1):
        if seq[i : i + len(sub)] == sub:
            return i
    raise AssertionError("sub-sequence not in the prompt")


def test_bi_view_imagine_equals_the_rollout(pol):
    rng = np.random.default_rng(3)
    views = rng.integers(0, 256, size=(2, R, R, 3), dtype=np.uint8)  # third person, wrist
    action = rng.uniform(-0.5, 0.5, size=7)
    (third, wrist), spans = pol.imagine(views[0], action, wrist=views[1], return_tokens=True)
    assert third.shape == wrist.shape == (R, R, 3) and third.dtype == np.uint8
    rolled = imagine_views(pol, views[None], action[None, None], feed_back="tokens")[0, 0]  # (2, R, R, 3)
    assert np.array_equal(third, rolled[0]) and np.array_equal(wrist, rolled[1])
    prompt = world_prompt(pol, pol.images.images_to_tokens(list(views)), action, "train")
    direct = _decode_direct(pol, prompt, 2)
    for v, (image, span) in enumerate(direct):
        assert np.array_equal(image, (third, wrist)[v]) and list(spans[v]) == span
    assert not np.array_equal(third, wrist)  # two generated views, not one copied
    assert isinstance(pol.imagine(views[0], action, wrist=views[1]), tuple)


def test_bi_view_history_interleaves_third_and_wrist(pol):
    rng = np.random.default_rng(4)
    thirds = list(rng.integers(0, 256, size=(2, R, R, 3), dtype=np.uint8))
    wrists = list(rng.integers(0, 256, size=(2, R, R, 3), dtype=np.uint8))
    actions = rng.uniform(-0.5, 0.5, size=(2, 7))
    prompt = pol.world_prompt_ids(thirds, actions, wrist=wrists)
    t0, t1 = (pol.images.image_to_tokens(x) for x in thirds)
    w0, w1 = (pol.images.image_to_tokens(x) for x in wrists)
    a0, a1 = (pol.processor.world_action.encode_block(a) for a in actions)
    at = [_find(prompt, x) for x in (t0, w0, t1, w1)]
    assert at == sorted(at)  # [third_t-1, wrist_t-1, third_t, wrist_t]
    assert prompt[at[1] + len(w0) : at[2]] == a0  # each step: its two views, then its action
    assert prompt[at[3] + len(w1) : at[3] + len(w1) + len(a1)] == a1
    third, wrist = pol.imagine(thirds, actions, wrist=wrists)
    direct = _decode_direct(pol, prompt, 2)
    assert np.array_equal(third, direct[0][0]) and np.array_equal(wrist, direct[1][0])
    with pytest.raises(ValueError, match="wrist"):
        pol.imagine(thirds, actions, wrist=wrists[:1])


def test_single_view_path_unchanged(pol):
    rng = np.random.default_rng(5)
    frames = rng.integers(0, 256, size=(2, R, R, 3), dtype=np.uint8)
    actions = rng.uniform(-0.5, 0.5, size=(2, 7))
    image, span = pol.imagine(frames[1], actions[1], return_tokens=True)
    assert isinstance(image, np.ndarray) and image.shape == (R, R, 3)
    [(direct, direct_span)] = _decode_direct(pol, world_prompt(pol, [pol.images.image_to_tokens(frames[1])], actions[1],
                                                                "train"), 1)
    assert np.array_equal(image, direct) and span == direct_span
    rolled = imagine_views(pol, frames[1][None, None], actions[1][None, None], feed_back="tokens")[0, 0, 0]
    assert np.array_equal(image, rolled)
    # history of two frames: one image placeholder + action per step, one generated image
    prompt = pol.world_prompt_ids(list(frames), actions)
    assert prompt.count(8197) == 2  # BOI of the two history images
    assert np.array_equal(pol.imagine(list(frames), actions), _decode_direct(pol, prompt, 1)[0][0])
