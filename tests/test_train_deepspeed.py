"""DeepSpeed for real: the tiny model trains under ZeRO-3 in one CPU process (DeepSpeed's CPU accelerator),
checkpoints in DeepSpeed's format, and a run resumed from the middle checkpoint logs the same curve.

Needs `deepspeed` (extra `deepspeed`, in exps/setup.sh's default extras; DS_BUILD_OPS=0 pip install works
without CUDA). The first DeepSpeed run on a machine JIT-compiles its shared-memory comm op (~1-4 min on
2 cores, then cached in ~/.cache/torch_extensions).
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from worldvla.train.tracking import read_log

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
DS_CPU = ROOT / "configs" / "accelerate" / "deepspeed_zero3_cpu.yaml"


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory, tiny_assets):
    from worldvla.train.tiny_data import make_tiny_data

    return make_tiny_data(tmp_path_factory.mktemp("tiny_data"), assets=tiny_assets)


def _launch(data, out, port):
    """What exps/train_launch.sh runs for NGPU=1 ACCELERATE_CONFIG=configs/accelerate/deepspeed_zero3_cpu.yaml."""
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    overrides = {"data.train": f"[{data.train}]", "data.tokenizer": str(data.tokenizer), "train.output_dir": str(out),
                 "logging.progress_bar": "false", "logging.log_every": "1", "train.max_steps": "6",
                 "train.save_every_steps": "3", "train.resume": "auto"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(DS_CPU), "--num_processes", "1",
           "--main_process_port", str(port), "-m", "worldvla.train", "--config", str(TINY),
           *(f"{k}={v}" for k, v in overrides.items())]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res.stdout + res.stderr


def _curve(out):
    return [(r["step"], r["loss"]) for r in read_log(Path(out) / "train_log.jsonl") if "loss" in r]


@pytest.mark.slow
def test_zero3_one_process_trains_checkpoints_and_resumes_exactly(tiny_data, tmp_path):
    pytest.importorskip("deepspeed", reason="pip install 'worldvla[deepspeed]' (in exps/setup.sh's default extras)")
    port = 29600 + os.getpid() % 300
    full = tmp_path / "full"
    log = _launch(tiny_data, full, port)
    assert "model engine: deepspeed.runtime.engine.DeepSpeedEngine" in log
    assert "1 processes (DistributedType.DEEPSPEED)" in log and "DeepSpeed ZeRO stage 3 on cpu" in log
    # DeepSpeed's own checkpoint: ZeRO partitions of the model and of the optimizer state
    ds_dir = full / "checkpoints" / "step_00000003" / "train_state" / "accelerate" / "pytorch_model"
    assert sorted(p.name for p in ds_dir.iterdir()) == ["zero_pp_rank_0_mp_rank_00_model_states.pt",
                                                        "zero_pp_rank_0_mp_rank_00_optim_states.pt"]
    a = _curve(full)
    assert [s for s, _ in a] == [1, 2, 3, 4, 5, 6] and a[-1][1] < a[0][1]

    # resume from step 3 (model + optimizer partitions + RNG) in a new process: steps 4-6 as in the full run
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / "step_00000003", resumed / "checkpoints" / "step_00000003")
    log = _launch(tiny_data, resumed, port + 1)
    assert "resumed from" in log and "DeepSpeedEngine" in log
    b = _curve(resumed)
    assert [s for s, _ in b] == [4, 5, 6]
    # without the optimizer state (Adam moments) or the RNG the loss of step 4+ moves by > 1e-3
    np.testing.assert_allclose([v for _, v in b], [v for _, v in a[3:]], rtol=1e-6, atol=0)

    # the exported weights load as a policy
    from worldvla.policy.policy import WorldVLAPolicy

    policy = WorldVLAPolicy.from_pretrained(resumed / "checkpoints" / "step_00000006", device="cpu")
    img = np.full((64, 64, 3), 120, np.uint8)
    assert policy.predict("put the bowl on the stove", [img, img]).shape == (5, 7)


class _FakeAccelerator:
    """Records what make_accelerator asks accelerate for; sets up plain multi-CPU like accelerate with cpu=True."""

    seen: ClassVar[dict] = {}

    def __init__(self, **kwargs):
        _FakeAccelerator.seen = kwargs
        self.distributed_type = "DistributedType.MULTI_CPU"


def test_deepspeed_config_never_runs_plain_training(monkeypatch):
    import accelerate
    import torch

    from worldvla.train.config import TrainConfig
    from worldvla.train.distributed import LaunchError, make_accelerator

    pytest.importorskip("deepspeed")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(accelerate, "Accelerator", _FakeAccelerator)
    with pytest.raises(LaunchError, match="selects DeepSpeed but accelerate set up DistributedType.MULTI_CPU"):
        make_accelerator(TrainConfig())
    assert _FakeAccelerator.seen["cpu"] is False  # cpu=True would make accelerate drop the DeepSpeed plugin
