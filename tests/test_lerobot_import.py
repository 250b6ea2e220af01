"""LeRobot v2.x -> HDF5 importer (worldvla.data.lerobot) on tiny datasets written by worldvla.testing.lerobot_fixture."""

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest

from worldvla.data.lerobot import (
    LeRobotDataset,
    LeRobotError,
    LeRobotImportConfig,
    compute_min_max,
    convert,
    episode_path,
    main,
    parse_episode_spec,
)
from worldvla.testing.lerobot_fixture import make_frames, write_lerobot_dataset, write_video
from worldvla.tokenizers.action import NormStats

REPO = Path(__file__).resolve().parents[1]
LIBERO_KEYS = ("observation.images.image", "observation.images.wrist_image")


@pytest.fixture(scope="module")
def video_ds(tmp_path_factory):
    return write_lerobot_dataset(tmp_path_factory.mktemp("lerobot_video"), n_frames=[6, 5], images="video")


@pytest.fixture(scope="module")
def png_ds(tmp_path_factory):
    return write_lerobot_dataset(tmp_path_factory.mktemp("lerobot_png"), images="png", image_keys=LIBERO_KEYS, seed=1)


def _cfg(fix, out, **kw):
    keys = {"front_key": fix.image_keys[0], "wrist_key": fix.image_keys[1]}
    keys.update(kw)
    return LeRobotImportConfig(input=fix.root, out=out, **keys)


def _read(path):
    with h5py.File(path, "r") as f:
        data = {name: f[name][()] for name in ("obs/front_image", "obs/wrist_image", "obs/state", "action", "timestamp")}
        data["attrs"] = dict(f.attrs)
    return data


def _check_numbers(data, ep, fix):
    assert data["obs/state"].dtype == np.float32 and data["action"].dtype == np.float32
    np.testing.assert_array_equal(data["obs/state"], ep.state)
    np.testing.assert_array_equal(data["action"], ep.action)
    np.testing.assert_array_equal(data["timestamp"], ep.timestamp)
    assert data["timestamp"].dtype == np.float32
    assert data["attrs"]["task_index"] == ep.task_index
    assert data["attrs"]["language_instruction"] == fix.tasks[ep.task_index]
    assert data["attrs"]["episode_index"] == ep.index


def test_video_dataset_converts(video_ds, tmp_path):
    res = convert(_cfg(video_ds, tmp_path))
    assert res.written == [0, 1] and res.skipped == []
    for ep in video_ds.episodes:
        data = _read(episode_path(tmp_path, ep.index))
        _check_numbers(data, ep, video_ds)
        for name, key in (("obs/front_image", video_ds.image_keys[0]), ("obs/wrist_image", video_ds.image_keys[1])):
            got, want = data[name], ep.images[key]
            assert got.dtype == np.uint8 and got.shape == want.shape == (len(ep), 64, 64, 3)
            err = np.abs(got.astype(np.int16) - want.astype(np.int16))
            assert err.mean() < 3.0 and err.max() < 48, (name, err.mean(), err.max())
            # every decoded frame is closest to the frame of the same index (no shift, no swap)
            dist = np.abs(got[:, None].astype(np.int16) - want[None].astype(np.int16)).mean(axis=(2, 3, 4))
            np.testing.assert_array_equal(dist.argmin(axis=1), np.arange(len(ep)))


def test_png_dataset_exact_and_stats(png_ds, tmp_path):
    res = convert(_cfg(png_ds, tmp_path))
    assert res.written == [0, 1]
    for ep in png_ds.episodes:
        data = _read(episode_path(tmp_path, ep.index))
        _check_numbers(data, ep, png_ds)
        np.testing.assert_array_equal(data["obs/front_image"], ep.images[LIBERO_KEYS[0]])
        np.testing.assert_array_equal(data["obs/wrist_image"], ep.images[LIBERO_KEYS[1]])
    actions = np.concatenate([e.action for e in png_ds.episodes]).astype(np.float64)
    states = np.concatenate([e.state for e in png_ds.episodes]).astype(np.float64)
    assert set(res.stats) == {"action", "obs/state"}
    raw = json.loads(res.stats["action"].read_text())
    assert set(raw) == {"min", "max"}
    np.testing.assert_array_equal(raw["min"], actions.min(0))
    np.testing.assert_array_equal(raw["max"], actions.max(0))
    st = NormStats.from_json(res.stats["obs/state"])
    assert st == NormStats.from_data(states)
    files = [episode_path(tmp_path, i) for i in (0, 1)]
    assert compute_min_max(files, "action") == NormStats.from_data(actions)


def test_cli_with_official_and_dashed_flags(png_ds, tmp_path):
    out = tmp_path / "cli"
    res = main(["--input", str(png_ds.root), "--out", str(out), "--episodes", "1",
                "--front-key", LIBERO_KEYS[0], "--wrist-key", LIBERO_KEYS[1], "--stats", "false"])
    assert res.written == [1] and res.stats == {} and (out / "lerobot_to_hdf5_config.yaml").is_file()
    res = main(["--lerobot_input_dir", str(png_ds.root), "--hdf5_output_dir", str(out), "--episode_start_idx", "0",
                "--episode_end_idx", "1", f"front_key={LIBERO_KEYS[0]}", f"wrist_key={LIBERO_KEYS[1]}"])
    assert res.written == [0] and res.skipped == [1] and (out / "action_stats.json").is_file()
    with pytest.raises(SystemExit, match="not in"):
        main(["--input", str(png_ds.root), "--out", str(out), "--episodes", "0-5"])


def test_script_help():
    proc = subprocess.run([sys.executable, str(REPO / "data" / "lerobot_to_hdf5.py"), "--help"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "front_key" in proc.stdout and "episodes" in proc.stdout


def test_resume_skips_complete_and_redoes_broken(png_ds, tmp_path):
    cfg = _cfg(png_ds, tmp_path, episodes="0", stats=False)
    assert convert(cfg).written == [0]
    first = episode_path(tmp_path, 0)
    stamp = first.stat().st_mtime_ns
    cfg.episodes = ""
    res = convert(cfg)
    assert res.skipped == [0] and res.written == [1]
    assert first.stat().st_mtime_ns == stamp
    # a truncated file (e.g. from a tool that does not write atomically) is written again
    episode_path(tmp_path, 1).write_bytes(b"not hdf5")
    with h5py.File(first, "a") as f:
        del f["action"]
    res = convert(cfg)
    assert res.written == [0, 1] and res.skipped == []
    assert not list(tmp_path.glob("*.tmp*"))
    # overwrite redoes everything; a temporary file left by a killed run is removed
    (tmp_path / "episode_000001.hdf5.tmp12345").write_bytes(b"partial")
    cfg.overwrite = True
    assert convert(cfg).written == [0, 1]
    assert not list(tmp_path.glob("*.tmp*"))
    # other source columns into the same folder are refused
    cfg.overwrite = False
    cfg.front_key, cfg.wrist_key = cfg.wrist_key, cfg.front_key
    with pytest.raises(LeRobotError, match="other columns"):
        convert(cfg)


def test_episode_range_errors(png_ds, tmp_path):
    assert parse_episode_spec("0-2,5") == [0, 1, 2, 5]
    assert parse_episode_spec("") is None
    for spec, msg in (("0-5", r"episode\(s\) 2-5 not in .*available: 0-1, 2 episodes"),
                      ("1-0", "ends before it starts"), ("a-b", "not an index")):
        with pytest.raises(LeRobotError, match=msg):
            convert(_cfg(png_ds, tmp_path, episodes=spec))
    with pytest.raises(LeRobotError, match="episode_end_idx=2.*not in"):
        convert(_cfg(png_ds, tmp_path, episode_start_idx=0, episode_end_idx=2))
    with pytest.raises(LeRobotError, match="either"):
        convert(_cfg(png_ds, tmp_path, episodes="0", episode_end_idx=1))
    assert not list(tmp_path.glob("*.hdf5"))


def test_missing_columns(tmp_path):
    fix = write_lerobot_dataset(tmp_path / "ds", n_episodes=1, n_frames=3, images="png", size=16)
    out = tmp_path / "out"
    with pytest.raises(LeRobotError) as err:  # wrong camera name: lists what there is
        convert(_cfg(fix, out, front_key="observation.images.image"))
    msg = str(err.value)
    assert "observation.images.image" in msg and "episode_000000.parquet" in msg
    assert "observation.images.front" in msg and "observation.state" in msg  # available columns
    path = fix.data_file(0)
    table = pq.read_table(path)
    pq.write_table(table.drop(["observation.state"]), path)
    with pytest.raises(LeRobotError, match=r"missing column\(s\) \['observation.state'\]; available columns: .*action"):
        convert(_cfg(fix, out))
    res = convert(_cfg(fix, out, state_key=""))  # no state wanted: converts, no state stats
    assert res.written == [0] and set(res.stats) == {"action"}
    with h5py.File(episode_path(out, 0)) as f:
        assert "obs/state" not in f and f["obs/front_image"].shape == (3, 16, 16, 3)


def test_video_frame_count_mismatch(tmp_path):
    fix = write_lerobot_dataset(tmp_path / "ds", n_episodes=2, n_frames=4, images="video", size=32)
    key = fix.image_keys[1]
    short = fix.video_file(1, key)
    write_video(short, make_frames(3, 32, seed=5), fix.fps)
    with pytest.raises(LeRobotError, match=r"frame-count mismatch .*episode 1.*3 frames.*4 rows") as err:
        convert(_cfg(fix, tmp_path / "out"))
    assert str(short) in str(err.value)
    assert episode_path(tmp_path / "out", 0).is_file() and not episode_path(tmp_path / "out", 1).exists()
    # a longer video is accepted when asked (frames picked by timestamp), a shorter one never
    write_video(short, np.concatenate([fix.episodes[1].images[key], make_frames(2, 32, seed=9)]), fix.fps)
    with pytest.raises(LeRobotError, match="6 frames"):
        convert(_cfg(fix, tmp_path / "out"))
    res = convert(_cfg(fix, tmp_path / "out", strict_frame_count=False))
    assert res.written == [1] and res.skipped == [0]
    with h5py.File(episode_path(tmp_path / "out", 1)) as f:
        assert f["obs/wrist_image"].shape == (4, 32, 32, 3)


def test_reader_meta(video_ds):
    ds = LeRobotDataset(video_ds.root)
    assert ds.episode_indices == [0, 1] and ds.fps == video_ds.fps
    assert ds.image_keys == list(video_ds.image_keys)
    assert ds.episodes[1].length == 5
    ep = ds.read_episode(1, [video_ds.image_keys[0]])
    assert len(ep) == 5 and list(ep.images) == [video_ds.image_keys[0]]
    np.testing.assert_array_equal(ep.frame_index, np.arange(5))


def test_rejects_v3_and_non_dataset(tmp_path):
    with pytest.raises(LeRobotError, match="not a LeRobot dataset"):
        LeRobotDataset(tmp_path)
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "info.json").write_text(json.dumps({"codebase_version": "v3.0", "features": {}}))
    with pytest.raises(LeRobotError, match="v3.0"):
        LeRobotDataset(tmp_path)


@pytest.mark.skipif(os.environ.get("WORLDVLA_SKIP_AV1") == "1", reason="AV1 check disabled")
def test_av1_video_decodes(tmp_path):
    """LeRobot encodes with libsvtav1 by default; the bundled ffmpeg decodes it with libdav1d."""
    frames = make_frames(4, 64, seed=3)
    try:
        path = write_video(tmp_path / "a.mp4", frames, 10, codec="libsvtav1", crf=20)
    except OSError as err:  # an ffmpeg without the SVT-AV1 encoder
        pytest.skip(f"no AV1 encoder: {err}")
    from worldvla.data.lerobot import decode_video

    got, fps = decode_video(path)
    assert got.shape == frames.shape and fps == 10
    assert np.abs(got.astype(np.int16) - frames).mean() < 4
