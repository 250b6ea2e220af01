"""LPIPS (VGG variant, v0.1) without torchvision.

The network is the one `lpips.LPIPS(net='vgg')` builds: inputs in [-1, 1] are shifted/scaled per
channel, passed through torchvision's VGG16 `features` (same module indices, so the ImageNet state
dict loads as is), and the activations after relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3 are
unit-normalised over channels; the squared difference of the two images' features goes through a
1x1 convolution without bias per stage ("lin" layers), is averaged over space and summed over stages.

Weights come from two explicit local files:
- the lpips linear layers, `vgg.pth` (keys `lin{0..4}.model.1.weight`, shapes (1, C, 1, 1));
- the VGG16 backbone, torchvision's `vgg16-397923af.pth` (keys `features.{i}.weight/bias`; the
  classifier keys are ignored). A full `lpips.LPIPS` state dict (`net.slice{s}.{i}.*`) is accepted too.
"""

from __future__ import annotations

import os
import re

import torch
from torch import nn

from . import weights as W

# torchvision vgg16 "D" configuration: conv widths, "M" = 2x2 max pool.
VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
STAGE_ENDS = (4, 9, 16, 23, 30)  # features[:4] -> relu1_2, [4:9] -> relu2_2, ... [23:30] -> relu5_3
STAGE_CHANNELS = (64, 128, 256, 512, 512)
SHIFT = (-0.030, -0.088, -0.188)  # lpips ScalingLayer
SCALE = (0.458, 0.448, 0.450)
NORM_EPS = 1e-10


def vgg16_features() -> nn.Sequential:
    """Module list laid out exactly like torchvision's `vgg16().features` (indices 0..30)."""
    layers: list[nn.Module] = []
    c_in = 3
    for item in VGG16_LAYOUT:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(c_in, item, kernel_size=3, padding=1), nn.ReLU(inplace=False)]
            c_in = item
    return nn.Sequential(*layers)


class LPIPS(nn.Module):
    """LPIPS-VGG distance. `forward(x, y)` takes (N, 3, H, W) in [-1, 1] (or [0, 1] with
    normalize=True) and returns one distance per pair, shape (N,)."""

    def __init__(self):
        super().__init__()
        self.features = vgg16_features()
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in STAGE_CHANNELS)
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1))
        self.sources: dict[str, dict[str, str]] = {}  # which files the weights came from (+ sha256)
        self.requires_grad_(False)
        self.eval()

    def stage_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = (x - self.shift) / self.scale
        out, start = [], 0
        for end in STAGE_ENDS:
            for i in range(start, end):
                h = self.features[i](h)
            out.append(h)
            start = end
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        if normalize:
            x, y = 2 * x - 1, 2 * y - 1
        n = x.shape[0]
        feats = self.stage_features(torch.cat([x, y]))  # one pass for both images
        total = x.new_zeros(n)
        for lin, f in zip(self.lins, feats):
            f = f / (f.pow(2).sum(dim=1, keepdim=True).sqrt() + NORM_EPS)
            diff = (f[:n] - f[n:]).pow(2)
            total = total + lin(diff).mean(dim=(1, 2, 3))
        return total


# ---------------------------------------------------------------------------------------------------
# loading

_LIN_KEY = re.compile(r"^lin(\d)\.model\.(\d)\.weight$")
_SLICE_KEY = re.compile(r"^net\.slice(\d)\.(\d+)\.(weight|bias)$")


def _torch_load(path) -> dict:
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise TypeError(f"{path}: expected a state dict, got {type(sd).__name__}")
    return sd


def lin_state_dict(sd: dict, path: str = "") -> dict[str, torch.Tensor]:
    """`lin{k}.model.{j}.weight` (lpips file) -> `lins.{k}.weight`, checking all five stages."""
    out = {}
    for key, value in sd.items():
        m = _LIN_KEY.match(key)
        if m:
            out[f"lins.{m.group(1)}.weight"] = value.float()
    for k, c in enumerate(STAGE_CHANNELS):
        w = out.get(f"lins.{k}.weight")
        if w is None or tuple(w.shape) != (1, c, 1, 1):
            found = None if w is None else tuple(w.shape)
            raise KeyError(f"{path}: LPIPS linear layer lin{k}.model.1.weight of shape (1, {c}, 1, 1) "
                           f"missing or wrong (found {found}); is this the lpips v0.1 vgg.pth?")
    return out


def backbone_state_dict(sd: dict, path: str = "") -> dict[str, torch.Tensor]:
    """torchvision `features.{i}.*` or lpips `net.slice{s}.{i}.*` -> `features.{i}.*` (all 13 convs)."""
    out = {}
    for key, value in sd.items():
        if key.startswith("features."):
            out[key] = value.float()
            continue
        m = _SLICE_KEY.match(key)
        if m:
            out[f"features.{m.group(2)}.{m.group(3)}"] = value.float()
    expected = {f"features.{k}": v for k, v in vgg16_features().state_dict().items()}
    missing = [k for k in expected if k not in out]
    if missing:
        raise KeyError(f"{path}: VGG16 backbone keys missing ({len(missing)}, e.g. {missing[:3]}); "
                       "expected torchvision's vgg16 state dict (features.0.weight ...)")
    for k, v in expected.items():
        if tuple(out[k].shape) != tuple(v.shape):
            raise ValueError(f"{path}: {k} has shape {tuple(out[k].shape)}, expected {tuple(v.shape)}")
    return {k: out[k] for k in expected}


def load_lpips(lin_path: str | os.PathLike | None = None, vgg_path: str | os.PathLike | None = None,
               metrics_dir: str | os.PathLike | None = None, device: str | torch.device = "cpu",
               verify: bool = True) -> LPIPS:
    """LPIPS-VGG with weights from local files.

    lin_path: lpips `vgg.pth` (default `<metrics_dir>/vgg.pth`, else the installed lpips package's copy).
    vgg_path: torchvision `vgg16-397923af.pth` (default `<metrics_dir>/vgg16-397923af.pth`, else the
    torch hub cache). If `lin_path` is a full lpips.LPIPS state dict with the backbone, `vgg_path` is
    not needed. Raises `MissingWeightsError` naming the expected locations. With `verify`, a checksum
    different from the published files only warns (and is recorded in `model.sources`).
    """
    lin_file = W.resolve_weight(W.LPIPS_LIN_FILE, lin_path, metrics_dir, "LPIPS linear-layer")
    lin_sd = _torch_load(lin_file)
    model = LPIPS()
    state = lin_state_dict(lin_sd, str(lin_file))
    lin_sha = W.check_sha256(lin_file, W.LPIPS_LIN_SHA256 if verify else None, "LPIPS vgg.pth")
    model.sources["lpips_lin"] = {"path": str(lin_file), "sha256": lin_sha}
    if vgg_path is None and any(_SLICE_KEY.match(k) for k in lin_sd):
        state.update(backbone_state_dict(lin_sd, str(lin_file)))
        model.sources["vgg16"] = {"path": str(lin_file), "sha256": lin_sha}
    else:
        vgg_file = W.resolve_weight(W.VGG16_FILE, vgg_path, metrics_dir, "VGG16 ImageNet backbone (for LPIPS)")
        state.update(backbone_state_dict(_torch_load(vgg_file), str(vgg_file)))
        vgg_sha = W.check_sha256(vgg_file, W.VGG16_SHA256_PREFIX if verify else None, "VGG16 backbone")
        model.sources["vgg16"] = {"path": str(vgg_file), "sha256": vgg_sha}
    state["shift"], state["scale"] = model.shift, model.scale
    model.load_state_dict(state, strict=True)
    return model.to(device)


@torch.no_grad()
def lpips_distance(model: LPIPS, a: torch.Tensor, b: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """LPIPS per frame for (N, 3, H, W) frames in [0, 1] (mapped to [-1, 1] as the official script does)."""
    dev = next(model.parameters()).device
    out = [model(a[i:i + batch_size].to(dev) * 2 - 1, b[i:i + batch_size].to(dev) * 2 - 1).cpu()
           for i in range(0, a.shape[0], batch_size)]
    return torch.cat(out) if out else torch.zeros(0)


__all__ = ["LPIPS", "load_lpips", "lpips_distance", "vgg16_features"]
