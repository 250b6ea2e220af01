"""Fit a tiny VQ-GAN (encoder, codebook, decoder) to a folder of frames, in place, in minutes on CPU.

    python -m worldvla.testing.fit_vqgan tokenizer=<dir with vqgan.yaml + vqgan.ckpt> frames=<png folder>

The demo's VQ-GAN (worldvla.testing.fixtures.write_vqgan) is random, so decoded images are noise
even for ground-truth codes. This fits it on the demo's own frames for `max_steps` optimizer steps
(so the same command gives the same tokenizer on any machine; `seconds` is only a safety cap): MSE
reconstruction + VQ codebook and commitment losses with a straight-through estimator, the codebook
first filled with encoder outputs of real frames. No GAN or perceptual loss: the images are blurry,
but show the scene. Every `holdout`-th trajectory is kept out of the fit; the report (logged, and returned)
gives their reconstruction PSNR and what the tokens can tell apart: codes per frame, distinct codes
used, and the mean per-position entropy of the codes (bits) over the frames. The result overwrites `vqgan.ckpt` in the format it has: the Lightning-style torch
file (top-level `state_dict` with the keys `load_vqgan` reads; the file's other keys, `loss.*` included,
are kept) or safetensors (after `python -m worldvla.model.vqgan convert`; recognised by content).
"""

from __future__ import annotations

import io
import json
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
    max_steps: int = 300  # optimizer steps: the budget (machine-independent)
    seconds: float = 0.0  # optional wall-clock cap on top (0 = none); a capped fit depends on the machine's load
    holdout: int = 10  # every holdout-th trajectory folder is measured, never fitted (0 = fit on all)
    batch_size: int = 16
    lr: float = 2.0e-3
    beta: float = 0.25  # commitment-loss weight
    max_frames: int = 2000  # frames kept (evenly spaced) from the folder
    seed: int = 0
    threads: int = 0  # torch CPU threads; 0: torch's default
    report: str = ""  # also write the returned statistics (steps, MSE, held-out PSNR, code usage) to this JSON


def frame_files(folder: str | Path, max_frames: int = 2000) -> list[Path]:
    """All `*.png` under `folder`, sorted, evenly thinned to `max_frames`."""
    files = sorted(Path(folder).rglob("*.png"))
    if not files:
        raise FileNotFoundError(f"no *.png frames under {folder}")
    if len(files) > max_frames:
        files = [files[i] for i in np.linspace(0, len(files) - 1, max_frames).round().astype(int)]
    return files


def load_frames(folder: str | Path, max_frames: int = 2000, files: list[Path] | None = None) -> np.ndarray:
    """All `*.png` under `folder` (sorted, evenly thinned to `max_frames`), or `files` -> (N, H, W, 3) uint8."""
    frames = [to_rgb_array(f) for f in (files if files is not None else frame_files(folder, max_frames))]
    if len({f.shape for f in frames}) != 1:
        raise ValueError(f"frames under {folder} differ in size: {sorted({f.shape for f in frames})}")
    return np.stack(frames)


def to_pixels(frames: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) fp32 in [-1, 1], as ImageTokenizer.preprocess."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).float()
    return (x / 255.0 * 2.0 - 1.0).permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def token_report(model: VQGAN, pixels: torch.Tensor) -> dict:
    """What the codes can tell apart on `pixels`: reconstruction PSNR (dB, images in [0, 1]), codes per
    frame, distinct codes used, and the per-position code entropy in bits (mean over positions)."""
    model.eval()
    codes, mse = [], []
    for i in range(len(pixels)):
        x = pixels[i : i + 1]
        idx = model.encode(x)  # (1, h, w): the codes the tokenizer gives this frame
        codes.append(idx.reshape(-1).numpy())
        mse.append(F.mse_loss(model.decode(idx), x).item() / 4.0)  # [-1, 1] -> [0, 1] units
    codes = np.stack(codes)  # (N, h*w)
    entropy = []
    for pos in codes.T:
        p = np.unique(pos, return_counts=True)[1] / len(pos)
        entropy.append(float(-(p * np.log2(p)).sum()))
    return {"frames": len(pixels), "psnr_db": float(10 * np.log10(1.0 / max(np.mean(mse), 1e-12))),
            "codes_per_frame": int(codes.shape[1]), "distinct_codes": len(np.unique(codes)),
            "position_entropy_bits": float(np.mean(entropy))}


def split_holdout(files: list[Path], every: int) -> tuple[list[Path], list[Path]]:
    """(fit files, held-out files): every `every`-th trajectory folder (the folder above a view's folder,
    export layout `<task>/trj_<i>/<view>/image_<j>.png`) is held out whole, so the measure is on frames of
    episodes the fit never saw; none when every <= 1 or there are fewer than 2 trajectories to hold one out."""
    trajectories = sorted({f.parent.parent for f in files})
    held = {t for i, t in enumerate(trajectories) if every > 1 and i % every == every - 1}
    if not held or len(held) == len(trajectories):
        return files, []
    return [f for f in files if f.parent.parent not in held], [f for f in files if f.parent.parent in held]


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
    while steps < cfg.max_steps and (cfg.seconds <= 0 or time.time() - t0 < cfg.seconds):
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
    fit_files, held_files = split_holdout(frame_files(cfg.frames, cfg.max_frames), cfg.holdout)
    stats = fit(model, load_frames(cfg.frames, files=fit_files), cfg)
    save_ckpt(model, tok / "vqgan.ckpt")
    log.info("fitted %s on %d frames: %d steps in %.0f s, reconstruction MSE %.4f -> %.4f",
             tok / "vqgan.ckpt", stats["frames"], stats["steps"], stats["seconds"], stats["mse_before"],
             stats["mse_after"])
    if held_files:
        stats["held_out"] = token_report(model, to_pixels(load_frames(cfg.frames, files=held_files)))
        stats["held_out"]["trajectories"] = len({f.parent.parent for f in held_files})
        log.info("held-out frames: %s", {k: round(v, 3) for k, v in stats["held_out"].items()})
    if cfg.report:
        atomic_write(Path(cfg.report), json.dumps(stats, indent=1).encode())
        log.info("statistics written to %s", cfg.report)
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
