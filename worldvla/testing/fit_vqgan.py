"""Fit a tiny VQ-GAN (encoder, codebook, decoder) to a folder of frames, in place, in minutes on CPU.

    python -m worldvla.testing.fit_vqgan tokenizer=<dir with vqgan.yaml + vqgan.ckpt> frames=<png folder>

The demo's VQ-GAN (worldvla.testing.fixtures.write_vqgan) is random, so decoded images are noise
even for ground-truth codes. This fits it for a fixed budget on the demo's own frames: MSE
reconstruction + VQ codebook and commitment losses with a straight-through estimator, the codebook
first filled with encoder outputs of real frames. No GAN or perceptual loss: the images are blurry,
but show the scene. The result overwrites `vqgan.ckpt` in the format it has: the Lightning-style torch
file (top-level `state_dict` with the keys `load_vqgan` reads; the file's other keys, `loss.*` included,
are kept) or safetensors (after `python -m worldvla.model.vqgan convert`; recognised by content).
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file
from safetensors.torch import save as save_safetensors

from worldvla.atomic import atomic_write
from worldvla.config import parse_cli
from worldvla.model.safe_ckpt import is_safetensors
from worldvla.model.vqgan import VQGAN, load_vqgan
from worldvla.tokenizers.image import to_rgb_array

log = logging.getLogger("worldvla.fit_vqgan")


@dataclass
class FitVQGANConfig:
    tokenizer: str = ""  # folder with vqgan.yaml + vqgan.ckpt; vqgan.ckpt is overwritten
    frames: str = ""  # folder searched recursively for *.png frames (all of one size, a multiple of 16)
    seconds: float = 60.0  # wall-clock budget of the optimisation (the init and save come on top)
    max_steps: int = 5000  # stop earlier after this many optimizer steps
    batch_size: int = 16
    lr: float = 2.0e-3
    beta: float = 0.25  # commitment-loss weight
    max_frames: int = 2000  # frames kept (evenly spaced) from the folder
    seed: int = 0
    threads: int = 0  # torch CPU threads; 0: torch's default


def load_frames(folder: str | Path, max_frames: int = 2000) -> np.ndarray:
    """All `*.png` under `folder` (sorted, evenly thinned to `max_frames`) -> (N, H, W, 3) uint8."""
    files = sorted(Path(folder).rglob("*.png"))
    if not files:
        raise FileNotFoundError(f"no *.png frames under {folder}")
    if len(files) > max_frames:
        files = [files[i] for i in np.linspace(0, len(files) - 1, max_frames).round().astype(int)]
    frames = [to_rgb_array(f) for f in files]
    if len({f.shape for f in frames}) != 1:
        raise ValueError(f"frames under {folder} differ in size: {sorted({f.shape for f in frames})}")
    return np.stack(frames)


def to_pixels(frames: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) fp32 in [-1, 1], as ImageTokenizer.preprocess."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).float()
    return (x / 255.0 * 2.0 - 1.0).permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def reconstruction_mse(model: VQGAN, pixels: torch.Tensor) -> float:
    """Mean squared error in [-1, 1] units of decode(encode(x)), frame by frame like the tokenizer."""
    model.eval()
    errs = [F.mse_loss(model.decode(model.encode(pixels[i : i + 1])), pixels[i : i + 1]).item()
            for i in range(len(pixels))]
    return float(np.mean(errs))


def _latents(model: VQGAN, x: torch.Tensor) -> torch.Tensor:
    return model.quant_conv(model.encoder(x))  # (B, C, h, w)


@torch.no_grad()
def init_codebook(model: VQGAN, pixels: torch.Tensor, gen: torch.Generator, noise: float = 0.05,
                  max_frames: int = 256) -> None:
    """Fill every code with an encoder latent of a real frame (of up to `max_frames` random frames,
    drawn with replacement) plus noise."""
    model.eval()
    pixels = pixels[torch.randperm(len(pixels), generator=gen)[:max_frames]]
    z = torch.cat([_latents(model, pixels[i : i + 32]) for i in range(0, len(pixels), 32)])
    flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    emb = model.quantize.embedding.weight
    pick = torch.randint(len(flat), (emb.shape[0],), generator=gen)
    scale = flat.std().clamp_min(1e-6)
    emb.copy_(flat[pick] + noise * scale * torch.randn(emb.shape, generator=gen))


def fit(model: VQGAN, frames: np.ndarray, cfg: FitVQGANConfig) -> dict:
    """Fit `model` in place on `frames` ((N, H, W, 3) uint8) for `cfg.seconds` / `cfg.max_steps`.
    Returns stats: steps, seconds, reconstruction MSE before and after (on up to 64 frames)."""
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    pixels = to_pixels(frames)
    probe = pixels[torch.linspace(0, len(pixels) - 1, min(64, len(pixels))).round().long()]
    before = reconstruction_mse(model, probe)
    t0 = time.time()
    init_codebook(model, pixels, gen)
    model.train().requires_grad_(True)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.5, 0.9))
    emb = model.quantize.embedding
    steps, last = 0, {}
    while steps < cfg.max_steps and time.time() - t0 < cfg.seconds:
        x = pixels[torch.randint(len(pixels), (min(cfg.batch_size, len(pixels)),), generator=gen)]
        z = _latents(model, x)
        b, c, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, c)
        with torch.no_grad():
            dist = flat.pow(2).sum(1, keepdim=True) + emb.weight.pow(2).sum(1) - 2 * flat @ emb.weight.t()
            codes = dist.argmin(1)
        q = emb(codes).reshape(b, h, w, c).permute(0, 3, 1, 2)
        codebook, commit = F.mse_loss(q, z.detach()), F.mse_loss(z, q.detach())
        zq = z + (q - z).detach()  # straight-through: the decoder's gradient flows to the encoder
        rec = F.mse_loss(model.decoder(model.post_quant_conv(zq)), x)
        loss = rec + codebook + cfg.beta * commit
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        steps += 1
        last = {"rec": rec.item(), "codebook": codebook.item(), "commit": commit.item()}
        if steps % 50 == 0:
            log.info("step %d (%.0f s): %s", steps, time.time() - t0, {k: round(v, 4) for k, v in last.items()})
    seconds = time.time() - t0
    model.eval().requires_grad_(False)
    after = reconstruction_mse(model, probe)
    return {"steps": steps, "seconds": seconds, "frames": len(frames), "mse_before": before,
            "mse_after": after, "last_losses": last}


def save_ckpt(model: VQGAN, ckpt_path: str | Path) -> Path:
    """Overwrite `ckpt_path` with the model's weights, in the format the file already has, keeping its
    other entries; written atomically. A Lightning-style torch file keeps its `loss.*` weights, global_step,
    ... under/next to `state_dict`; a safetensors file (what `python -m worldvla.model.vqgan convert` writes,
    possibly still named vqgan.ckpt) keeps its other tensors and its metadata."""
    ckpt_path = Path(ckpt_path)
    weights = {k: v.detach().clone().cpu().contiguous() for k, v in model.state_dict().items()}
    if is_safetensors(ckpt_path):
        with safe_open(str(ckpt_path), framework="pt") as f:
            metadata = f.metadata()
        state = {**load_file(str(ckpt_path)), **weights}
        atomic_write(ckpt_path, save_safetensors(state, metadata=metadata))
        return ckpt_path
    blob = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    blob["state_dict"] = {**blob.get("state_dict", {}), **weights}
    buf = io.BytesIO()
    torch.save(blob, buf)
    atomic_write(ckpt_path, buf.getvalue())
    return ckpt_path


def fit_vqgan_files(cfg: FitVQGANConfig) -> dict:
    """Load `cfg.tokenizer`'s VQ-GAN, fit it on the frames under `cfg.frames`, overwrite its ckpt."""
    tok = Path(cfg.tokenizer)
    model = load_vqgan(tok / "vqgan.yaml", tok / "vqgan.ckpt")
    frames = load_frames(cfg.frames, cfg.max_frames)
    stats = fit(model, frames, cfg)
    save_ckpt(model, tok / "vqgan.ckpt")
    log.info("fitted %s on %d frames: %d steps in %.0f s, reconstruction MSE %.4f -> %.4f",
             tok / "vqgan.ckpt", stats["frames"], stats["steps"], stats["seconds"], stats["mse_before"],
             stats["mse_after"])
    return stats


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    cfg = parse_cli(FitVQGANConfig, argv, description=__doc__)
    if not cfg.tokenizer or not cfg.frames:
        raise SystemExit("fit_vqgan: tokenizer=<dir> and frames=<dir> are required (see --help)")
    fit_vqgan_files(cfg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
