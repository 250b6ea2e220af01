"""DeepSpeed for real: the tiny model trains under ZeRO-3 in one CPU process (DeepSpeed's CPU accelerator),
checkpoints in DeepSpeed's format, and a run resumed from the middle checkpoint logs the same curve.

Needs `deepspeed` (extra `deepspeed`, in exps/setup.sh's default extras; DS_BUILD_OPS=0 pip install works
without CUDA). The first DeepSpeed run on a machine JIT-compiles its shared-memory comm op (~1-4 min on
2 cores, then cached in ~/.cache/torch_extensions).
"""

import os
import re
import shutil
import subprocess
import sys
import zipfile
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


def _run(data, out, port, **extra):
    """What exps/train_launch.sh runs for NGPU=1 ACCELERATE_CONFIG=configs/accelerate/deepspeed_zero3_cpu.yaml."""
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    overrides = {"data.train": f"[{data.train}]", "data.tokenizer": str(data.tokenizer), "train.output_dir": str(out),
                 "logging.progress_bar": "false", "logging.log_every": "1", "train.max_steps": "6",
                 "train.save_every_steps": "3", "train.resume": "auto", **extra}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(DS_CPU), "--num_processes", "1",
           "--main_process_port", str(port), "-m", "worldvla.train", "--config", str(TINY),
           *(f"{k}={v}" for k, v in overrides.items())]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False)


def _launch(data, out, port):
    res = _run(data, out, port)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res.stdout + res.stderr


@pytest.fixture(scope="module")
def zero3_run(tiny_data, tmp_path_factory):
    """One real ZeRO-3 run of 6 steps (checkpoints at 3 and 6), shared by the tests of this module."""
    pytest.importorskip("deepspeed", reason="pip install 'worldvla[deepspeed]' (in exps/setup.sh's default extras)")
    full = tmp_path_factory.mktemp("zero3") / "full"
    return full, _launch(tiny_data, full, 29600 + os.getpid() % 300)


def _curve(out):
    return [(r["step"], r["loss"]) for r in read_log(Path(out) / "train_log.jsonl") if "loss" in r]


@pytest.mark.slow
def test_zero3_one_process_trains_checkpoints_and_resumes_exactly(tiny_data, zero3_run, tmp_path):
    port = 29600 + os.getpid() % 300
    full, log = zero3_run
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

    from worldvla.train import distributed
    from worldvla.train.config import TrainConfig
    from worldvla.train.distributed import LaunchError, make_accelerator

    pytest.importorskip("deepspeed")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(accelerate, "Accelerator", _FakeAccelerator)
    monkeypatch.setattr(distributed, "Accelerator", _FakeAccelerator)  # imported by name at the module's top
    with pytest.raises(LaunchError, match="selects DeepSpeed but accelerate set up DistributedType.MULTI_CPU"):
        make_accelerator(TrainConfig())
    assert _FakeAccelerator.seen["cpu"] is False  # cpu=True would make accelerate drop the DeepSpeed plugin


# -- issue 14: resuming a DeepSpeed folder never runs code from it -------------------------------------------------
MODEL_STATES = "pytorch_model/zero_pp_rank_0_mp_rank_00_model_states.pt"
OPTIM_STATES = "pytorch_model/zero_pp_rank_0_mp_rank_00_optim_states.pt"


class Payload:
    """Unpickling this creates `marker` (what an attacker's code would do, made harmless)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _tampered_copy(zero3_run, dst: Path, rel: str, marker: Path) -> Path:
    """Step 3 of the real run with a pickle payload planted next to the real content of `rel`."""
    import torch

    from worldvla.train.safe_deepspeed import deepspeed_safe_globals

    ckpt = dst / "checkpoints" / "step_00000003"
    shutil.copytree(zero3_run[0] / "checkpoints" / "step_00000003", ckpt)
    target = ckpt / "train_state" / "accelerate" / rel
    with torch.serialization.safe_globals(deepspeed_safe_globals()):
        blob = torch.load(target, weights_only=True)
    torch.save({**blob, "evil": Payload(marker)}, target)
    return target


@pytest.mark.slow
def test_zero3_checkpoint_passes_the_restricted_unpickler_and_records_sha256(zero3_run):
    import json

    from worldvla.recipe import sha256_file
    from worldvla.train.checkpoint import CheckpointManager
    from worldvla.train.safe_deepspeed import HASHES, pickle_files

    ckpt = zero3_run[0] / "checkpoints" / "step_00000003"
    folder = ckpt / "train_state" / "accelerate"
    found = [str(p.relative_to(folder)) for p in pickle_files(folder)]  # what DeepSpeed and accelerate unpickle
    assert found == [MODEL_STATES, OPTIM_STATES, "random_states_0.pkl"]
    assert CheckpointManager(ckpt.parent, None).verify(ckpt)["step"] == 3  # every one of them passes
    hashes = json.loads((ckpt / "train_state" / HASHES).read_text())
    assert set(found) <= set(hashes)
    for rel, entry in hashes.items():
        assert entry == {"bytes": (folder / rel).stat().st_size, "sha256": sha256_file(folder / rel)}


@pytest.mark.slow
@pytest.mark.parametrize("rel", [MODEL_STATES, OPTIM_STATES])
def test_payload_in_a_zero3_file_is_refused_before_deepspeed_reads_it(zero3_run, tmp_path, rel):
    from worldvla.train.checkpoint import CheckpointError, CheckpointManager

    marker = tmp_path / "PWNED"
    bad = _tampered_copy(zero3_run, tmp_path / "run", rel, marker)
    assert not marker.exists()
    ckpt = tmp_path / "run" / "checkpoints" / "step_00000003"
    with pytest.raises(CheckpointError) as err:
        CheckpointManager(ckpt.parent, None).verify(ckpt)
    assert str(err.value).startswith(f"{bad}: needs the global io.open") and "\n" not in str(err.value)
    assert not marker.exists()


@pytest.mark.slow
def test_deepspeeds_own_loaders_are_restricted_during_resume(zero3_run, tmp_path):
    """No check-then-load race: a file swapped after verify() is refused by DeepSpeed's own torch.load call."""
    import torch
    from accelerate.utils.other import load as accelerate_load
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    from worldvla.errors import InputFileError
    from worldvla.train.safe_deepspeed import restricted_torch_load

    marker = tmp_path / "PWNED"
    bad = _tampered_copy(zero3_run, tmp_path / "run", OPTIM_STATES, marker)
    good = zero3_run[0] / "checkpoints" / "step_00000003" / "train_state" / "accelerate" / OPTIM_STATES
    engine = TorchCheckpointEngine(None)  # calls torch.load(path, weights_only=False)
    with restricted_torch_load():
        assert "optimizer_state_dict" in engine.load(str(good), map_location="cpu")  # a real partition loads
        with pytest.raises(InputFileError, match=rf"^{re.escape(str(bad))}: needs the global io\.open"):
            engine.load(str(bad), map_location="cpu")
        custom = bad.with_name("custom_checkpoint_0.pkl")  # accelerate reads these with weights_only=False
        torch.save({"evil": Payload(marker)}, custom)
        with pytest.raises(InputFileError, match="needs the global io.open"):
            accelerate_load(custom, map_location="cpu", weights_only=False)  # as its load_custom_state calls it
    assert not marker.exists()
    assert torch.load is torch.serialization.load  # the patch is scoped


@pytest.mark.slow
def test_tampered_zero3_resume_is_refused_by_the_trainer(tiny_data, zero3_run, tmp_path):
    marker = tmp_path / "PWNED"
    bad = _tampered_copy(zero3_run, tmp_path / "src", MODEL_STATES, marker)
    res = _run(tiny_data, tmp_path / "out", 29602 + os.getpid() % 300,
               **{"train.resume": str(tmp_path / "src" / "checkpoints" / "step_00000003")})
    assert res.returncode != 0
    assert f"error: {bad}: needs the global io.open" in res.stderr, res.stderr[-3000:]
    assert not marker.exists()


@pytest.mark.slow
def test_changed_zero3_file_is_refused_by_its_sha256(zero3_run, tmp_path):
    """A partition edited into other (harmless) values: the sha256 recorded at save no longer matches."""
    import torch

    from worldvla.train.checkpoint import CheckpointError, CheckpointManager
    from worldvla.train.safe_deepspeed import deepspeed_safe_globals

    ckpt = tmp_path / "checkpoints" / "step_00000003"
    shutil.copytree(zero3_run[0] / "checkpoints" / "step_00000003", ckpt)
    target = ckpt / "train_state" / "accelerate" / OPTIM_STATES
    with zipfile.ZipFile(target) as z:  # the biggest tensor record: the fp32 master weights of the partition
        info = max(z.infolist(), key=lambda i: i.file_size)
    data = bytearray(target.read_bytes())
    h = info.header_offset  # the record's bytes follow its local header (30 bytes + name + extra field)
    start = h + 30 + int.from_bytes(data[h + 26: h + 28], "little") + int.from_bytes(data[h + 28: h + 30], "little")
    data[start + 64: start + 68] = np.float32(123.0).tobytes()  # one number changed in place: same size
    target.write_bytes(bytes(data))
    with torch.serialization.safe_globals(deepspeed_safe_globals()):  # still a valid, harmless file
        torch.load(target, weights_only=True, mmap=True)
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(target))}: sha256 .* recorded in .*deepspeed_sha256"):
        CheckpointManager(ckpt.parent, None).verify(ckpt)
