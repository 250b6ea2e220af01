"""Where the metric networks' weights live, and the errors raised when they are missing.

Nothing here downloads anything: every weight file is an explicit local path. A missing file raises
`MissingWeightsError` (a `FileNotFoundError`) that names the expected location and where to get the
file, so an evaluation can never silently drop a metric.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path

import torch.hub

from worldvla.recipe import sha256_file

DEFAULT_METRICS_DIR = Path("ckpts/metrics")  # relative to the working directory; see ckpts/README.md
METRICS_DIR_ENV = "WORLDVLA_METRICS_DIR"

# File names inside the metrics folder (the names the upstream projects publish them under).
LPIPS_LIN_FILE = "vgg.pth"  # lpips package, lpips/weights/v0.1/vgg.pth
VGG16_FILE = "vgg16-397923af.pth"  # torchvision ImageNet VGG16 (IMAGENET1K_V1)
I3D_FILE = "i3d_torchscript.pt"  # StyleGAN-V's TorchScript I3D (Kinetics-400)

# Checksums. LPIPS linear layers: sha256 of lpips 0.1.4's weights/v0.1/vgg.pth (computed from the PyPI
# wheel). VGG16: torchvision embeds the first 8 hex digits of the file's sha256 in its name. I3D:
# StyleGAN-V publishes no checksum; this value and size are recorded by a third party for the file
# served at the StyleGAN-V Dropbox link (docs/world_model_metrics.md) - UNCONFIRMED by this project.
LPIPS_LIN_SHA256 = "a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868"
VGG16_SHA256_PREFIX = "397923af"
I3D_SHA256 = "bec6519f66ea534e953026b4ae2c65553c17bf105611c746d904657e5860a5e2"
I3D_SIZE_BYTES = 51_235_320

WHERE_TO_GET = {
    LPIPS_LIN_FILE: (
        "the LPIPS v0.1 linear-layer weights of the `lpips` PyPI package: `pip download lpips --no-deps`, "
        "unzip the wheel and copy lpips/weights/v0.1/vgg.pth (or install `lpips`: its copy is then found "
        "automatically)"
    ),
    VGG16_FILE: (
        "torchvision's ImageNet VGG16 weights, https://download.pytorch.org/models/vgg16-397923af.pth "
        "(the file torchvision caches in ~/.cache/torch/hub/checkpoints/ is also found automatically)"
    ),
    I3D_FILE: (
        "StyleGAN-V's TorchScript I3D, https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt?dl=1 "
        f"(expected sha256 {I3D_SHA256}, {I3D_SIZE_BYTES} bytes)"
    ),
}


class MissingWeightsError(FileNotFoundError):
    """A metric network's weight file is not where it was expected."""


def metrics_dir(path: str | os.PathLike | None = None) -> Path:
    """The folder searched for metric weights: `path`, else $WORLDVLA_METRICS_DIR, else ckpts/metrics."""
    if path is not None:
        return Path(path)
    return Path(os.environ.get(METRICS_DIR_ENV, DEFAULT_METRICS_DIR))


def _lpips_package_file(name: str) -> Path | None:
    """`lpips/weights/v0.1/<name>` of an installed `lpips` package, found without importing it."""
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        candidate = Path(loc) / "weights" / "v0.1" / name
        if candidate.is_file():
            return candidate
    return None


def _torch_hub_file(name: str) -> Path | None:
    candidate = Path(torch.hub.get_dir()) / "checkpoints" / name
    return candidate if candidate.is_file() else None


def resolve_weight(name: str, explicit: str | os.PathLike | None = None, folder: str | os.PathLike | None = None,
                   what: str = "") -> Path:
    """Path of weight file `name`: `explicit` if given (must exist), else `<metrics dir>/<name>`, else the
    well-known local copies (installed `lpips` package, torch hub cache). Raises `MissingWeightsError`."""
    where = WHERE_TO_GET.get(name, "its upstream release")
    label = f"{what} weights" if what else "weights"
    if explicit is not None:
        path = Path(explicit)
        if path.is_file():
            return path
        raise MissingWeightsError(
            f"{label} not found at {path.resolve()}. Put {name} there (default location: "
            f"{(metrics_dir(folder) / name).as_posix()}); get it from {where}.")
    default = metrics_dir(folder) / name
    if default.is_file():
        return default
    fallback = None
    if name == LPIPS_LIN_FILE:
        fallback = _lpips_package_file(name)
    elif name == VGG16_FILE:
        fallback = _torch_hub_file(name)
    if fallback is not None:
        return fallback
    raise MissingWeightsError(
        f"{label} not found: expected {default.as_posix()} (absolute: {default.resolve()}). "
        f"Get it from {where}, or pass an explicit path. No weights are downloaded at run time.")


def check_sha256(path: str | os.PathLike, expected: str | None, what: str, strict: bool = False) -> str:
    """sha256 of `path`; compares it with `expected` (full digest or prefix). A mismatch warns, or raises
    ValueError when `strict`. Returns the digest so callers can record it next to their results."""
    digest = sha256_file(path)
    if expected and not digest.startswith(expected.lower()):
        msg = (f"{what}: {path} has sha256 {digest}, expected {expected}. Results will not be comparable "
               "with published numbers.")
        if strict:
            raise ValueError(msg)
        warnings.warn(msg, stacklevel=3)
    return digest
