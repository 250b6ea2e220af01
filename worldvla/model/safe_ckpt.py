"""Read the tensors of a torch/Lightning checkpoint without running code from the file.

A torch checkpoint is a pickle, and a pickle can call any function while it loads. Everything here
goes through torch's `weights_only=True` unpickler, which only builds tensors and plain
containers. A Lightning checkpoint (the official Chameleon `vqgan.ckpt`) also names a few classes
in its metadata (e.g. the `ModelCheckpoint` callback as a key of `callbacks`, numpy scalars for
the best score); those names, and only those, are mapped to an inert placeholder class (or to
numpy's own scalar constructor), so the metadata loads as harmless objects and is then ignored.
A file that names anything else is refused with the names it asked for and how to convert it.
Files in the safetensors format (what `python -m worldvla.model.vqgan convert` writes) hold no
code at all and are read directly.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from worldvla.errors import InputFileError

SAFETENSORS_SUFFIX = ".safetensors"


class InertPlaceholder:
    """Stands in for a metadata class of a checkpoint: accepts any state and does nothing with it."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


def _lightning_names() -> list[str]:
    callbacks = ("model_checkpoint.ModelCheckpoint", "early_stopping.EarlyStopping",
                 "lr_monitor.LearningRateMonitor", "progress.tqdm_progress.TQDMProgressBar")
    names = [f"{pkg}.callbacks.{c}" for pkg in ("pytorch_lightning", "lightning.pytorch") for c in callbacks]
    names += ["pytorch_lightning.utilities.parsing.AttributeDict", "lightning.fabric.utilities.data.AttributeDict"]
    return names


def _numpy_globals() -> list[tuple]:
    """numpy scalars / dtypes as Lightning stores them (a best score as np.float64), under the
    module names numpy 1 and numpy 2 write."""
    scalar = np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar
    out = [(scalar, f"{mod}.multiarray.scalar") for mod in ("numpy.core", "numpy._core")]
    out.append((np.dtype, "numpy.dtype"))
    for name in dir(np.dtypes):
        cls = getattr(np.dtypes, name)
        if isinstance(cls, type) and name.endswith("DType"):
            out.append((cls, f"numpy.dtypes.{name}"))
    return out


LIGHTNING_METADATA = tuple(_lightning_names())


def allowed_globals(extra: tuple[str, ...] = ()) -> list[tuple]:
    """(object, name) pairs for torch.serialization.safe_globals."""
    return [(InertPlaceholder, n) for n in (*LIGHTNING_METADATA, *extra)] + _numpy_globals()


def is_safetensors(path: Path) -> bool:
    """safetensors: 8-byte little-endian header length, then a JSON header starting with '{'."""
    if path.suffix == SAFETENSORS_SUFFIX:
        return True
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < 1 << 30


def convert_hint(path: Path) -> str:
    return (f"if you trust where it came from and the names are only metadata, convert it once: "
            f"`python -m worldvla.model.vqgan convert {path} {path.with_suffix(SAFETENSORS_SUFFIX)} --allow NAME ...` "
            "(the named objects become inert placeholders and are dropped; no code from the file runs), then put the "
            "written file in place of the original (it may keep the name vqgan.ckpt: safetensors is recognised by content)")


def _first_line(err: Exception) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    detail = [ln for ln in lines if "WeightsUnpickler error" in ln]  # torch's own line, not its advice
    return (detail or lines or [type(err).__name__])[0][:300]


def load_state_dict(path: str | Path, extra_allowed: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """The tensors of `path`: a safetensors file, or a torch pickle whose weights are its top-level dict or its
    `state_dict` entry (Lightning). Never unpickles anything but tensors, containers and the listed metadata."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found")
    if is_safetensors(path):
        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as err:
            raise InputFileError(path, f"corrupt or truncated safetensors file ({err})") from None
    unsafe: list[str] = []
    with open(path, "rb") as f:
        zipped = f.read(2) == b"PK"  # torch.save's format since 1.6; the legacy one is a bare pickle
    if zipped and not zipfile.is_zipfile(path):
        raise InputFileError(path, "corrupt or truncated checkpoint (its zip directory is missing)")
    if zipped:  # the legacy (non-zip) format is checked by the restricted unpickler alone
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        except Exception as err:  # noqa: BLE001 - torch raises several types for a bad zip / pickle
            raise InputFileError(path, f"corrupt or truncated checkpoint, not a readable torch file "
                                       f"({type(err).__name__}: {err})") from None
    allowed = {name for _, name in allowed_globals(extra_allowed)}
    refused = sorted(set(unsafe) - allowed)
    if refused:
        raise InputFileError(path, f"refusing to load: the file asks to import {refused}, which could run code while "
                                   f"it loads (only tensors and known Lightning metadata are accepted); "
                                   + convert_hint(path))
    try:
        with torch.serialization.safe_globals(allowed_globals(extra_allowed)):
            blob = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "GLOBAL" not in str(err):
            raise InputFileError(path, f"corrupt or truncated checkpoint ({_first_line(err)})") from None
        raise InputFileError(path, f"refusing to load: the restricted loader cannot read it ({_first_line(err)}); "
                                   + convert_hint(path)) from None
    except Exception as err:  # noqa: BLE001 - a bad zip / truncated pickle raise RuntimeError, EOFError, ...
        raise InputFileError(path, f"corrupt or truncated checkpoint ({type(err).__name__}: "
                                   f"{_first_line(err)})") from None
    state = blob.get("state_dict", blob) if isinstance(blob, dict) else None
    if not isinstance(state, dict):
        raise InputFileError(path, "expected a dict of tensors or a dict with a 'state_dict' entry", "state_dict")
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise InputFileError(path, f"non-tensor entries {bad[:3]}", "state_dict")
    return state
