"""Token shard format: flat, memory-mappable .npy arrays (no pickle), one folder per shard.

    shard_<k>/input_ids.npy     (T,) uint32   all samples' ids back to back
    shard_<k>/labels.npy        (T,) int32    labels (-100 = no loss)
    shard_<k>/offsets.npy       (n+1,) int64  sample i = [offsets[i], offsets[i+1])
    shard_<k>/spans.npy         (m, 3) int32  (kind code, start, end) per media block, sample-relative, end exclusive
    shard_<k>/span_offsets.npy  (n+1,) int64  spans of sample i = rows [span_offsets[i], span_offsets[i+1])
    shard_<k>/kinds.npy         (n,) uint8    0 = action-model sample, 1 = world-model sample
    shard_<k>/record_ids.npy    (n,) int64    index of the source record (over all inputs, in order)
    shard_<k>/info.json         counts, skipped records, and the fingerprint of the run that wrote it

A shard is written into a temporary folder and renamed when complete, so a folder named
`shard_<k>` is always whole.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from worldvla.atomic import fsync_dir, fsync_tree
from worldvla.data.sequence import Sample
from worldvla.errors import InputFileError
from worldvla.recipe import SAMPLE_KINDS
from worldvla.spans import Span

SPAN_KINDS = ("image", "action", "state")
SPAN_CODE = {k: i for i, k in enumerate(SPAN_KINDS)}
ARRAYS = ("input_ids", "labels", "offsets", "spans", "span_offsets", "kinds", "record_ids")


def shard_name(k: int) -> str:
    return f"shard_{k:05d}"


def write_shard(folder: Path, samples: list[Sample], kinds: list[str], record_ids: list[int], info: dict) -> dict:
    """Write one shard atomically (tmp folder + rename); returns the info dict written."""
    folder = Path(folder)
    tmp = folder.with_name(f".tmp_{folder.name}_{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    lens = np.array([len(s) for s in samples], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    ids = np.fromiter((t for s in samples for t in s.input_ids), dtype=np.int64, count=int(offsets[-1]))
    if ids.size and (ids.min() < 0 or ids.max() >= 2**32):
        raise ValueError(f"{folder}: token ids must fit in uint32")
    labels = np.fromiter((t for s in samples for t in s.labels), dtype=np.int64, count=int(offsets[-1]))
    spans = np.array([(SPAN_CODE[sp.kind], sp.start, sp.end) for s in samples for sp in s.spans], dtype=np.int32).reshape(-1, 3)
    span_counts = np.array([len(s.spans) for s in samples], dtype=np.int64)
    arrays = {
        "input_ids": ids.astype(np.uint32),
        "labels": labels.astype(np.int32),
        "offsets": offsets,
        "spans": spans,
        "span_offsets": np.concatenate([[0], np.cumsum(span_counts)]).astype(np.int64),
        "kinds": np.array([SAMPLE_KINDS.index(k) for k in kinds], dtype=np.uint8),
        "record_ids": np.asarray(record_ids, dtype=np.int64),
    }
    for name, arr in arrays.items():
        np.save(tmp / f"{name}.npy", arr, allow_pickle=False)
    info = {**info, "n_samples": len(samples), "n_tokens": int(offsets[-1]),
            "n_supervised": int((labels != -100).sum()), "max_len": int(lens.max()) if len(lens) else 0,
            "kinds": {k: int(kinds.count(k)) for k in SAMPLE_KINDS}}
    (tmp / "info.json").write_text(json.dumps(info, indent=1))
    fsync_tree(tmp)  # a rerun trusts any shard_<k> folder: its files must be on disk before the rename
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
    fsync_dir(folder.parent)
    return info


class ShardReader:
    """Memory-mapped view of one shard; `sample(i) -> Sample`."""

    def __init__(self, folder: str | Path):
        self._open(Path(folder))

    def __getstate__(self):  # pickled for spawned DataLoader workers: reopen the maps, do not copy them
        return {"folder": self.folder}

    def __setstate__(self, state):
        self._open(state["folder"])

    def _open(self, folder: Path) -> None:
        self.folder = folder
        try:
            self.info = json.loads((self.folder / "info.json").read_text())
            self.arrays = {n: np.load(self.folder / f"{n}.npy", mmap_mode="r", allow_pickle=False) for n in ARRAYS}
        except (OSError, ValueError) as err:
            raise ValueError(f"{self.folder}: incomplete or corrupt shard ({err}); rerun pretokenize to rebuild it") from None
        self.offsets = np.asarray(self.arrays["offsets"])
        self.span_offsets = np.asarray(self.arrays["span_offsets"])
        self._check_lengths()

    def _check_lengths(self) -> None:
        """The arrays agree in length (a short labels.npy would load and fail many steps into training)."""
        n = len(self.offsets) - 1
        want = {"input_ids": int(self.offsets[-1]) if n >= 0 else 0, "labels": len(self.arrays["input_ids"]),
                "span_offsets": n + 1, "kinds": n, "record_ids": n,
                "spans": int(self.span_offsets[-1]) if len(self.span_offsets) else 0}
        for name, length in want.items():
            if len(self.arrays[name]) != length:
                raise InputFileError(self.folder / f"{name}.npy", f"{len(self.arrays[name])} entries, expected "
                                     f"{length} (from offsets.npy / input_ids.npy); rerun pretokenize to rebuild the "
                                     "shard", name)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def sample(self, i: int) -> Sample:
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        sa, sb = int(self.span_offsets[i]), int(self.span_offsets[i + 1])
        spans = [Span(SPAN_KINDS[int(k)], int(s), int(e)) for k, s, e in np.asarray(self.arrays["spans"][sa:sb])]
        return Sample(np.asarray(self.arrays["input_ids"][a:b]).astype(np.int64).tolist(),
                      np.asarray(self.arrays["labels"][a:b]).astype(np.int64).tolist(), spans, self.kind(i))

    def kind(self, i: int) -> str:
        return SAMPLE_KINDS[int(self.arrays["kinds"][i])]

    def check_ids(self, vocab_size: int) -> None:
        """Every token id is below `vocab_size` (the model's embedding rows); else an error naming the file,
        the sample, its record and the position, instead of an IndexError many steps into training."""
        ids = self.arrays["input_ids"]
        if not len(ids) or int(ids.max()) < vocab_size:
            return

        pos = int(np.argmax(np.asarray(ids) >= vocab_size))
        i = int(np.searchsorted(self.offsets, pos, side="right")) - 1
        rec = int(self.arrays["record_ids"][i])
        raise InputFileError(self.folder / "input_ids.npy",
                             f"token id {int(ids[pos])} at position {pos} (sample {i}, record {rec}, token "
                             f"{pos - int(self.offsets[i])}) is outside the model's vocabulary of {vocab_size} ids; "
                             "the data was tokenised with another tokenizer or vocabulary", "input_ids")
