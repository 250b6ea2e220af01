"""Frame preprocessing and the per-frame pixel metrics (PSNR, SSIM, MSE), batched in torch.

Conventions: uint8 frames are channels-last, (..., H, W, 3), values 0..255 (the project's image
convention); float tensors are channels-first, (N, 3, H, W), values in [0, 1]. `to_unit` converts
the former into the latter.

The definitions follow the official `calculate_world_model_performance.py`, which uses piqa:
- PSNR = 10 log10(L^2 / (MSE + 1e-8)), L = 1, per frame over all pixels and channels, so identical
  frames give 10 log10(1e8) = 80 dB (never inf).
- SSIM with a separable Gaussian window (size 11, sigma 1.5, normalised to sum 1), "valid"
  convolution (no padding), constants C1 = (0.01 L)^2, C2 = (0.03 L)^2, variances as
  E[x^2] - E[x]^2 under the window, averaged over the valid positions and the 3 channels.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

PSNR_EPSILON = 1e-8
VALUE_RANGE = 1.0
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03
EVAL_SIZE = 256  # official: every frame resized to 256x256 (cv2.INTER_AREA) before all metrics


# ---------------------------------------------------------------------------------------------------
# preprocessing

def resize_area(frames: np.ndarray, size: int = EVAL_SIZE) -> np.ndarray:
    """Resize uint8 frames (..., H, W, 3) to (size, size) with area interpolation.

    - same size: returned unchanged;
    - integer downscale factor k (LIBERO 512 -> 256 is k = 2): exact box mean of each k x k block in
      integer arithmetic, rounded as OpenCV's INTER_AREA rounds it (half up for k = 2, half to even
      otherwise), so the result equals cv2.resize(..., INTER_AREA) bit for bit;
    - anything else: cv2.resize(INTER_AREA) when OpenCV is installed (the official reader), else
      PIL's BOX filter with a warning (can differ from OpenCV by 1 grey level on some pixels).
    """
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        raise TypeError(f"resize_area expects uint8 frames, got {frames.dtype}")
    h, w = frames.shape[-3:-1]
    if (h, w) == (size, size):
        return frames
    if h == w and h % size == 0:
        k = h // size
        lead = frames.shape[:-3]
        blocks = frames.reshape(*lead, size, k, size, k, frames.shape[-1]).astype(np.int64)
        total = blocks.sum(axis=(-4, -2))  # (..., size, size, C)
        d = k * k
        if k == 2:  # OpenCV's 2x2 fast path: (sum + 2) >> 2, i.e. round half up
            return ((total + 2) // 4).astype(np.uint8)
        q, r = np.divmod(total, d)  # otherwise sum / k^2 rounded half to even (cvRound)
        q += (2 * r > d) | ((2 * r == d) & (q % 2 == 1))
        return q.astype(np.uint8)
    flat = frames.reshape(-1, h, w, frames.shape[-1])
    try:
        import cv2

        out = np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in flat])
    except ImportError:
        warnings.warn("OpenCV is not installed: resizing with PIL BOX instead of cv2.INTER_AREA "
                      "(may differ by one grey level from the official preprocessing)", stacklevel=2)
        out = np.stack([np.asarray(Image.fromarray(f).resize((size, size), Image.BOX)) for f in flat])
    return out.reshape(*frames.shape[:-3], size, size, frames.shape[-1])


def to_unit(frames, device: str | torch.device = "cpu") -> torch.Tensor:
    """uint8 (..., H, W, 3) numpy/torch -> float32 (..., 3, H, W) in [0, 1]. Float tensors are assumed
    to be channels-first in [0, 1] already and are only clamped (as the official evaluator does)."""
    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(np.ascontiguousarray(frames))
    if frames.dtype == torch.uint8:
        return frames.to(device).movedim(-1, -3).float().div(255.0)
    return frames.to(device=device, dtype=torch.float32).clamp(0.0, 1.0)


def preprocess_clip(frames: np.ndarray, size: int = EVAL_SIZE, device: str | torch.device = "cpu") -> torch.Tensor:
    """Official preprocessing of one clip: uint8 (T, H, W, 3) -> resize_area to size x size -> float
    (T, 3, size, size) in [0, 1]."""
    return to_unit(resize_area(frames, size), device)


def _as_batch(x) -> torch.Tensor:
    x = to_unit(x) if isinstance(x, np.ndarray) or x.dtype == torch.uint8 else x
    return x.unsqueeze(0) if x.dim() == 3 else x


# ---------------------------------------------------------------------------------------------------
# metrics; all return one value per frame, shape (N,)

def mse(a, b) -> torch.Tensor:
    a, b = _as_batch(a), _as_batch(b)
    return (a - b).pow(2).flatten(1).mean(1)


def psnr(a, b, epsilon: float = PSNR_EPSILON, value_range: float = VALUE_RANGE) -> torch.Tensor:
    """PSNR in dB per frame; a, b (N, 3, H, W) floats in [0, value_range] (or uint8 (N, H, W, 3))."""
    return 10.0 * torch.log10(value_range**2 / (mse(a, b) + epsilon))


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA, dtype=torch.float32) -> torch.Tensor:
    """1-D Gaussian of `size` taps centred on (size - 1) / 2, normalised to sum 1."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return (g / g.sum()).to(dtype)


def _blur(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable 'valid' Gaussian filter applied to every channel independently."""
    c = x.shape[1]
    x = F.conv2d(x, g.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)  # along H
    return F.conv2d(x, g.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)  # along W


def ssim(a, b, window_size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA, k1: float = SSIM_K1,
         k2: float = SSIM_K2, value_range: float = VALUE_RANGE) -> torch.Tensor:
    """Mean SSIM per frame (averaged over valid window positions and channels)."""
    a, b = _as_batch(a), _as_batch(b)
    if min(a.shape[-2:]) < window_size:
        raise ValueError(f"SSIM needs frames of at least {window_size}x{window_size}, got {tuple(a.shape[-2:])}")
    g = gaussian_window(window_size, sigma, a.dtype).to(a.device)
    c1, c2 = (k1 * value_range) ** 2, (k2 * value_range) ** 2
    mu_a, mu_b = _blur(a, g), _blur(b, g)
    var_a = _blur(a * a, g) - mu_a**2
    var_b = _blur(b * b, g) - mu_b**2
    cov = _blur(a * b, g) - mu_a * mu_b
    luminance = (2 * mu_a * mu_b + c1) / (mu_a**2 + mu_b**2 + c1)
    contrast_structure = (2 * cov + c2) / (var_a + var_b + c2)
    return (luminance * contrast_structure).flatten(1).mean(1)
