"""worldvla/testing/fit_vqgan.py: a short fit of the tiny random VQ-GAN on a few frames must clearly
lower its encode -> decode error, and the rewritten vqgan.ckpt must load through the real tokenizer."""


import json

import numpy as np
import torch
from PIL import Image

from worldvla.testing.fit_vqgan import FitVQGANConfig, fit_vqgan_files, main
from worldvla.testing.fixtures import make_tiny_assets
from worldvla.tokenizers import ImageTokenizer
from worldvla.vocab import Vocab

RES = 32  # smallest size the tokenizer takes (2 x 2 codes): keeps the fit within seconds on CPU


def _scenes(n: int, seed: int = 0) -> np.ndarray:
    """Synthetic frames of one scene, as in a demo: a fixed coloured tabletop and a box that moves."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:RES, 0:RES] / RES
    table = np.stack([170 - 90 * yy, 120 + 60 * xx, 60 + 80 * yy * xx], axis=-1)
    table[RES // 2 :, :] *= 0.6  # a darker front half
    frames = []
    for _ in range(n):
        img = table.copy()
        y0, x0 = rng.integers(2, RES - 12, 2)
        img[y0 : y0 + 10, x0 : x0 + 10] = (230, 40, 40)
        frames.append(np.clip(img, 0, 255).astype(np.uint8))
    return np.stack(frames)


def _tokenizer_mse(tok_dir, frames) -> float:
    vocab = Vocab.from_tokenizer_file(tok_dir / "text_tokenizer.json")
    tok = ImageTokenizer.from_files(tok_dir / "vqgan.yaml", tok_dir / "vqgan.ckpt", vocab, resolution=RES)
    recon = tok.decode(tok.encode(list(frames)))
    assert recon.shape == frames.shape and recon.dtype == np.uint8
    return float(np.mean(((recon.astype(np.float64) - frames) / 127.5) ** 2))


def test_fit_lowers_reconstruction_error_and_ckpt_loads(tmp_path):
    torch.manual_seed(0)
    assets = make_tiny_assets(tmp_path / "assets")
    tok_dir = assets.vqgan_ckpt.parent
    frames = _scenes(12)
    for i, f in enumerate(frames):  # three trajectories of four frames, in the export layout
        frame_dir = tmp_path / "frames" / f"trj_{i // 4}" / "imgs"
        frame_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(f).save(frame_dir / f"image_{i % 4}.png")
    keys_before = set(torch.load(assets.vqgan_ckpt, weights_only=True)["state_dict"])
    random_mse = _tokenizer_mse(tok_dir, frames)

    report = tmp_path / "fit.json"
    stats = fit_vqgan_files(FitVQGANConfig(tokenizer=str(tok_dir), frames=str(tmp_path / "frames"), max_steps=60,
                                           batch_size=8, lr=1e-3, holdout=3, report=str(report)))
    assert stats["steps"] == 60  # the budget is steps: no wall clock, whatever the machine's load
    assert stats["frames"] == 8  # trj_2 (every third trajectory) is held out whole
    held = stats["held_out"]
    assert held["frames"] == 4 and held["trajectories"] == 1 and held["codes_per_frame"] == (RES // 16) ** 2
    assert held["psnr_db"] > 10 and 1 <= held["distinct_codes"] <= 4 * held["codes_per_frame"]
    assert 0 <= held["position_entropy_bits"] <= 2  # 4 frames: at most log2(4) bits per position
    assert json.loads(report.read_text())["held_out"] == held

    blob = torch.load(assets.vqgan_ckpt, weights_only=True)  # same official layout, loss.* kept
    assert set(blob["state_dict"]) == keys_before and "loss.discriminator.main.0.weight" in keys_before
    fitted_mse = _tokenizer_mse(tok_dir, frames)  # through the real ImageTokenizer loader
    assert fitted_mse < 0.5 * random_mse, (random_mse, fitted_mse, stats)


def test_cli_help(capsys):
    try:
        main(["--help"])
    except SystemExit as exit_:
        assert exit_.code == 0
    out = capsys.readouterr().out
    assert "seconds" in out and "tokenizer" in out and "frames" in out


def test_refit_of_a_converted_safetensors_vqgan_keeps_the_format(tmp_path):
    """After `python -m worldvla.model.vqgan convert`, vqgan.ckpt holds safetensors: the fit reads and
    rewrites that format (never a torch pickle) and the refit weights load through the real tokenizer."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from worldvla.model.safe_ckpt import is_safetensors
    from worldvla.model.vqgan import main as vqgan_main

    torch.manual_seed(0)
    assets = make_tiny_assets(tmp_path / "assets")
    tok_dir = assets.vqgan_ckpt.parent
    converted = tmp_path / "vqgan.safetensors"
    assert vqgan_main(["convert", str(assets.vqgan_ckpt), str(converted)]) == 0
    converted.replace(assets.vqgan_ckpt)  # in place of the original, under its name (recognised by content)
    before = load_file(str(assets.vqgan_ckpt))
    frames = _scenes(6)
    frame_dir = tmp_path / "frames"
    frame_dir.mkdir()
    for i, f in enumerate(frames):
        Image.fromarray(f).save(frame_dir / f"image_{i}.png")

    stats = fit_vqgan_files(FitVQGANConfig(tokenizer=str(tok_dir), frames=str(frame_dir), max_steps=3,
                                           batch_size=4, lr=1e-3))
    assert stats["steps"] == 3
    assert is_safetensors(assets.vqgan_ckpt) and assets.vqgan_ckpt.read_bytes()[:2] != b"PK"  # not a torch zip
    after = load_file(str(assets.vqgan_ckpt))
    assert set(after) == set(before)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert "quantize.embedding.weight" in changed and any(k.startswith("decoder.") for k in changed)
    with safe_open(str(assets.vqgan_ckpt), framework="pt") as f:
        assert f.metadata()["source"] == "vqgan.ckpt"  # the converter's metadata is kept
    assert np.isfinite(_tokenizer_mse(tok_dir, frames))  # loads and runs through the real ImageTokenizer
