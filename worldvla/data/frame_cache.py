"""Persistent VQ-code cache: every image file is encoded once, however many samples (and runs) use it.

    <folder>/cache.json          the VQ-GAN fingerprint (file hashes, resolution); a mismatch is an error
    <folder>/chunk_<k>.npy       (n, h, w) uint16 codes
    <folder>/chunk_<k>.json      the n keys of those rows; written last, so a listed chunk is complete

A key is the image path plus its size and modification time, so a re-exported frame is encoded
again. Codes (not token ids) are stored: they do not depend on the text tokenizer. Several
pretokenize runs (world and action sets) may share one cache folder, one run at a time: pretokenize
holds the folder's lock file (worldvla/lockfile.py) while it runs, so a second concurrent run is refused.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from worldvla.atomic import atomic_write
from worldvla.errors import InputFileError


def frame_key(path: str | Path) -> str:
    st = os.stat(path)
    return f"{path}|{st.st_size}|{st.st_mtime_ns}"


def key_path(key: str) -> str:
    return key.rsplit("|", 2)[0]


class FrameCache:
    def __init__(self, folder: str | Path, fingerprint: dict):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        meta = self.folder / "cache.json"
        if meta.is_file():
            old = json.loads(meta.read_text())
            if old != fingerprint:
                raise FileExistsError(f"{self.folder}: frame cache of another VQ-GAN or resolution ({old.get('resolution')} px); "
                                      "use another frame_cache folder or delete this one")
        else:
            atomic_write(meta, json.dumps(fingerprint, indent=1))
        self.where: dict[str, tuple[int, int]] = {}
        self._chunks: dict[int, np.ndarray] = {}
        self.refresh()

    def refresh(self) -> None:
        """Re-read the chunk list (after other processes added chunks)."""
        for f in sorted(self.folder.glob("chunk_*.json")):
            k = int(f.stem.split("_")[1])
            for row, key in enumerate(json.loads(f.read_text())):
                self.where.setdefault(key, (k, row))
        for tmp in self.folder.glob("*.tmp*"):  # left by a killed run
            if tmp.stat().st_mtime < _now() - 3600:
                tmp.unlink(missing_ok=True)

    def next_chunk_id(self) -> int:
        ids = [int(f.stem.split("_")[1]) for f in self.folder.glob("chunk_*.json")]
        return max(ids) + 1 if ids else 0

    def __contains__(self, key: str) -> bool:
        return key in self.where

    def __len__(self) -> int:
        return len(self.where)

    def codes(self, key: str) -> np.ndarray:
        k, row = self.where[key]
        if k not in self._chunks:
            self._chunks[k] = self._load_chunk(self.folder / f"chunk_{k:05d}.npy")
        return np.asarray(self._chunks[k][row], dtype=np.int64)

    @staticmethod
    def _load_chunk(path: Path) -> np.ndarray:
        """A chunk's uint16 codes; a pickled, truncated or foreign file is named (not the image it serves)."""
        try:
            codes = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as err:
            raise InputFileError(path, f"not a frame-cache chunk ({err}); delete it and its .json to re-encode "
                                       "those frames") from None
        if codes.dtype != np.uint16 or codes.ndim != 3:
            raise InputFileError(path, f"expected (frames, h, w) uint16, got {codes.dtype} {codes.shape}; delete "
                                       "it and its .json to re-encode those frames")
        return codes

    def add_chunk(self, k: int, keys: list[str], codes: np.ndarray) -> None:
        """Write chunk k atomically (codes first, then the key list that makes it visible)."""
        codes = np.asarray(codes)
        if codes.max(initial=0) >= 2**16:
            raise ValueError("VQ codes must fit in uint16")
        tmp = self.folder / f"chunk_{k:05d}.npy.tmp{os.getpid()}"
        with open(tmp, "wb") as f:
            np.save(f, codes.astype(np.uint16), allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())  # durable before the key list makes the chunk visible
        tmp.replace(self.folder / f"chunk_{k:05d}.npy")
        atomic_write(self.folder / f"chunk_{k:05d}.json", json.dumps(keys))
        for row, key in enumerate(keys):
            self.where.setdefault(key, (k, row))


def _now() -> float:
    return time.time()
