"""Typed configuration of a LIBERO rollout evaluation (`python -m worldvla.eval.libero`).

Defaults are the protocol of docs/libero_protocol.md and docs/official_format.md §9; any
field set away from its protocol value is reported by `worldvla.eval.protocol.deviations` and written
into every output file of the run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

from worldvla.config import check_literals
from worldvla.policy.decode import COMPILE_ON_CUDA, DECODE_MODES, DecodeConfig, compile_step_for  # noqa: F401 (re-exported)
from worldvla.policy.interface import PolicySource

# The keys eval and serve had before the PolicySource: still read, each with a deprecation note.
POLICY_RENAMED = {"tokenizer": "policy.tokenizer", "policy_settings": "policy.recipe",
                  "action_mode": "policy.recipe.action_mode"}


@dataclass
class EvalConfig:
    renamed: ClassVar[dict[str, str]] = POLICY_RENAMED
    # what to evaluate
    policy: PolicySource = field(default_factory=PolicySource, metadata={"help": "policy.path (or policy=...): checkpoint dir, ws://host:port or module:factory; policy.tokenizer, policy.recipe: see PolicySource"})
    device: str = field(default="cpu", metadata={"help": "torch device of an in-process policy"})
    decode: DecodeConfig = field(default_factory=DecodeConfig, metadata={"help": "decode.mode / decode.compile"})
    expect_wrist: bool | None = field(default=None, metadata={"help": "refuse a policy that does (not) read the wrist view (None = accept either)"})
    expect_state: bool | None = field(default=None, metadata={"help": "refuse a policy that does (not) read the proprio state (None = accept either)"})
    suites: list[str] = field(default_factory=lambda: ["libero_goal"], metadata={"help": "LIBERO suites, e.g. [libero_goal,libero_10]"})
    tasks: list[int] | None = field(default=None, metadata={"help": "task ids (None = all tasks of each suite)"})
    num_trials: int = field(default=50, metadata={"help": "episodes per task (protocol: 50 init states)"})
    first_trial: int = field(default=0, metadata={"help": "init state of the first episode: trials first_trial .. first_trial + num_trials - 1 (e.g. init states held out of training)"})
    # protocol knobs (protocol values are the defaults)
    max_steps: int | None = field(default=None, metadata={"help": "policy steps per episode (None = suite value: 220/280/300/520/400)"})
    wait_steps: int = field(default=10, metadata={"help": "dummy steps before the policy acts, not counted in max_steps"})
    seed: int = field(default=7, metadata={"help": "python/numpy/torch seed (protocol: 7)"})
    env_seed: int = field(default=0, metadata={"help": "env.seed() value (WorldVLA/OpenVLA: 0, openpi: 7)"})
    # The two rollout overrides of the policy's recipe (protocol deviations, reported in every output file): what
    # the simulator renders and how many frames each query gets; the policy's own recipe is left as it is.
    resolution: int | None = field(default=None, metadata={"help": "render resolution in px (None = the policy's)"})
    rotate180: bool = field(default=True, metadata={"help": "rotate camera images 180 degrees as the training data"})
    history: int | None = field(default=None, metadata={"help": "frames per query M (None = the policy's)"})
    execute_steps: int | None = field(default=None, metadata={"help": "actions executed per chunk (None = all K, open loop)"})
    invert_gripper: bool = field(default=False, metadata={"help": "flip the gripper sign (never for WorldVLA)"})
    # execution
    num_workers: int = field(default=1, metadata={"help": "simulator processes (0 = in the main process)"})
    batch_timeout_s: float = field(default=0.05, metadata={"help": "how long a batch waits for the other workers' requests"})
    max_batch: int = field(default=0, metadata={"help": "most queries per policy call (0 = every waiting worker)"})
    shard: str = field(default="0/1", metadata={"help": "i/n: run only every n-th episode starting at i"})
    policy_threads: int = field(default=0, metadata={"help": "torch threads of the policy (0 = torch default)"})
    env_factory: str = field(default="", metadata={"help": "module:callable replacing LiberoEnv (tests only)"})
    # outputs
    output_dir: Path | None = field(default=None, metadata={"help": "default outputs/eval/<suites>_<res>_<policy name>"})
    videos: Literal["none", "failures", "all"] = field(default="failures", metadata={"help": "which episodes get a video"})
    video_fps: int = field(default=30, metadata={"help": "mp4 frame rate (official: 30)"})
    video_wrist: bool | None = field(default=None, metadata={"help": "add the wrist view (None = when the policy uses it)"})
    retry_errors: bool = field(default=True, metadata={"help": "on resume, rerun episodes that ended with an error"})

    def __post_init__(self) -> None:
        self.policy = PolicySource.of(self.policy)
        check_literals(self)  # built in Python: the loader's check did not run
        if not self.suites:
            raise ValueError("suites is empty; e.g. suites=[libero_goal]")
        if self.num_trials < 1 or self.first_trial < 0 or self.num_workers < 0 or self.wait_steps < 0:
            raise ValueError("num_trials >= 1, first_trial >= 0, num_workers >= 0 and wait_steps >= 0 are required")
        if self.max_batch < 0:
            raise ValueError(f"max_batch must be >= 0 (0 = no limit), got {self.max_batch}")
        parse_shard(self.shard)


def parse_shard(text: str) -> tuple[int, int]:
    """'i/n' -> (i, n) with 0 <= i < n."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not m or not 0 <= int(m.group(1)) < int(m.group(2)):
        raise ValueError(f"shard must look like i/n with 0 <= i < n (e.g. 0/4), got {text!r}")
    return int(m.group(1)), int(m.group(2))
