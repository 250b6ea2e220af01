"""Read a torch.distributed.checkpoint folder without running code from it.

torch's FileSystemReader unpickles `.metadata` with plain `pickle.load`, and the default load planner
reads non-tensor entries (optimizer hyper-parameters) with an unrestricted torch.load: a
training folder received from someone else could run code on resume. `SafeReader` unpickles the
metadata with an Unpickler that only builds DCP's own metadata classes and a few torch/pathlib
types; `SafePlanner` reads the non-tensor entries with `weights_only=True` (plain numbers, tuples).
"""

from __future__ import annotations

import io
import pickle

import torch
import torch.distributed.checkpoint.metadata as md
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import StorageMeta

_METADATA_MODULE = "torch.distributed.checkpoint.metadata"
_ALLOWED = {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch.serialization", "_get_layout"),
    ("torch", "Size"),
    ("collections", "OrderedDict"),
    ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"), ("pathlib", "WindowsPath"), ("pathlib", "Path"),
    ("pathlib._local", "PosixPath"), ("pathlib._local", "WindowsPath"),
}


class MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if module == _METADATA_MODULE:
            obj = getattr(md, name, None)
            if isinstance(obj, type):
                return obj
        elif module == "torch" and isinstance(getattr(torch, name, None), (torch.dtype, torch.layout,
                                                                            torch.memory_format)):
            return getattr(torch, name)
        elif (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing the global {module}.{name} in checkpoint metadata "
                                     "(only torch.distributed.checkpoint's metadata types are accepted)")


class SafeReader(FileSystemReader):
    def read_metadata(self, *args, **kwargs):
        path = self._get_metadata_path(kwargs.get("rank"))
        with self.fs.create_stream(path, "rb") as f:
            metadata = MetadataUnpickler(f).load()
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class SafePlanner(DefaultLoadPlanner):
    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        try:
            obj = torch.load(value, weights_only=True)
        except pickle.UnpicklingError as err:
            why = next((ln.strip() for ln in str(err).splitlines() if "WeightsUnpickler" in ln), "not plain data")
            raise pickle.UnpicklingError(f"refusing the non-tensor entry {read_item.dest_index.fqn!r}: {why}") from None
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
        else:
            self.state_dict[read_item.dest_index.fqn] = obj


def failure_reason(err: Exception) -> str:
    """One line for a failed dcp.load: the first process's own exception, not DCP's wrapper with tracebacks."""
    failures = getattr(err, "failures", None)
    if failures:
        first = next(iter(failures.values()))
        exc = first[0] if isinstance(first, tuple) else first
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:400]
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:400]
