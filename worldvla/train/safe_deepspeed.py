"""Resume a DeepSpeed checkpoint without running code from it.

DeepSpeed's checkpoint engine reads its `*_model_states.pt` / `*_optim_states.pt` files with an
unrestricted `torch.load` (weights_only off), and accelerate reads custom states the same way: a
training folder received from someone else could run code on resume. Two layers close that:

- `check_deepspeed_folder` (called by `CheckpointManager.verify`, on every process, before DeepSpeed
  opens anything) unpickles every pickle-based file of the folder with torch's restricted
  `weights_only=True` unpickler and the allow-list below (memory-mapped: tensor bytes are not read),
  and compares the files with the sizes / sha256 recorded when the checkpoint was written;
- `restricted_torch_load` (around `accelerator.load_state`) makes every `torch.load` that DeepSpeed
  and accelerate call run with `weights_only=True` and the same allow-list, whatever they ask for:
  a file swapped between the check and the load is refused too (no check-then-load race).

The allow-list is what a real ZeRO checkpoint holds beyond tensors and plain containers (read from
one saved by tests/test_train_deepspeed.py's run): DeepSpeed's loss-scaler object and ZeRO stage
enum in the optimizer partitions, numpy arrays in accelerate's `random_states_*.pkl`.
"""

from __future__ import annotations

import contextlib
import json
import pickle
import re
from pathlib import Path

import numpy as np
import torch

from worldvla.errors import InputFileError
from worldvla.recipe import sha256_file
# deepspeed (the deepspeed extra) is imported where a DeepSpeed checkpoint is read.

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl")
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default (zip) format
PICKLE_PROTO = 0x80  # the first byte of a pickle of protocol >= 2 (torch's legacy format)
HASHES = "deepspeed_sha256.json"  # next to the DeepSpeed folder: relative path -> {bytes, sha256}
HASH_MAX_BYTES = 4 << 30  # beyond this total (~7 s of sha256 per save and per resume) only sizes are recorded


def numpy_array_globals() -> list:
    """numpy arrays as pickled by numpy 1 and 2 (accelerate's RNG states hold the numpy generator's keys)."""
    reconstruct = np._core.multiarray._reconstruct
    return [np.ndarray, np.dtype, np.dtypes.UInt32DType,
            (reconstruct, "numpy.core.multiarray._reconstruct"), (reconstruct, "numpy._core.multiarray._reconstruct")]


def deepspeed_safe_globals() -> list:
    """The classes a DeepSpeed ZeRO checkpoint names; plain data holders (no code runs when they are built)."""
    # deepspeed is an optional extra: imported here, where a DeepSpeed folder is being read, not with this module
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, *numpy_array_globals()]


def is_pickle_file(path: Path) -> bool:
    """A file torch.load / pickle would read: by suffix, or by content (torch zip or a binary pickle)."""
    if path.suffix in PICKLE_SUFFIXES:
        return True
    with open(path, "rb") as f:
        head = f.read(4)
    return head == ZIP_MAGIC or (len(head) > 1 and head[0] == PICKLE_PROTO and head[1] <= 5)


def pickle_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and is_pickle_file(p))


def refusal(path: Path, err: Exception) -> InputFileError:
    """One line naming the file and the global the restricted unpickler refused."""
    text = str(err)
    m = re.search(r"GLOBAL (\S+)", text) or re.search(r"unrecognized function (\S+)", text)
    if m:
        what = f"needs the global {m.group(1)}, which a DeepSpeed checkpoint does not contain"
    else:
        line = next((ln.strip() for ln in text.splitlines() if "WeightsUnpickler error" in ln), text.split("\n")[0])
        what = f"unreadable or unsafe ({type(err).__name__}: {line[:300]})"
    return InputFileError(path, f"{what}; refusing to unpickle it (resume only checkpoints written by worldvla's "
                                "DeepSpeed runs)")


def _restricted_load(original, path, *args, **kwargs):
    kwargs["weights_only"] = True  # whatever the caller asked for (DeepSpeed turns it off)
    kwargs.pop("pickle_module", None)
    try:
        with torch.serialization.safe_globals(deepspeed_safe_globals()):
            return original(path, *args, **kwargs)
    except pickle.UnpicklingError as err:  # the restricted unpickler's refusal (other errors pass unchanged)
        raise refusal(Path(str(path)), err) from None


def check_pickle_file(path: Path) -> None:
    """Unpickle `path` with the restricted unpickler (tensor bytes memory-mapped, not read); raise if refused."""
    with open(path, "rb") as f:
        zipped = f.read(4) == ZIP_MAGIC
    try:
        _restricted_load(torch.load, path, map_location="cpu", mmap=zipped)
    except InputFileError:
        raise
    except (RuntimeError, EOFError, OSError, ValueError) as err:  # truncated zip, cut pickle
        first = str(err).strip().split("\n")[0][:300]
        raise InputFileError(path, f"unreadable ({type(err).__name__}: {first}); the checkpoint is damaged") from None


def record_hashes(folder: Path) -> dict:
    """{relative path: {"bytes", "sha256"}} of every file under `folder` (sha256 left out above HASH_MAX_BYTES)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    full = sum(p.stat().st_size for p in files) <= HASH_MAX_BYTES
    return {str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": sha256_file(p) if full else None}
            for p in files}


def check_hashes(folder: Path, record: Path) -> None:
    """The files of `folder` are those `record` lists (present, same size, same sha256 where recorded)."""
    try:
        want = json.loads(record.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputFileError(record, f"not valid JSON ({err}); the checkpoint is damaged") from None
    if not isinstance(want, dict):
        raise InputFileError(record, "expected {relative path: {bytes, sha256}}")
    for rel, entry in sorted(want.items()):
        f = folder / rel
        if not f.is_file():
            raise InputFileError(f, f"missing; {record} lists it ({rel})")
        size = f.stat().st_size
        if size != entry.get("bytes"):
            raise InputFileError(f, f"{size} bytes, {record} recorded {entry.get('bytes')} ({rel}.bytes)")
        if entry.get("sha256") and (got := sha256_file(f)) != entry["sha256"]:
            raise InputFileError(f, f"sha256 {got[:12]} differs from {str(entry['sha256'])[:12]} recorded in {record} "
                                    f"({rel}.sha256): the file changed after the checkpoint was written")


def check_deepspeed_folder(folder: Path, record: Path) -> None:
    """Every pickle of a DeepSpeed/accelerate checkpoint folder passes the restricted unpickler, then the files
    match the sizes / sha256 recorded at save (`record`; checkpoints written before it existed have none)."""
    try:
        deepspeed_safe_globals()
    except ImportError:
        raise InputFileError(folder, "a DeepSpeed checkpoint, but deepspeed is not installed "
                                     "(pip install 'worldvla[deepspeed]')") from None
    for path in pickle_files(folder):
        check_pickle_file(path)
    if record.is_file():
        check_hashes(folder, record)


@contextlib.contextmanager
def restricted_torch_load():
    """Within: `torch.load` always runs with weights_only=True and the DeepSpeed allow-list (for the
    loaders of DeepSpeed and accelerate, which look `torch.load` up when they call it)."""
    original = torch.load

    def load(f, *args, **kwargs):
        return _restricted_load(original, f, *args, **kwargs)

    torch.load = load
    try:
        yield
    finally:
        torch.load = original
