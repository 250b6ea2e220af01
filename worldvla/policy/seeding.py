"""Seeding a process that runs a policy (eval workers, the policy server)."""

from __future__ import annotations

import random
import sys

import numpy as np


def seed_everything(seed: int) -> None:
    """python, numpy and (if already imported) torch; simulator workers never import torch."""
    random.seed(seed)
    np.random.seed(seed)
    if "torch" in sys.modules:
        sys.modules["torch"].manual_seed(seed)
