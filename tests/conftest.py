"""Shared fixtures: tiny assets written in the official file formats (worldvla.testing.fixtures)."""

import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a model hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory):
    from worldvla.testing.fixtures import make_tiny_assets

    return make_tiny_assets(tmp_path_factory.mktemp("tiny_assets"))


@pytest.fixture(scope="session")
def text_tokenizer(tiny_assets):
    from worldvla.tokenizers import TextTokenizer

    return TextTokenizer.from_pretrained(tiny_assets.root)


@pytest.fixture(scope="session")
def image_tokenizer(tiny_assets, text_tokenizer):
    from worldvla.tokenizers import ImageTokenizer

    return ImageTokenizer.from_files(tiny_assets.vqgan_yaml, tiny_assets.vqgan_ckpt, text_tokenizer.vocab, 256)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="module")
def single_torch_thread():
    """Tiny convolutions and matmuls: on a shared 2-core runner two threads are ~20x slower than one.
    Modules opt in with `pytestmark = pytest.mark.usefixtures("single_torch_thread")`."""
    from worldvla.testing.tiny_model import one_torch_thread

    with one_torch_thread():
        yield
