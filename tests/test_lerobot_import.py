"""LeRobot -> HDF5 importer (worldvla.data.lerobot) on the four datasets that LeRobot itself wrote.

tests/fixtures/lerobot/ (see its README.md and makers/): LeRobot 0.6.1 (format v3.0: PNG in the data parquet,
AV1 mp4 per chunk file with episodes as timestamp slices) and LeRobot 0.3.3 (v2.1: PNG, AV1 mp4 per episode).
Their content is known exactly, so every value is checked: state and action bit-exact, tasks, episode
boundaries, PNG frames bit-exact, AV1 frames within VIDEO_MAX_ERR grey levels (measured: 2 with the libdav1d
of imageio-ffmpeg's bundled ffmpeg).
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from worldvla.data.lerobot import (
    LeRobotDataset,
    LeRobotError,
    LeRobotImportConfig,
    convert,
    decode_video,
    episode_path,
    main,
    parse_episode_spec,
)
from worldvla.tokenizers.action import NormStats

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "lerobot"
FORMATS = {"lr_v30_image": ("v3.0", False), "lr_v30_video": ("v3.0", True),
           "lr_v21_0": ("v2.1", False), "lr_v21_1": ("v2.1", True)}  # folder -> (codebase_version, AV1 video)
KEYS = ("observation.images.image", "observation.images.wrist_image")
TASKS = ["put the bowl on the plate", "open the top drawer of the cabinet",
         "pick up the ketchup and place it in the basket"]
LENGTHS = [12, 15, 9]
FPS = 10
VIDEO_MAX_ERR = 3  # grey levels; AV1 (crf 30) of the smooth gradient decodes within 2 here


def expected_episodes():
    """The content the maker scripts gave LeRobot (tests/fixtures/lerobot/README.md)."""
    rng = np.random.default_rng(0)
    base = np.linspace(0, 255, 256, dtype=np.float32)[None, :, None]
    out = []
    for e, n in enumerate(LENGTHS):
        imgs, state, action = [], [], []
        for t in range(n):
            imgs.append(np.clip(base + 10 * e + 3 * t, 0, 255).astype(np.uint8).repeat(256, 0).repeat(3, 2))
            state.append(rng.standard_normal(8).astype(np.float32))
            action.append(rng.uniform(-1, 1, 7).astype(np.float32))
        imgs = np.stack(imgs)
        out.append({"front": imgs, "wrist": np.ascontiguousarray(imgs[:, ::-1]), "state": np.stack(state),
                    "action": np.stack(action), "timestamp": (np.arange(n) / FPS).astype(np.float32)})
    return out


EXPECTED = expected_episodes()


def _cfg(root, out, **kw):
    return LeRobotImportConfig(input=root, out=out, **{"front_key": KEYS[0], "wrist_key": KEYS[1], **kw})


def _read(path):
    with h5py.File(path, "r") as f:
        data = {name: f[name][()] for name in ("obs/front_image", "obs/wrist_image", "obs/state", "action", "timestamp")}
        data["attrs"] = dict(f.attrs)
    return data


def _copy(name, tmp_path):
    dst = tmp_path / name
    shutil.copytree(FIXTURES / name, dst)
    for p in dst.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    return dst


@pytest.mark.parametrize("name", list(FORMATS))
def test_lerobot_written_dataset_imports_exactly(name, tmp_path):
    version, video = FORMATS[name]
    ds = LeRobotDataset(FIXTURES / name)
    assert ds.version == version and ds.fps == FPS and ds.v3 == version.startswith("v3")
    assert ds.tasks == dict(enumerate(TASKS))
    assert ds.episode_indices == [0, 1, 2] and [m.length for m in ds.episodes.values()] == LENGTHS
    assert ds.image_keys == list(KEYS)
    res = convert(_cfg(FIXTURES / name, tmp_path))
    assert res.written == [0, 1, 2] and res.skipped == []
    for e, want in enumerate(EXPECTED):
        data = _read(episode_path(tmp_path, e))
        assert data["obs/state"].dtype == np.float32 and data["action"].dtype == np.float32
        np.testing.assert_array_equal(data["obs/state"], want["state"])
        np.testing.assert_array_equal(data["action"], want["action"])
        np.testing.assert_array_equal(data["timestamp"], want["timestamp"])
        assert data["attrs"]["episode_index"] == e and data["attrs"]["task_index"] == e
        assert data["attrs"]["language_instruction"] == TASKS[e] and data["attrs"]["fps"] == FPS
        for hname, key in (("obs/front_image", "front"), ("obs/wrist_image", "wrist")):
            got = data[hname]
            assert got.dtype == np.uint8 and got.shape == (LENGTHS[e], 256, 256, 3)
            if not video:
                np.testing.assert_array_equal(got, want[key], err_msg=f"{name} episode {e} {hname}")
                continue
            err = np.abs(got.astype(np.int16) - want[key].astype(np.int16))
            assert err.max() <= VIDEO_MAX_ERR, (name, e, hname, err.max())
            # frames differ by 3 levels per step: a one-frame shift (wrong slice / seek) would fail this
            dist = np.abs(got[:, None].astype(np.int16) - want[key][None].astype(np.int16)).mean(axis=(2, 3, 4))
            np.testing.assert_array_equal(dist.argmin(axis=1), np.arange(LENGTHS[e]))
    actions = np.concatenate([w["action"] for w in EXPECTED]).astype(np.float64)
    states = np.concatenate([w["state"] for w in EXPECTED]).astype(np.float64)
    assert NormStats.from_json(res.stats["action"]) == NormStats.from_data(actions)
    assert NormStats.from_json(res.stats["obs/state"]) == NormStats.from_data(states)
    if ds.v3:  # LeRobot's own meta/stats.json agrees with ours
        np.testing.assert_array_equal(np.float32(ds.stats["action"]["min"]), actions.min(0).astype(np.float32))
        np.testing.assert_array_equal(np.float32(ds.stats["observation.state"]["max"]), states.max(0).astype(np.float32))
        assert ds.stats["action"]["count"] == [sum(LENGTHS)]


def test_v3_video_slices_are_the_episodes_of_the_shared_file():
    """Decoding from an episode's from_timestamp gives exactly the frames of a full decode at its offset."""
    ds = LeRobotDataset(FIXTURES / "lr_v30_video")
    path = ds.video_file(1, KEYS[0])
    assert path == ds.video_file(0, KEYS[0]) == FIXTURES / "lr_v30_video/videos" / KEYS[0] / "chunk-000/file-000.mp4"
    full, fps = decode_video(path)
    assert len(full) == sum(LENGTHS) and fps == FPS
    start = 0
    for e, n in enumerate(LENGTHS):
        sl = ds.episodes[e].videos[KEYS[0]]
        assert sl.from_s == pytest.approx(start / FPS) and sl.to_s == pytest.approx((start + n) / FPS)
        part, _ = decode_video(path, start_s=sl.from_s, n_frames=n, fps=FPS, codec="av1")
        np.testing.assert_array_equal(part, full[start:start + n])
        start += n


def test_v3_episode_rows_out_of_the_shared_data_file():
    ds = LeRobotDataset(FIXTURES / "lr_v30_image")
    assert ds.data_file(0) == ds.data_file(2) == FIXTURES / "lr_v30_image/data/chunk-000/file-000.parquet"
    assert [(m.from_index, m.to_index) for m in ds.episodes.values()] == [(0, 12), (12, 27), (27, 36)]
    ep = ds.read_episode(1, [KEYS[1]])
    assert len(ep) == 15 and list(ep.images) == [KEYS[1]] and ep.task == TASKS[1]
    np.testing.assert_array_equal(ep.frame_index, np.arange(15))
    np.testing.assert_array_equal(ep.images[KEYS[1]], EXPECTED[1]["wrist"])


def test_v3_inconsistent_metadata_is_refused(tmp_path):
    root = _copy("lr_v30_image", tmp_path)
    ep_file = root / "meta/episodes/chunk-000/file-000.parquet"
    table = pq.read_table(ep_file)
    i = table.column_names.index("length")
    pq.write_table(table.set_column(i, "length", pa.array([13, 15, 9], pa.int64())), ep_file)
    with pytest.raises(LeRobotError, match=r"file-000.parquet: 12 rows but meta/episodes gives length 13 for episode 0"):
        convert(_cfg(root, tmp_path / "out", episodes="0"))
    pq.write_table(table.drop(["data/file_index"]), ep_file)
    with pytest.raises(LeRobotError, match=r"meta/episodes/chunk-000/file-000.parquet: missing column\(s\) "
                                           r"\['data/file_index'\]"):
        LeRobotDataset(root)
    # a video slice that does not hold the episode's rows
    root = _copy("lr_v30_video", tmp_path / "v")
    ep_file = root / "meta/episodes/chunk-000/file-000.parquet"
    table = pq.read_table(ep_file)
    col = f"videos/{KEYS[1]}/to_timestamp"
    pq.write_table(table.set_column(table.column_names.index(col), col, pa.array([1.2, 2.5, 3.6])), ep_file)
    with pytest.raises(LeRobotError, match=rf"frame-count mismatch for episode 1, camera '{KEYS[1]}'.*13 frames.*15 rows"):
        convert(_cfg(root, tmp_path / "out2", episodes="1"))


def test_cli_with_official_and_dashed_flags(tmp_path, capsys):
    root = FIXTURES / "lr_v21_0"
    out = tmp_path / "cli"
    res = main(["--input", str(root), "--out", str(out), "--episodes", "1",
                "--front-key", KEYS[0], "--wrist-key", KEYS[1], "--stats", "false"])
    assert res.written == [1] and res.stats == {} and (out / "lerobot_to_hdf5_config.yaml").is_file()
    res = main(["--lerobot_input_dir", str(root), "--hdf5_output_dir", str(out), "--episode_start_idx", "0",
                "--episode_end_idx", "1", f"front_key={KEYS[0]}", f"wrist_key={KEYS[1]}"])
    assert res.written == [0] and res.skipped == [1] and (out / "action_stats.json").is_file()
    with pytest.raises(SystemExit) as exit_:
        main(["--input", str(root), "--out", str(out), "--episodes", "0-5"])
    assert exit_.value.code == 2 and "not in" in capsys.readouterr().err  # one line, the bad-input status


def test_script_help():
    proc = subprocess.run([sys.executable, str(REPO / "data" / "lerobot_to_hdf5.py"), "--help"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "front_key" in proc.stdout and "episodes" in proc.stdout and "export_dir" in proc.stdout


def test_resume_skips_complete_and_redoes_broken(tmp_path):
    cfg = _cfg(FIXTURES / "lr_v30_image", tmp_path, episodes="0", stats=False)
    assert convert(cfg).written == [0]
    first = episode_path(tmp_path, 0)
    stamp = first.stat().st_mtime_ns
    cfg.episodes = "0-1"
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


def test_episode_range_errors(tmp_path):
    root = FIXTURES / "lr_v21_0"
    assert parse_episode_spec("0-2,5") == [0, 1, 2, 5]
    assert parse_episode_spec("") is None
    for spec, msg in (("0-5", r"episode\(s\) 3-5 not in .*available: 0-2, 3 episodes"),
                      ("1-0", "ends before it starts"), ("a-b", "not an index")):
        with pytest.raises(LeRobotError, match=msg):
            convert(_cfg(root, tmp_path, episodes=spec))
    with pytest.raises(LeRobotError, match="episode_end_idx=3.*not in"):
        convert(_cfg(root, tmp_path, episode_start_idx=0, episode_end_idx=3))
    with pytest.raises(LeRobotError, match="either"):
        convert(_cfg(root, tmp_path, episodes="0", episode_end_idx=1))
    assert not list(tmp_path.glob("*.hdf5"))


@pytest.mark.parametrize("name,data_file", [("lr_v21_0", "data/chunk-000/episode_000000.parquet"),
                                            ("lr_v30_image", "data/chunk-000/file-000.parquet")])
def test_missing_columns(name, data_file, tmp_path):
    root = _copy(name, tmp_path)
    out = tmp_path / "out"
    with pytest.raises(LeRobotError) as err:  # wrong camera name: lists what there is
        convert(_cfg(root, out, front_key="observation.images.front", episodes="0"))
    msg = str(err.value)
    assert "observation.images.front" in msg and Path(data_file).name in msg
    assert KEYS[0] in msg and "observation.state" in msg  # available columns
    path = root / data_file
    pq.write_table(pq.read_table(path).drop(["observation.state"]), path)
    with pytest.raises(LeRobotError, match=r"missing column\(s\) \['observation.state'\]; available columns: .*action"):
        convert(_cfg(root, out, episodes="0"))
    res = convert(_cfg(root, out, state_key="", episodes="0"))  # no state wanted: converts, no state stats
    assert res.written == [0] and set(res.stats) == {"action"}
    with h5py.File(episode_path(out, 0)) as f:
        assert "obs/state" not in f and f["obs/front_image"].shape == (12, 256, 256, 3)


def test_video_frame_count_mismatch(tmp_path):
    """v2.1, real AV1 files swapped between episodes: a short video is refused, a longer one accepted on request."""
    root = _copy("lr_v21_1", tmp_path)
    ds = LeRobotDataset(root)
    key = KEYS[1]
    short = ds.video_file(1, key)  # episode 1 has 15 rows; give it episode 2's 9-frame video
    shutil.copyfile(ds.video_file(2, key), short)
    with pytest.raises(LeRobotError, match=r"frame-count mismatch .*episode 1.*9 frames.*15 rows") as err:
        convert(_cfg(root, tmp_path / "out", episodes="0-1"))
    assert str(short) in str(err.value)
    assert episode_path(tmp_path / "out", 0).is_file() and not episode_path(tmp_path / "out", 1).exists()
    shutil.copyfile(ds.video_file(0, key), short)  # 12 frames for 15 rows: never accepted
    with pytest.raises(LeRobotError, match="12 frames"):
        convert(_cfg(root, tmp_path / "out", episodes="0-1", strict_frame_count=False))
    # episode 2 (9 rows) with episode 1's 15-frame video: accepted when asked, frames picked by timestamp
    shutil.copyfile(ds.video_file(1, KEYS[0]), ds.video_file(2, key))
    with pytest.raises(LeRobotError, match="15 frames"):
        convert(_cfg(root, tmp_path / "out", episodes="2"))
    res = convert(_cfg(root, tmp_path / "out", episodes="0,2", strict_frame_count=False))
    assert res.written == [2] and res.skipped == [0]
    with h5py.File(episode_path(tmp_path / "out", 2)) as f:
        got = f["obs/wrist_image"][()]
    assert got.shape == (9, 256, 256, 3)
    assert np.abs(got.astype(np.int16) - EXPECTED[1]["front"][:9]).max() <= VIDEO_MAX_ERR


def test_missing_av1_decoder_is_named(tmp_path, monkeypatch):
    """An ffmpeg without an AV1 decoder: the error names the codec and how to get one, not a raw ffmpeg dump."""
    fake = tmp_path / "ffmpeg"
    fake.write_text("#!/bin/sh\n"
                    "case \"$*\" in *-decoders*) echo ' V..... h264  H.264 (codec h264)'; exit 0;; esac\n"
                    "echo 'Decoder (codec av1) not found for input stream #0:0' >&2; exit 1\n")
    fake.chmod(0o755)
    import imageio_ffmpeg

    monkeypatch.setattr(imageio_ffmpeg, "get_ffmpeg_exe", lambda: str(fake))
    monkeypatch.setattr("imageio_ffmpeg._io.get_ffmpeg_exe", lambda: str(fake))
    with pytest.raises(LeRobotError, match=r"file-000.mp4: the ffmpeg at .*ffmpeg has no av1 decoder; .*imageio-ffmpeg"):
        convert(_cfg(FIXTURES / "lr_v30_video", tmp_path / "out", episodes="0"))


def test_rejects_unknown_version_and_non_dataset(tmp_path):
    with pytest.raises(LeRobotError, match="not a LeRobot dataset"):
        LeRobotDataset(tmp_path)
    (tmp_path / "meta").mkdir()
    info = tmp_path / "meta" / "info.json"
    info.write_text(json.dumps({"codebase_version": "v4.0", "features": {}}))
    with pytest.raises(LeRobotError, match=r"codebase_version v4.0 is not supported.*v2.0, v2.1, v3.0"):
        LeRobotDataset(tmp_path)
    info.write_text(json.dumps({"codebase_version": "v3.0", "features": {}}))
    with pytest.raises(LeRobotError, match=r"meta/episodes: no chunk-XXX/file-XXX.parquet"):
        LeRobotDataset(tmp_path)
