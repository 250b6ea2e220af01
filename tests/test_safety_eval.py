"""Issue 14, items 7 and 10 (evaluation): resume refuses weights swapped at the same path; partial videos of
a killed run are removed on start; run.json / summaries are written with fsync + rename."""

import json
import os
import subprocess
import sys

import pytest

from worldvla.eval.libero import main

pytestmark = pytest.mark.usefixtures("single_torch_thread")
FAKE = ["env_factory=worldvla.eval.fake_env:FakeEnv", "suites=[libero_goal]", "tasks=[0]", "num_trials=1",
        "max_steps=4", "videos=none", "num_workers=0"]


def test_resume_with_swapped_weights_is_refused(tiny_assets, tmp_path, capsys):
    from worldvla.testing.tiny_model import write_tiny_checkpoint

    ckpt = write_tiny_checkpoint(tmp_path / "ckpt", tiny_assets, seed=0)
    out = tmp_path / "eval"
    args = FAKE + [f"policy={ckpt}", f"output_dir={out}"]
    assert main(args) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["weights"]["method"] == "full" and run["weights"]["files"] == 6  # config, settings, weights, 3 tokenizer
    assert main(args) == 0  # the same weights: the resume is accepted (nothing left to run)
    episodes = (out / "episodes.jsonl").read_bytes()
    write_tiny_checkpoint(ckpt, tiny_assets, seed=1)  # other weights at the same path
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"{out / 'run.json'}: weights: the policy's files differ" in err and "mix two models" in err
    assert (out / "episodes.jsonl").read_bytes() == episodes  # nothing recorded was changed
    assert json.loads((out / "run.json").read_text()) == run


def test_weights_fingerprint_samples_large_files_and_ignores_mtime(tmp_path, monkeypatch):
    from worldvla.eval import weights_hash as W

    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    blob = bytearray(os.urandom(8 << 20))
    (folder / "model.safetensors").write_bytes(blob)
    monkeypatch.setattr(W, "FULL_HASH_BYTES", 1 << 20)  # make 8 MB "large"
    a = W.weights_fingerprint(folder)
    assert a["method"] == "sampled" and a["bytes"] == (8 << 20) + 2
    os.utime(folder / "model.safetensors", (0, 0))
    assert W.weights_fingerprint(folder) == a
    blob[5 << 20: (5 << 20) + 4096] = os.urandom(4096)  # another model differs in (at least) a sampled block
    (folder / "model.safetensors").write_bytes(blob)
    assert W.weights_fingerprint(folder)["sha256"] != a["sha256"]


def test_partial_videos_of_a_killed_run_are_removed(tmp_path):
    out = tmp_path / "eval"
    tmp = out / "videos" / ".tmp"
    tmp.mkdir(parents=True)
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    stale = tmp / f"main_{proc.pid}.mp4"
    stale.write_bytes(b"half a video")
    args = FAKE + ["policy=worldvla.eval.scripted:hash_policy", f"output_dir={out}"]
    assert main(args) == 0
    assert not stale.exists() and not tmp.exists()
    assert not [p for p in out.iterdir() if ".tmp" in p.name]


def test_merge_refuses_shards_of_different_weights(tiny_assets, tmp_path, caplog):
    from worldvla.eval.merge import merge_runs
    from worldvla.testing.tiny_model import write_tiny_checkpoint

    a = write_tiny_checkpoint(tmp_path / "a", tiny_assets, seed=0)
    b = write_tiny_checkpoint(tmp_path / "b", tiny_assets, seed=1)  # same architecture and settings, other weights
    shards = FAKE[:-2] + ["num_trials=2", "num_workers=0"]
    for ckpt, i, name in [(a, 0, "s0"), (a, 1, "s1"), (b, 1, "s1b")]:
        assert main(shards + [f"policy={ckpt}", f"shard={i}/2", f"output_dir={tmp_path / name}"]) == 0
    same = merge_runs([tmp_path / "s0", tmp_path / "s1"], tmp_path / "m")  # one checkpoint: merged as before
    assert sum(s["episodes"] for s in same["suites"].values()) == 2
    fa = json.loads((tmp_path / "s0" / "run.shard0of2.json").read_text())["weights"]["sha256"]
    fb = json.loads((tmp_path / "s1b" / "run.shard1of2.json").read_text())["weights"]["sha256"]
    assert fa != fb
    with pytest.raises(ValueError) as err:
        merge_runs([tmp_path / "s0", tmp_path / "s1b"], tmp_path / "m2")
    msg = str(err.value)
    assert f"{tmp_path / 's1b'} and {tmp_path / 's0'} ran different weights" in msg
    assert f"weights.sha256 {fb[:12]}" in msg and fa[:12] in msg
    assert not (tmp_path / "m2").exists()  # nothing written for a refused merge
    with pytest.raises(SystemExit) as exit_:
        main(["merge", str(tmp_path / "s0"), str(tmp_path / "s1b"), "--out", str(tmp_path / "m3")])
    assert exit_.value.code == 2
