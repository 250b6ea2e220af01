"""How the policy decodes action chunks: `decode.mode` / `decode.compile`, shared by eval and serve.

Kept torch-free so that configs parse without importing the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

from worldvla.config import check_literals

# How action chunks are decoded (docs/official_format.md, the official eval loop):
#   parallel   - K constrained blocks decoded at once under the action mask (worldvla's fast path)
#   sequential - the same constrained blocks token by token (reference for parallel)
#   official   - free greedy generation (300 new tokens, stop at 8710) and the official parsing rules
#   unconstrained - free greedy generation, every complete 7-token block kept (the older lenient parse)
#   auto       - parallel for worldvla checkpoints, official for official checkpoint folders
# The one list of modes; the policy takes every one but auto (from_pretrained resolves auto).
DecodeMode = Literal["auto", "parallel", "sequential", "official", "unconstrained"]
DECODE_MODES = get_args(DecodeMode)


@dataclass
class DecodeConfig:
    """Decoding of the policy (shared by eval and serve)."""

    mode: DecodeMode = field(default="auto", metadata={"help": "how action chunks are decoded (above)"})
    compile: bool | None = field(default=None, metadata={"help": "static-shape decode step, CUDA graphs on CUDA (None = COMPILE_ON_CUDA: off until proven on a GPU)"})

    def __post_init__(self) -> None:
        check_literals(self)  # built in Python: the loader's check of `mode` did not run


# What decode.compile=None means on CUDA. Off until benchmarks/gpu.sh has shown on a GPU that the CUDA-graph
# step gives the eager step's tokens (benchmarks/README.md, "GPU fast path"); on CPU None is always off.
COMPILE_ON_CUDA = False


def compile_step_for(decode: DecodeConfig, device: str) -> bool:
    """decode.compile resolved for a policy on `device` (None: COMPILE_ON_CUDA on CUDA, off elsewhere)."""
    if decode.compile is not None:
        return bool(decode.compile)
    return COMPILE_ON_CUDA and str(device).startswith("cuda")
