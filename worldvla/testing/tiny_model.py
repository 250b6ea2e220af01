"""Random tiny WorldVLA models and checkpoints in the real folder layout (docs/interfaces.md).

`write_tiny_checkpoint` writes exactly what training exports (config.json with official keys,
model.safetensors, worldvla.json, tokenizer/ with the fixture text tokenizer and VQ-GAN), so the real
loader and `WorldVLAPolicy.from_pretrained` run on it. Used by the tests of every stage and the CPU
benchmarks.
"""

from __future__ import annotations

import json
import shutil
from contextlib import contextmanager
from pathlib import Path

import torch

from worldvla.model.config import ModelConfig
from worldvla.model.loading import save_model
from worldvla.model.transformer import Transformer
from worldvla.recipe import sha256_file
from worldvla.testing.fixtures import FIXTURE_VOCAB_SIZE, TinyAssets
from worldvla.tokenizers import load_stats

# Random-init std of tiny models: larger than transformers' 0.02 so that a random model's greedy
# choices depend on its context (with 0.02 the residual stream is almost only the token embedding).
TINY_INIT_STD = 0.2


@contextmanager
def one_torch_thread():
    """Run tiny-model work on one intra-op thread: on a shared 2-core machine more threads of such
    small matrices mostly wait on each other (10x slower under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def tiny_config(**overrides) -> ModelConfig:
    cfg = ModelConfig.preset("tiny", **overrides)
    if cfg.vocab_size < FIXTURE_VOCAB_SIZE:
        raise ValueError(f"tiny vocab {cfg.vocab_size} < fixture vocab {FIXTURE_VOCAB_SIZE}")
    return cfg


def make_tiny_model(seed: int = 0, std: float = TINY_INIT_STD, **overrides) -> Transformer:
    """A random tiny Transformer (fp32, eval mode); norms get random affine parameters too."""
    torch.manual_seed(seed)
    model = Transformer(tiny_config(**overrides))
    model.reset_parameters(std)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:  # non-trivial norm parameters, so conversion bugs show in parity tests
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def write_tiny_checkpoint(directory: str | Path, assets: TinyAssets, chunk_size: int = 5, resolution: int = 256,
                          seed: int = 0, history: int = 2, action_stats: str = "worldvla",
                          with_state: bool = False, with_wrist: bool = False, **model_overrides) -> Path:
    """Write a random tiny WorldVLA checkpoint to `directory` and return the directory."""
    directory = Path(directory)
    save_model(make_tiny_model(seed, **model_overrides), directory)
    tok_dir = directory / "tokenizer"
    tok_dir.mkdir(parents=True, exist_ok=True)
    for src in (assets.tokenizer_json, assets.vqgan_yaml, assets.vqgan_ckpt):
        shutil.copy2(src, tok_dir / Path(src).name)
    stats = load_stats(action_stats)
    settings = {
        "chunk_size": chunk_size, "history": history, "resolution": resolution,
        "action_stats": {"min": list(stats.min), "max": list(stats.max)},
        "with_state": with_state, "with_wrist": with_wrist,
        "text_tokenizer_sha256": sha256_file(tok_dir / "text_tokenizer.json"),
        "step": 0,
    }
    if with_state:
        s = load_stats("rynnvla_state")
        settings["state_stats"] = {"min": list(s.min), "max": list(s.max)}
    (directory / "worldvla.json").write_text(json.dumps(settings, indent=1))
    return directory
