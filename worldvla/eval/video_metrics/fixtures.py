"""Randomly initialised metric networks saved in the official file formats, for tests and demos.

- `write_random_lpips(dir)`: `vgg.pth` (lpips layout: `lin{k}.model.1.weight`, (1, C, 1, 1), non-negative
  as in the real file) and `vgg16-397923af.pth` (torchvision layout: `features.{i}.weight/bias`).
- `write_tiny_i3d(path)`: a small 3-D conv net, scripted and saved with torch.jit.save, with the
  StyleGAN-V I3D call signature `forward(x, rescale, resize, return_features)` on (B, 3, T, H, W) 0..255.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import weights as W
from .lpips import STAGE_CHANNELS, vgg16_features


def write_random_lpips(folder: str | Path, seed: int = 0) -> tuple[Path, Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    lin = {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1, generator=g) for k, c in enumerate(STAGE_CHANNELS)}
    torch.manual_seed(seed)
    vgg = {f"features.{k}": v for k, v in vgg16_features().state_dict().items()}
    lin_path, vgg_path = folder / W.LPIPS_LIN_FILE, folder / W.VGG16_FILE
    torch.save(lin, lin_path)
    torch.save(vgg, vgg_path)
    return lin_path, vgg_path


class TinyI3D(nn.Module):
    """Same call signature as StyleGAN-V's i3d_torchscript.pt; returns `feature_dim` features, or
    `num_classes` logits when return_features is False."""

    def __init__(self, feature_dim: int = 16, num_classes: int = 5, side: int = 32):
        super().__init__()
        self.side = side
        self.conv1 = nn.Conv3d(3, 8, kernel_size=3, stride=(1, 2, 2), padding=1)
        self.conv2 = nn.Conv3d(8, 16, kernel_size=3, stride=2, padding=1)
        self.proj = nn.Linear(16 + 6, feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = False) -> torch.Tensor:
        if rescale:
            x = x / 127.5 - 1.0
        if resize:
            x = F.interpolate(x, size=(x.shape[2], self.side, self.side), mode="trilinear", align_corners=False)
        h = F.relu(self.conv2(F.relu(self.conv1(x))))
        pooled = torch.cat([h.mean(dim=(2, 3, 4)), x.mean(dim=(2, 3, 4)), x.std(dim=(2, 3, 4))], dim=1)
        f = self.proj(pooled)
        if return_features:
            return f
        return self.head(f)


def write_tiny_i3d(path: str | Path, feature_dim: int = 16, seed: int = 0) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(TinyI3D(feature_dim).eval()), str(path))
    return path
