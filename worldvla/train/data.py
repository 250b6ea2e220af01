"""Training data: pretokenized sets -> one indexable set (kind-filtered) -> DataLoader of `Batch`es.

The sets are the data pipeline's outputs (`worldvla.data.datasets.PretokenizedDataset`: pretokenize.py
folders, concat.py indexes, official record lists). Their manifests record how they were tokenised;
a resolution or action-statistics mismatch with the run config is an error here, not a silent
mis-training.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import torch

from worldvla.config import ConfigError
from worldvla.data.collate import collate
from worldvla.data.sequence import Sample
from worldvla.train.config import DataOptions
from worldvla.train.sampler import BatchPlan, PlanSampler


class DataError(RuntimeError):
    """A training set that cannot be opened or does not match the config; names the entry."""


class TrainSet(torch.utils.data.Dataset):
    """The concatenation of `paths`, restricted to samples whose kind is in `kinds`."""

    def __init__(self, paths: list[Path], kinds: list[str], max_len: int, where: str = "data.train"):
        from worldvla.data.datasets import PretokenizedDataset

        self.parts, index, lengths = [], [], []
        for i, path in enumerate(paths):
            try:
                ds = PretokenizedDataset(path)
                part_lengths = np.asarray(ds.lengths, dtype=np.int64)
                keep = np.ones(len(ds), dtype=bool)
                if set(kinds) != {"action", "world"}:
                    keep = np.array([ds.kind(j) in kinds for j in range(len(ds))], dtype=bool)
            except (FileNotFoundError, ValueError, OSError) as err:
                raise DataError(f"{where}[{i}] = {path}: {err}") from None
            self.parts.append(ds)
            sel = np.flatnonzero(keep)
            index.append(np.stack([np.full(len(sel), i), sel], axis=1))
            lengths.append(np.minimum(part_lengths[sel], max_len))
        self.index = np.concatenate(index) if index else np.zeros((0, 2), np.int64)  # (N, 2): (part, item)
        self.lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)  # (N,) tokens after cut
        if len(self.index) == 0:
            raise DataError(f"{where}: no samples of kind(s) {kinds} in {[str(p) for p in paths]}")

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> Sample:
        part, item = self.index[int(i)]
        return self.parts[int(part)][int(item)]

    def manifests(self) -> list[dict]:
        """The pretokenize manifests of every source (official record lists have none)."""
        out = []
        for ds in self.parts:
            out += [s.manifest for s in ds.sources if getattr(s, "manifest", None)]
        return out


def check_tokenization(manifests: list[dict], cfg: DataOptions) -> None:
    """Resolution and action statistics of the shards must be those of the config (they go into checkpoints)."""
    from worldvla.tokenizers import load_stats

    stats = load_stats(cfg.action_stats)
    for m in manifests:
        tok = m.get("tokenizer") or {}
        where = (m.get("config") or {}).get("out_dir", "a pretokenized set")
        if "resolution" in tok and int(tok["resolution"]) != cfg.resolution:
            raise ConfigError(f"{where} was tokenised at {tok['resolution']} px but data.resolution={cfg.resolution}; "
                              "fix data.resolution or point data.train at the matching shards")
        got = tok.get("action_stats")
        if got and not (np.allclose(got["min"], stats.min) and np.allclose(got["max"], stats.max)):
            raise ConfigError(f"{where} was tokenised with action min/max {got} but data.action_stats="
                              f"{cfg.action_stats!r} is {{'min': {list(stats.min)}, 'max': {list(stats.max)}}}")


def make_loader(dataset: TrainSet, plan: BatchPlan, epoch: int, rank: int, start_step: int, max_len: int,
                num_workers: int) -> torch.utils.data.DataLoader:
    """This process's micro-batches of `epoch` from optimizer step `start_step`.

    The loader gets its own torch generator, so creating it does not draw from the global RNG that
    dropout uses (a resumed run creates its loader at another point of the RNG stream).
    """
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=PlanSampler(plan, epoch, rank, start_step), num_workers=num_workers,
        collate_fn=partial(collate, max_len=max_len), generator=torch.Generator().manual_seed(0),
        persistent_workers=False, prefetch_factor=4 if num_workers > 0 else None,
    )
