"""Batched VQ-GAN encoding gives the codes of encoding each image alone."""

import numpy as np
import pytest
import torch

from worldvla.tokenizers import ImageTokenizer
from worldvla.tokenizers import image as image_mod

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def frames():
    rng = np.random.default_rng(3)
    noise = [rng.integers(0, 256, (256, 256, 3), dtype=np.uint8) for _ in range(3)]
    smooth = [np.repeat(np.repeat(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), 32, 0), 32, 1) for _ in range(2)]
    return noise + smooth


@pytest.fixture
def tokenizers(tiny_assets, text_tokenizer):
    def make(batch):
        return ImageTokenizer.from_files(tiny_assets.vqgan_yaml, tiny_assets.vqgan_ckpt, text_tokenizer.vocab, 256,
                                         encode_batch=batch)
    return make


def test_batched_codes_equal_one_at_a_time(tokenizers, frames):
    alone = tokenizers(1).encode(frames)
    batched = tokenizers(4)
    got = batched.encode(frames)  # one batch of 4, then one of 1
    np.testing.assert_array_equal(got, alone)
    assert got.shape == (5, 16, 16) and len(np.unique(alone)) > 20


def test_near_ties_are_settled_by_the_batch_of_one(tokenizers, frames, monkeypatch):
    """Perturb the batched latents (as another kernel's rounding would): the codes still equal the batch-1
    codes because near-ties are re-encoded alone; without that check (margin 0) they would differ."""
    alone = tokenizers(1).encode(frames)
    tok = tokenizers(5)
    exact = tok._latents

    def rounded_differently(x):
        z = exact(x)
        return z + 2e-3 * z.abs().amax() * torch.sin(1e3 * z)  # a deterministic, code-flipping perturbation

    monkeypatch.setattr(tok, "_latents", rounded_differently)
    monkeypatch.setattr(image_mod, "TIE_MARGIN", 0.0)
    assert not np.array_equal(tok.encode(frames), alone)  # the perturbation does flip codes
    monkeypatch.setattr(image_mod, "TIE_MARGIN", 0.05)
    tok.reencoded = 0
    np.testing.assert_array_equal(tok.encode(frames), alone)
    assert 0 < tok.reencoded <= len(frames)


def test_default_batch_is_one_on_cpu(tokenizers, frames, monkeypatch):
    tok = tokenizers(None)
    monkeypatch.setattr(tok, "_encode_batch", lambda x: pytest.fail("CPU default should encode one at a time"))
    assert tok.encode(frames[:2]).shape == (2, 16, 16)


def test_policy_encodes_a_batch_in_one_call(tmp_path, tiny_assets, monkeypatch):
    from worldvla.policy.policy import WorldVLAPolicy
    from worldvla.testing.tiny_model import write_tiny_checkpoint

    ckpt = write_tiny_checkpoint(tmp_path / "ckpt", tiny_assets, chunk_size=5, resolution=256)
    policy = WorldVLAPolicy.from_pretrained(ckpt)
    rng = np.random.default_rng(1)
    episodes = [[rng.integers(0, 256, (256, 256, 3), dtype=np.uint8) for _ in range(2)] for _ in range(3)]
    texts = ["open the drawer", "pick up the bowl", "push the plate"]
    alone = [policy.predict(t, e) for t, e in zip(texts, episodes)]
    calls = []
    encode = policy.images.encode
    monkeypatch.setattr(policy.images, "encode", lambda imgs: calls.append(len(imgs)) or encode(imgs))
    batched = policy.predict_batch(texts, episodes)
    assert calls == [6]  # all frames of the batch in one VQ-GAN call, none encoded again
    for a, b in zip(batched, alone):
        np.testing.assert_array_equal(a, b)
