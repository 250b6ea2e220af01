"""Issue 14, items 1, 2, 4, 5, 8: no file runs code when loaded; bundled files are copies, hashed and checked;
bad checkpoints and resume state give one line naming the file; resume falls back to the newest intact one."""

import json
import logging
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from worldvla.errors import InputFileError

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("single_torch_thread")


class Payload:
    """Unpickling this creates `marker` (what an attacker's code would do, made harmless)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def plant(blob: dict, path: Path, marker: Path) -> Path:
    torch.save({**blob, "evil": Payload(marker)}, path)
    return path


def lightning_ckpt(path: Path, state: dict, extra_class: str | None = None) -> Path:
    """A checkpoint laid out as Lightning writes it: `callbacks` keyed by the ModelCheckpoint class, a numpy
    best score, optimizer states; pytorch_lightning is not installed, so its class is faked while saving."""
    names = ["pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"] + ([extra_class] if extra_class else [])
    classes = []
    for full in names:
        mod, _, cls_name = full.rpartition(".")
        cls = type(cls_name, (), {"__module__": mod})
        cls.__qualname__ = cls_name
        parts = mod.split(".")
        for i in range(1, len(parts) + 1):
            sys.modules.setdefault(".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
        setattr(sys.modules[mod], cls_name, cls)
        classes.append(cls)
    try:
        blob = {"epoch": 3, "global_step": 1000, "pytorch-lightning_version": "1.0.8", "state_dict": state,
                "callbacks": {classes[0]: {"best_model_score": np.float64(0.25), "best_model_path": "x.ckpt"}},
                "optimizer_states": [{"state": {}, "param_groups": [{"lr": 1e-4, "params": [0]}]}],
                "lr_schedulers": []}
        if extra_class:
            blob["hyper_parameters"] = classes[1]()
        torch.save(blob, path)
    finally:
        for full in names:
            for i in range(full.count(".") + 1, 0, -1):
                sys.modules.pop(".".join(full.split(".")[:i]), None)
    return path


# -- 1: the VQ-GAN ---------------------------------------------------------------------------------
def test_official_layout_vqgan_still_loads(tiny_assets, tmp_path):
    from worldvla.model.vqgan import load_vqgan

    ref = load_vqgan(tiny_assets.vqgan_yaml, tiny_assets.vqgan_ckpt)  # the fixture factory's official layout
    state = torch.load(tiny_assets.vqgan_ckpt, weights_only=True)["state_dict"]
    lit = load_vqgan(tiny_assets.vqgan_yaml, lightning_ckpt(tmp_path / "lightning.ckpt", state))
    for (k, a), b in zip(ref.state_dict().items(), lit.state_dict().values()):
        assert torch.equal(a, b), k


def test_pickle_payload_in_vqgan_ckpt_is_refused(tiny_assets, tmp_path):
    from worldvla.model.vqgan import load_vqgan

    marker = tmp_path / "PWNED"
    blob = torch.load(tiny_assets.vqgan_ckpt, weights_only=True)
    for legacy in (False, True):  # the zip format and the pre-1.6 bare pickle
        bad = tmp_path / f"vqgan_{legacy}.ckpt"
        torch.save({**blob, "evil": Payload(marker)}, bad, _use_new_zipfile_serialization=not legacy)
        with pytest.raises(InputFileError, match="refusing to load") as err:
            load_vqgan(tiny_assets.vqgan_yaml, bad)
        assert str(bad) in str(err.value) and "convert" in str(err.value)
        assert not marker.exists()


def test_payload_in_a_checkpoints_bundled_vqgan_is_refused_by_the_policy(tiny_assets, tmp_path):
    from worldvla.policy.policy import WorldVLAPolicy
    from worldvla.testing.tiny_model import write_tiny_checkpoint

    ckpt = write_tiny_checkpoint(tmp_path / "ckpt", tiny_assets)
    marker = tmp_path / "PWNED"
    plant(torch.load(ckpt / "tokenizer" / "vqgan.ckpt", weights_only=True), ckpt / "tokenizer" / "vqgan.ckpt", marker)
    with pytest.raises(InputFileError, match=r"tokenizer/vqgan\.ckpt: refusing"):
        WorldVLAPolicy.from_pretrained(ckpt)
    assert not marker.exists()


def test_unknown_metadata_class_is_refused_then_converted_without_running_it(tiny_assets, tmp_path):
    from worldvla.model.vqgan import load_vqgan

    state = torch.load(tiny_assets.vqgan_ckpt, weights_only=True)["state_dict"]
    src = lightning_ckpt(tmp_path / "odd.ckpt", state, extra_class="mytrainer.config.RunConfig")
    with pytest.raises(InputFileError, match=r"mytrainer\.config\.RunConfig"):
        load_vqgan(tiny_assets.vqgan_yaml, src)
    out = tmp_path / "vqgan.ckpt"  # safetensors content under the official name: recognised by content
    proc = subprocess.run([sys.executable, "-m", "worldvla.model.vqgan", "convert", str(src), str(out),
                           "--allow", "mytrainer.config.RunConfig"], cwd=REPO, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    ref = load_vqgan(tiny_assets.vqgan_yaml, tiny_assets.vqgan_ckpt)
    conv = load_vqgan(tiny_assets.vqgan_yaml, out)
    assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), conv.state_dict().values()))
    assert out.read_bytes()[8:9] == b"{"  # safetensors header, no pickle


def test_convert_cli_refuses_a_payload_in_one_line(tiny_assets, tmp_path):
    marker = tmp_path / "PWNED"
    bad = plant(torch.load(tiny_assets.vqgan_ckpt, weights_only=True), tmp_path / "bad.ckpt", marker)
    proc = subprocess.run([sys.executable, "-m", "worldvla.model.vqgan", "convert", str(bad), str(tmp_path / "o")],
                          cwd=REPO, capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and str(bad) in proc.stderr and "io.open" in proc.stderr
    assert not marker.exists() and not (tmp_path / "o").exists()


@pytest.mark.parametrize("kind", ["ckpt", "safetensors"])
def test_truncated_vqgan_names_the_file(tiny_assets, tmp_path, kind):
    from worldvla.model.vqgan import convert, load_vqgan

    src = tiny_assets.vqgan_ckpt if kind == "ckpt" else convert(tiny_assets.vqgan_ckpt, tmp_path / "v.safetensors")
    data = Path(src).read_bytes()
    cut = tmp_path / f"cut.{kind}"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputFileError, match="corrupt or truncated") as err:
        load_vqgan(tiny_assets.vqgan_yaml, cut)
    assert str(err.value).startswith(f"{cut}: ")


def test_no_unrestricted_unpickling_left_in_the_package():
    hits = []
    for f in (REPO / "worldvla").rglob("*.py"):
        text = f.read_text()
        for bad in ("weights_only=False", "pickle.load(", "pickle.loads("):
            if bad in text:
                hits.append(f"{f.relative_to(REPO)}: {bad}")
    assert hits == []


# -- 2, 8: training resume state ---------------------------------------------------------------------
def _manager(tmp_path):
    from accelerate import Accelerator

    from worldvla.train.checkpoint import CheckpointManager

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    return CheckpointManager(tmp_path / "checkpoints", Accelerator(cpu=True)), model, opt


def _train_and_save(mgr, model, opt, steps=(1, 2)):
    for step in steps:
        model(torch.randn(2, 4)).sum().backward()
        opt.step()
        opt.zero_grad()
        mgr.save(step, model, opt, {"epoch": 0}, export=lambda sd, folder: None)


def test_rng_state_is_json_and_restores_the_streams(tmp_path):
    import random

    from worldvla.train.checkpoint import read_rng_file, rng_state, set_rng_state

    def draws():
        return random.random(), np.random.rand(), torch.rand(1).item()

    mgr, model, opt = _manager(tmp_path)
    _train_and_save(mgr, model, opt, steps=(1,))
    rng_file = mgr.latest() / "train_state" / "rng_rank00000.json"
    assert json.loads(rng_file.read_text())["numpy"]["name"] == "MT19937"  # plain JSON, no pickle
    expect = draws()
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    assert draws() != expect
    mgr.load(mgr.latest(), model, opt)
    assert draws() == expect
    old = tmp_path / "rng_rank00000.pt"  # the format of older checkpoints still loads (weights_only=True)
    torch.save(rng_state(), old)
    expect = draws()
    set_rng_state(read_rng_file(old))
    assert draws() == expect


def test_pickle_payload_in_resume_state_is_refused(tmp_path):
    from worldvla.train.checkpoint import CheckpointError

    mgr, model, opt = _manager(tmp_path)
    _train_and_save(mgr, model, opt, steps=(1,))
    ckpt = mgr.latest()
    marker = tmp_path / "PWNED"
    state_dir = ckpt / "train_state"
    (state_dir / "rng_rank00000.json").unlink()
    plant({"python": random_state()}, state_dir / "rng_rank00000.pt", marker)  # an old-style RNG file
    with pytest.raises(CheckpointError, match=r"rng_rank00000\.pt: unreadable or unsafe"):
        mgr.load(ckpt, model, opt)
    assert not marker.exists()
    (state_dir / "rng_rank00000.pt").unlink()
    meta = state_dir / "dcp" / ".metadata"  # DCP's metadata is a pickle: torch reads it with pickle.load
    meta.write_bytes(__import__("pickle").dumps(Payload(marker)))
    with pytest.raises(CheckpointError, match=r"dcp/\.metadata: unreadable.*refusing the global"):
        mgr.load(ckpt, model, opt)
    assert not marker.exists()


def test_pickle_payload_in_a_dcp_bytes_entry_is_refused(tmp_path):
    import torch.distributed.checkpoint as dcp

    from worldvla.train.safe_dcp import SafePlanner, SafeReader, failure_reason

    marker = tmp_path / "PWNED"
    dcp.save({"w": torch.ones(2), "note": Payload(marker)}, checkpoint_id=str(tmp_path / "dcp"))
    assert not marker.exists()
    target = {"w": torch.zeros(2), "note": None}
    from torch.distributed.checkpoint.api import CheckpointException

    with pytest.raises(CheckpointException) as err:  # DCP wraps the planner's error
        dcp.load(target, storage_reader=SafeReader(str(tmp_path / "dcp")), planner=SafePlanner())
    assert "refusing the non-tensor entry 'note'" in failure_reason(err.value) and "io.open" in failure_reason(err.value)
    assert not marker.exists()


def random_state():
    import random

    return random.getstate()


@pytest.mark.parametrize("damage", ["dcp_shard", "trainer_state", "rng"])
def test_damaged_checkpoint_names_the_file_and_resume_falls_back(tmp_path, damage, caplog):
    from worldvla.train.checkpoint import CheckpointError

    mgr, model, opt = _manager(tmp_path)
    _train_and_save(mgr, model, opt)
    first, second = mgr.checkpoints()
    if damage == "dcp_shard":
        bad = next((second / "train_state" / "dcp").glob("*.distcp"))
        bad.write_bytes(bad.read_bytes()[:40])
    elif damage == "trainer_state":
        bad = second / "trainer_state.json"
        bad.write_text(bad.read_text()[:10])
    else:
        bad = second / "train_state" / "rng_rank00000.json"
        bad.write_text(bad.read_text()[:100])
    with pytest.raises(CheckpointError) as err:
        mgr.load(second, model, opt)
    assert str(err.value).startswith(str(bad)) and "\n" not in str(err.value)
    with caplog.at_level(logging.WARNING, logger="worldvla.train"):
        assert mgr.latest_intact() == first
    assert "step_00000002" in caplog.text and "falling back" in caplog.text
    assert mgr.load(first, model, opt)["step"] == 1


@pytest.mark.parametrize("damage", ["damaged", "payload"])
def test_resume_auto_with_no_usable_checkpoint_stops_in_one_line(tmp_path, damage, caplog):
    """Issue 23, point 5: checkpoints present but none usable -> an error, never a silent fresh start."""
    from types import SimpleNamespace

    from worldvla.train.checkpoint import CheckpointError
    from worldvla.train.loop import _resume

    mgr, model, opt = _manager(tmp_path)
    _train_and_save(mgr, model, opt)
    marker = tmp_path / "PWNED"
    for ckpt in mgr.checkpoints():
        if damage == "damaged":
            state = ckpt / "trainer_state.json"
            state.write_text(state.read_text()[:10])
        else:  # DCP's metadata pickle asks for a global that would run code
            (ckpt / "train_state" / "dcp" / ".metadata").write_bytes(__import__("pickle").dumps(Payload(marker)))
    cfg = SimpleNamespace(train=SimpleNamespace(resume="auto", seed=0))
    acc = SimpleNamespace(process_index=0, is_main_process=True)
    with caplog.at_level(logging.WARNING, logger="worldvla.train"), pytest.raises(CheckpointError) as err:
        _resume(cfg, mgr, model, opt, None, acc)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(str(mgr.root))
    assert "step_00000001, step_00000002" in msg and "none is usable" in msg
    assert "train.output_dir" in msg and "train.resume=none" in msg
    assert "no older checkpoint" in caplog.text  # the log no longer claims a fallback that does not exist
    assert not marker.exists()
    empty = type(mgr)(tmp_path / "fresh", mgr.acc)  # no checkpoint at all: a fresh start, as before
    assert empty.latest_intact() is None


# -- 4: bundled tokenizer files -------------------------------------------------------------------------
def _export(tmp_path, tiny_assets):
    """A checkpoint written by the trainer's own export (train/modeling.py)."""
    import shutil

    from worldvla.testing.tiny_model import make_tiny_model
    from worldvla.train.config import TrainConfig
    from worldvla.train.modeling import export_checkpoint

    src = tmp_path / "tok"
    shutil.copytree(tiny_assets.root / "tokenizer", src)
    cfg = TrainConfig()
    cfg.data.tokenizer = src
    model = make_tiny_model(0)
    folder = tmp_path / "ckpt"
    folder.mkdir()
    export_checkpoint(model.state_dict(), folder, model.cfg, cfg, step=7)
    return src, folder


def test_checkpoint_copies_and_hashes_its_tokenizer_files(tiny_assets, tmp_path):
    from worldvla.data.tokenization import sha256_file
    from worldvla.policy.policy import WorldVLAPolicy

    src, ckpt = _export(tmp_path, tiny_assets)
    settings = json.loads((ckpt / "worldvla.json").read_text())
    for name in ("text_tokenizer.json", "vqgan.yaml", "vqgan.ckpt"):
        bundled = ckpt / "tokenizer" / name
        assert bundled.stat().st_nlink == 1 and bundled.stat().st_ino != (src / name).stat().st_ino
        assert settings["tokenizer_sha256"][name] == sha256_file(bundled)
    before = (ckpt / "tokenizer" / "vqgan.ckpt").read_bytes()
    (src / "vqgan.ckpt").write_bytes(b"replaced")  # replacing the source does not touch the checkpoint
    assert (ckpt / "tokenizer" / "vqgan.ckpt").read_bytes() == before
    WorldVLAPolicy.from_pretrained(ckpt)  # every key the trainer writes is valid
    from worldvla.testing.fixtures import write_vqgan

    write_vqgan(tmp_path / "other", seed=1)  # a valid VQ-GAN, but not the one the checkpoint was made with
    (ckpt / "tokenizer" / "vqgan.ckpt").write_bytes((tmp_path / "other" / "vqgan.ckpt").read_bytes())
    with pytest.raises(InputFileError, match=r"tokenizer/vqgan\.ckpt: sha256 .*\(tokenizer_sha256\.vqgan\.ckpt\)"):
        WorldVLAPolicy.from_pretrained(ckpt)


# -- 5, 8: metadata files ----------------------------------------------------------------------------
def test_worldvla_json_is_validated(tiny_assets, tmp_path):
    from worldvla.policy.policy import WorldVLAPolicy
    from worldvla.testing.tiny_model import write_tiny_checkpoint

    ckpt = write_tiny_checkpoint(tmp_path / "ckpt", tiny_assets)
    path = ckpt / "worldvla.json"
    good = json.loads(path.read_text())
    cases = [({**good, "chunk_sise": 10}, r"worldvla\.json: chunk_sise: unknown key"),
             ({**good, "action_stats": {"min": [0.0] * 7, "max": [1.0] * 6 + [-2.0]}},
              r"worldvla\.json: action_stats: min\[6\]=0\.0 > max\[6\]=-2\.0"),
             ({**good, "action_stats": {"min": [float("nan")] + [0.0] * 6, "max": [1.0] * 7}},
              r"worldvla\.json: action_stats: min\[0\]=nan"),
             ({**good, "chunk_size": "5"}, r"worldvla\.json: chunk_size: expected a positive integer")]
    for data, pattern in cases:
        path.write_text(json.dumps(data))
        with pytest.raises(InputFileError, match=pattern):
            WorldVLAPolicy.from_pretrained(ckpt)
    path.write_text(json.dumps(good)[:-5])
    with pytest.raises(InputFileError, match=r"worldvla\.json: not valid JSON"):
        WorldVLAPolicy.from_pretrained(ckpt)


def test_stats_files_with_min_above_max_or_nan_are_refused(tmp_path):
    from worldvla.tokenizers import load_stats

    f = tmp_path / "stats.json"
    f.write_text(json.dumps({"min": [0.0, 2.0], "max": [1.0, 1.0]}))
    with pytest.raises(ValueError, match=r"stats\.json: min\[1\]=2\.0 > max\[1\]=1\.0"):
        load_stats(f)
    f.write_text('{"min": [0.0, NaN], "max": [1.0, 1.0]}')
    with pytest.raises(ValueError, match=r"stats\.json: min\[1\]=nan"):
        load_stats(f)


def test_bad_config_and_weights_name_the_file(tiny_assets, tmp_path):
    from worldvla.model.loading import load_checkpoint
    from worldvla.testing.tiny_model import write_tiny_checkpoint

    ckpt = write_tiny_checkpoint(tmp_path / "ckpt", tiny_assets)
    weights = ckpt / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputFileError, match=r"model\.safetensors: corrupt or truncated"):
        load_checkpoint(ckpt)
    (ckpt / "config.json").write_text("{not json")
    with pytest.raises(InputFileError, match=r"config\.json: not valid JSON"):
        load_checkpoint(ckpt)


def test_cli_wrapper_prints_one_line():
    from worldvla.errors import exit_on_input_errors

    def main():
        raise InputFileError("a/b.json", "bad value", "field")

    code = ("from worldvla.errors import *\n"
            "def m():\n    raise InputFileError('a/b.json', 'bad value', 'field')\n"
            "exit_on_input_errors(m)()")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and proc.stderr == "error: a/b.json: field: bad value\n"
    with pytest.raises(SystemExit):
        exit_on_input_errors(main)()


def test_pickle_payload_in_weights_bin_or_a_token_shard_is_refused(tiny_assets, tmp_path):
    from worldvla.data.shards import ShardReader, write_shard
    from worldvla.model.loading import read_state_dict
    from worldvla.testing.tiny_model import write_tiny_checkpoint

    marker = tmp_path / "PWNED"
    ckpt = write_tiny_checkpoint(tmp_path / "ckpt", tiny_assets)
    state = read_state_dict(ckpt)
    (ckpt / "model.safetensors").unlink()
    plant(state, ckpt / "pytorch_model.bin", marker)  # the official .bin layout
    with pytest.raises(InputFileError, match=r"pytorch_model\.bin: cannot be read as plain tensors.*io\.open"):
        read_state_dict(ckpt)
    from worldvla.data.sequence import Sample

    shard = tmp_path / "shard_00000"
    write_shard(shard, [Sample([1, 2, 3], [-100, 2, 3], [])], ["action"], [0], {})
    np.save(shard / "input_ids.npy", np.array([Payload(marker)], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="incomplete or corrupt shard"):
        ShardReader(shard)
    assert not marker.exists()
