"""Deterministic, resumable batch order over all processes.

Per epoch the sample indices are shuffled with `numpy.random.default_rng(seed + epoch)` (official
FinetuneDistSampler) and cut to a multiple of the global batch (batch x processes x accumulation;
`drop_last`). A *global batch* is the set of samples of one optimizer step; process r takes the r-th
of its equal slices, and micro-step a of the accumulation the a-th part of that slice.

`length_grouped` batching: the shuffled order is cut into windows of `group_batches` global batches;
inside a window samples are sorted by length (long first) and cut into global batches, and the
batches of the epoch are then shuffled (same seeded generator). Short world-model samples and long
action-model samples thus share a batch rarely, so little of a batch is padding; the batches stay
a random mixture over the epoch. `random` keeps the plain shuffled order.

The order depends only on (seed, epoch, lengths, sizes), so resuming at (epoch, step) replays exactly
the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import numpy as np


class BatchPlan:
    def __init__(self, lengths, batch_size: int, world_size: int = 1, grad_accum: int = 1, seed: int = 0,
                 mode: str = "length_grouped", group_batches: int = 32):
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_size, self.world_size, self.grad_accum = batch_size, world_size, grad_accum
        self.global_batch = batch_size * world_size * grad_accum
        self.seed, self.mode, self.group_batches = seed, mode, group_batches
        if mode not in ("random", "length_grouped"):
            raise ValueError(f"batching mode must be random or length_grouped, got {mode!r}")
        if len(self.lengths) < self.global_batch:
            raise ValueError(f"{len(self.lengths)} samples are fewer than one global batch "
                             f"({batch_size} x {world_size} processes x {grad_accum} accumulation)")

    @property
    def steps_per_epoch(self) -> int:
        return len(self.lengths) // self.global_batch

    def epoch(self, epoch: int) -> np.ndarray:
        """(steps_per_epoch, global_batch) sample indices of `epoch`."""
        rng = np.random.default_rng(self.seed + epoch)
        order = rng.permutation(len(self.lengths))[: self.steps_per_epoch * self.global_batch]
        if self.mode == "random":
            return order.reshape(self.steps_per_epoch, self.global_batch)
        window = self.group_batches * self.global_batch
        groups = []
        for lo in range(0, len(order), window):
            chunk = order[lo: lo + window]
            chunk = chunk[np.argsort(-self.lengths[chunk], kind="stable")]  # long first, ties in shuffled order
            groups.append(chunk.reshape(-1, self.global_batch))
        batches = np.concatenate(groups)
        return batches[rng.permutation(len(batches))]

    def micro_batches(self, epoch: int, rank: int, start_step: int = 0):
        """Yield (step, micro, indices) for this process, from optimizer step `start_step` of `epoch`."""
        batches = self.epoch(epoch)
        per_rank = self.batch_size * self.grad_accum
        for step in range(start_step, len(batches)):
            mine = batches[step, rank * per_rank: (rank + 1) * per_rank]
            for micro in range(self.grad_accum):
                yield step, micro, mine[micro * self.batch_size: (micro + 1) * self.batch_size]


class PlanSampler:
    """A `batch_sampler` for torch's DataLoader: this process's micro-batches of one epoch from a step."""

    def __init__(self, plan: BatchPlan, epoch: int, rank: int, start_step: int = 0):
        self.plan, self.epoch, self.rank, self.start_step = plan, epoch, rank, start_step

    def __iter__(self):
        for _, _, idx in self.plan.micro_batches(self.epoch, self.rank, self.start_step):
            yield idx.tolist()

    def __len__(self) -> int:
        return (self.plan.steps_per_epoch - self.start_step) * self.plan.grad_accum
