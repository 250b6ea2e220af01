"""Issue 14, items 3, 5, 6, 10 (data side): a refused pretokenize run leaves a finished set untouched and says
what differs; one writer at a time per output / frame cache; bad token ids named at load; stale tmp files."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from worldvla.data.conversations import ConversationsConfig, generate
from worldvla.data.pretokenize import TokenizerOptions
from worldvla.errors import InputFileError
from worldvla.recipe import Recipe

RES = 256
pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def convs(tmp_path_factory):
    """1 task x 2 trajectories x 3 frames at 256 px (third + wrist + state), action conversations K=2."""
    root = tmp_path_factory.mktemp("pipe")
    rng = np.random.default_rng(0)
    for i in range(2):
        trj = root / "exp" / "put_the_bowl_on_the_stove" / f"trj_{i}"
        for d in ("action", "imgs_third_view", "imgs_wrist", "eef_gripper_state"):
            (trj / d).mkdir(parents=True)
        for j in range(3):
            np.save(trj / "action" / f"action_{j}.npy", rng.uniform(-0.9, 0.9, 7))
            np.save(trj / "eef_gripper_state" / f"eef_gripper_state_{j}.npy", rng.uniform(-0.3, 0.3, 8))
            for d in ("imgs_third_view", "imgs_wrist"):
                img = rng.integers(0, 256, (RES // 8, RES // 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
                Image.fromarray(img).save(trj / d / f"image_{j}.png")
    files = generate(ConversationsConfig(base_dir=root / "exp", output_dir=root / "convs", train_ratio=1.0, recipe=Recipe(history=2, chunk_size=2, with_wrist=True, with_state=True)))
    return root, files["train"]["action"]


def cfg_for(inputs, out, assets, **kw):
    from worldvla.data.pretokenize import PretokenizeConfig

    kw.setdefault("tokenizer", TokenizerOptions(path=assets.root, recipe=Recipe(resolution=RES)))
    return PretokenizeConfig(inputs=list(inputs), out_dir=out, **kw)


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_refused_rerun_keeps_the_finished_set_and_names_the_difference(convs, tiny_assets, tmp_path):
    from worldvla.data.datasets import PretokenizedDataset
    from worldvla.data.pretokenize import FinishedSetError, pretokenize

    _, action_json = convs
    out = tmp_path / "tokens"
    pretokenize(cfg_for([action_json], out, tiny_assets, shard_size=2))
    before = snapshot(out)
    changed = tmp_path / "regenerated.json"  # "regenerate the conversations, rerun into the same folder"
    records = json.loads(Path(action_json).read_text())
    changed.write_text(json.dumps(records[:-1]))
    with pytest.raises(FinishedSetError) as err:
        pretokenize(cfg_for([changed], out, tiny_assets, shard_size=2))
    msg = str(err.value)
    assert msg.startswith(str(out / "manifest.json")) and "Nothing was changed" in msg
    assert f"inputs: ['{action_json}'] -> ['{changed}']" in msg and ".sha256" in msg
    with pytest.raises(FinishedSetError, match=r"tokenizer\.action_stats: .*shard_size: 2 -> 3"):
        pretokenize(cfg_for([action_json], out, tiny_assets, shard_size=3,
                            tokenizer=TokenizerOptions(path=tiny_assets.root, recipe=Recipe(
                                resolution=RES, action_stats="rynnvla_action"))))
    assert snapshot(out) == before  # nothing finished was deleted or changed
    assert len(PretokenizedDataset(out)) == len(records)


def test_a_second_writer_to_one_frame_cache_is_refused(convs, tiny_assets, tmp_path):
    from worldvla.data.pretokenize import pretokenize
    from worldvla.lockfile import FolderLock, LockedError

    _, action_json = convs
    cache = tmp_path / "frames"
    # another process holds the frame cache (a second pretokenize run into another out_dir)
    code = ("import sys, time\nfrom worldvla.lockfile import FolderLock\n"
            f"FolderLock({str(cache)!r}).acquire()\nprint('locked', flush=True)\ntime.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env={**os.environ})
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(LockedError) as err:
            pretokenize(cfg_for([action_json], tmp_path / "b", tiny_assets, frame_cache=cache))
        assert str(err.value).startswith(str(cache / ".lock")) and f"pid {holder.pid}" in str(err.value)
        assert socket.gethostname() in str(err.value)
        assert not list(cache.glob("chunk_*"))  # it wrote nothing
    finally:
        holder.kill()
        holder.wait()
    # the holder was killed with -9: its lock is stale, detected and replaced
    lock = json.loads((cache / ".lock").read_text())
    assert lock["pid"] == holder.pid
    pretokenize(cfg_for([action_json], tmp_path / "b", tiny_assets, frame_cache=cache))
    assert not (cache / ".lock").exists() and not (tmp_path / "b" / ".lock").exists()
    with FolderLock(tmp_path / "b"), pytest.raises(LockedError, match="another pretokenize run"):
        FolderLock(tmp_path / "b", "pretokenize run").acquire()


def test_stale_and_unreadable_locks_are_replaced(tmp_path):
    from worldvla.lockfile import FolderLock, LockedError

    lock = tmp_path / ".lock"
    lock.write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname()}))
    with FolderLock(tmp_path) as held:
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        with pytest.raises(LockedError):
            FolderLock(tmp_path).acquire()
    assert held.held is False and not lock.exists()
    lock.write_text(json.dumps({"pid": 1, "host": "some-other-node"}))  # cannot be checked: refused while fresh
    with pytest.raises(LockedError, match="some-other-node"):
        FolderLock(tmp_path).acquire()
    old = lock.stat().st_mtime - 2 * 24 * 3600
    os.utime(lock, (old, old))
    FolderLock(tmp_path).acquire().release()
    lock.write_text("")  # killed between creating and filling it
    os.utime(lock, (old, old))
    FolderLock(tmp_path).acquire().release()


def test_token_ids_outside_the_vocabulary_are_named_at_load(convs, tiny_assets, tmp_path):
    from worldvla.data.datasets import PretokenizedDataset
    from worldvla.data.pretokenize import pretokenize
    from worldvla.testing.fixtures import FIXTURE_VOCAB_SIZE
    from worldvla.train.data import TrainSet

    _, action_json = convs
    out = tmp_path / "tokens"
    pretokenize(cfg_for([action_json], out, tiny_assets, shard_size=2))
    TrainSet([out], ["action", "world"], 4096).check_vocab(FIXTURE_VOCAB_SIZE)  # the real data fits
    ids_file = out / "shards" / "shard_00001" / "input_ids.npy"
    ids = np.load(ids_file)
    offsets = np.load(ids_file.with_name("offsets.npy"))
    pos = int(offsets[1]) + 5  # sample 1 of the shard, its 6th token
    ids[pos] = FIXTURE_VOCAB_SIZE + 7
    np.save(ids_file, ids)
    record = int(np.load(ids_file.with_name("record_ids.npy"))[1])
    with pytest.raises(InputFileError) as err:
        PretokenizedDataset(out).check_ids(FIXTURE_VOCAB_SIZE)
    assert str(err.value) == (f"{ids_file}: input_ids: token id {FIXTURE_VOCAB_SIZE + 7} at position {pos} (sample 1, "
                              f"record {record}, token 5) is outside the model's vocabulary of {FIXTURE_VOCAB_SIZE} "
                              "ids; the data was tokenised with another tokenizer or vocabulary")
    with pytest.raises(InputFileError, match="outside the model's vocabulary"):
        TrainSet([out], ["action", "world"], 4096).check_vocab(FIXTURE_VOCAB_SIZE)


def test_regenerate_removes_temporary_files_of_a_killed_run(tmp_path, monkeypatch):
    from worldvla.data import regenerate as R

    out = tmp_path / "regen"
    parts = out / R.PARTS_DIR / "some_task"
    parts.mkdir(parents=True)
    dead, live = dead_pid(), os.getpid()
    stale = [out / f"some_task_demo.hdf5.tmp{dead}", parts / f"demo_0.json.tmp{dead}", parts / f"demo_0.hdf5.tmp{dead}"]
    kept = [parts / f"demo_1.hdf5.tmp{live}", parts / "demo_2.json"]  # a live writer's file, a finished part
    for f in stale + kept:
        f.write_text("x")

    class Stop(Exception):
        pass

    def stop(*a, **k):
        raise Stop

    monkeypatch.setattr(R, "plan_jobs", stop)
    cfg = R.RegenerateConfig(out_dir=out, resolution=128)
    monkeypatch.setattr(cfg, "resolved_out_dir", lambda: out, raising=False)
    with pytest.raises(Stop):
        R.regenerate(cfg)
    assert [f.exists() for f in stale] == [False] * 3 and all(f.exists() for f in kept)


def test_atomic_write_leaves_the_old_file_or_the_new_one(tmp_path, monkeypatch):
    from worldvla import atomic

    f = tmp_path / "run.json"
    atomic.atomic_write_json(f, {"a": 1})
    calls = []
    real = os.fsync
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: (calls.append(fd), real(fd)))

    def broken_replace(a, b):
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "replace", broken_replace)
    with pytest.raises(OSError):
        atomic.atomic_write_json(f, {"a": 2})
    assert json.loads(f.read_text()) == {"a": 1} and [p.name for p in tmp_path.iterdir()] == ["run.json"]
    assert calls  # the data was fsync'd before the rename was attempted
