"""Frechet Video Distance with StyleGAN-V's TorchScript I3D.

Protocol (official `calculate_world_model_performance.py`, itself StyleGAN-V's):
- one feature vector per clip: the whole clip, float (1, 3, T, 256, 256) scaled to 0..255, through
  `i3d(x, rescale=True, resize=True, return_features=True)` (the network rescales to [-1, 1] and
  resizes to 224 itself; the features are the 400-d pre-softmax logits);
- Gaussian fit of each set: mean and population covariance E[f f^T] - mu mu^T (divide by N),
  accumulated in float64;
- FVD = |mu_r - mu_g|^2 + tr(S_r + S_g - 2 sqrtm(S_r S_g)), with S <- S + 1e-6 I on both sides and
  the real part of scipy.linalg.sqrtm.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import scipy.linalg
import torch

from worldvla.errors import InputFileError

from . import weights as W

FVD_EPS = 1e-6
I3D_KWARGS = {"rescale": True, "resize": True, "return_features": True}


class FeatureStats:
    """Running mean / covariance of feature vectors (float64 accumulators)."""

    def __init__(self):
        self.n = 0
        self.sum: np.ndarray | None = None
        self.outer: np.ndarray | None = None

    def append(self, feats) -> None:
        x = np.asarray(feats, dtype=np.float32).astype(np.float64)
        x = x.reshape(1, -1) if x.ndim == 1 else x
        if x.ndim != 2:
            raise ValueError(f"features must be (N, D), got {x.shape}")
        if self.sum is None:
            self.sum = np.zeros(x.shape[1])
            self.outer = np.zeros((x.shape[1], x.shape[1]))
        elif x.shape[1] != self.sum.shape[0]:
            raise ValueError(f"feature size {x.shape[1]} != {self.sum.shape[0]}")
        self.n += x.shape[0]
        self.sum += x.sum(0)
        self.outer += x.T @ x

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        if self.n == 0:
            raise ValueError("no features accumulated")
        mu = self.sum / self.n
        return mu, self.outer / self.n - np.outer(mu, mu)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = FVD_EPS) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), each covariance + eps * I."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    eye = np.eye(mu1.shape[0])
    s1 = np.asarray(sigma1, np.float64) + eps * eye
    s2 = np.asarray(sigma2, np.float64) + eps * eye
    root = np.real(scipy.linalg.sqrtm(s1 @ s2))
    return float(np.real(np.square(mu2 - mu1).sum() + np.trace(s1 + s2 - 2 * root)))


def fvd_from_features(real, gen, eps: float = FVD_EPS) -> float:
    """FVD between two (N, D) feature sets (population covariances, as the official FeatureStats)."""
    a, b = FeatureStats(), FeatureStats()
    a.append(real)
    b.append(gen)
    return frechet_distance(*a.mean_cov(), *b.mean_cov(), eps=eps)


class I3D:
    """A TorchScript I3D feature extractor. Call with clips (B, T, 3, H, W) in [0, 1] (float) or a
    list of uint8 (T, H, W, 3) clips; returns features (B, D) as float32 numpy."""

    def __init__(self, module: torch.jit.ScriptModule, path: str = "", sha256: str = "",
                 device: str | torch.device = "cpu"):
        self.module, self.path, self.sha256, self.device = module, path, sha256, torch.device(device)

    @torch.no_grad()
    def __call__(self, clips: torch.Tensor) -> np.ndarray:
        x = clips.to(self.device, torch.float32).permute(0, 2, 1, 3, 4).contiguous() * 255.0  # (B, 3, T, H, W)
        feats = self.module(x, **I3D_KWARGS)
        return feats.float().cpu().numpy().reshape(x.shape[0], -1)

    @property
    def source(self) -> dict[str, str]:
        return {"path": self.path, "sha256": self.sha256}


class UntrustedTorchScriptError(InputFileError):
    """A TorchScript file whose sha256 is not the trusted one: loading it would run its code."""


def load_i3d(path: str | os.PathLike | None = None, metrics_dir: str | os.PathLike | None = None,
             device: str | torch.device = "cpu", trusted_sha256: str | None = None) -> I3D:
    """Load `i3d_torchscript.pt` (default `<metrics_dir>/i3d_torchscript.pt`) with torch.jit.load.

    TorchScript runs code from the file at load time, so the file is loaded only if its full sha256 equals
    the published one (`weights.I3D_SHA256`), or `trusted_sha256` when given: the exact digest of a file
    the caller has checked itself (an explicit opt-in, e.g. test networks). Anything else raises
    UntrustedTorchScriptError naming the file and both digests, before torch.jit.load."""
    file = W.resolve_weight(W.I3D_FILE, path, metrics_dir, "I3D (FVD)")
    digest = _trusted_digest(file, trusted_sha256 or W.I3D_SHA256)
    with warnings.catch_warnings():  # TorchScript is deprecated in recent torch, but it is the file's format
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(file), map_location=device).eval()
    return I3D(module, str(file), digest, device)


def _trusted_digest(file, trusted: str) -> str:
    """The file's sha256 if it is exactly `trusted` (no prefix match: a prefix is not a pin)."""
    digest = W.sha256_file(file)
    if digest != trusted.lower():
        raise UntrustedTorchScriptError(
            file, f"sha256 {digest} is not the trusted I3D sha256 {trusted.lower()}; refusing to load it "
            "(TorchScript runs code from the file); trust it only if you checked it: i3d_sha256=<its sha256>")
    return digest
