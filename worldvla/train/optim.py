"""AdamW and the official learning-rate schedule.

Official (xllmx `lr_sched.adjust_learning_rate`, official_format.md §8): the schedule is a function of
the fractional epoch e = epoch + iteration / iterations_per_epoch, evaluated every optimizer step:
    e <  warmup:  lr * e / warmup                                  (linear warm-up)
    e >= warmup:  min_lr + (lr - min_lr) * 0.5 * (1 + cos(pi * (e - warmup) / (epochs - warmup)))
With the released lr = min_lr = 5e-6 the cosine part is the constant 5e-6.
"""

from __future__ import annotations

import math

import torch


def build_optimizer(params, lr: float, weight_decay: float, betas, eps: float = 1e-8) -> torch.optim.AdamW:
    """torch AdamW with one parameter group: weight decay on every parameter (official)."""
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("build_optimizer: the model has no trainable parameters")
    return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)


class EpochSchedule:
    """lr as a function of the optimizer step, through the fractional epoch step / steps_per_epoch."""

    def __init__(self, lr: float, min_lr: float, warmup_epochs: float, epochs: float, steps_per_epoch: int):
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
        self.lr, self.min_lr = lr, min_lr
        self.warmup, self.epochs = warmup_epochs, epochs
        self.steps_per_epoch = steps_per_epoch

    def epoch_at(self, step: int) -> float:
        return step / self.steps_per_epoch

    def __call__(self, step: int) -> float:
        """lr for optimizer step `step` (0-based: the first update uses step 0)."""
        e = self.epoch_at(step)
        if e < self.warmup:
            return self.lr * e / self.warmup
        span = self.epochs - self.warmup
        progress = min(1.0, (e - self.warmup) / span) if span > 0 else 1.0
        return self.min_lr + (self.lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        lr = self(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    def state_dict(self) -> dict:
        return {"lr": self.lr, "min_lr": self.min_lr, "warmup_epochs": self.warmup, "epochs": self.epochs,
                "steps_per_epoch": self.steps_per_epoch}
