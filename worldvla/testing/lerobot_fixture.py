"""A tiny LeRobot v2.x dataset written file by file, for the LeRobot -> HDF5 importer tests.

Layout (LeRobot codebase v2.1, one parquet file per episode):

    <root>/meta/info.json                  fps, path templates, chunks_size, features
    <root>/meta/episodes.jsonl             {"episode_index", "tasks", "length"} per line
    <root>/meta/tasks.jsonl                {"task_index", "task"} per line
    <root>/data/chunk-000/episode_000000.parquet
    <root>/videos/chunk-000/<image key>/episode_000000.mp4     (images="video")

With `images="png"` the camera columns live in the parquet file as `struct<bytes, path>` holding
PNG files (the Hugging Face `datasets` Image feature), and there is no `videos/` folder.
The state column is a fixed-size list, the action column a variable-size list, so the reader is
exercised on both Arrow list types. The arrays that were written are returned for comparison.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

TASKS = ("put the bowl on the plate", "open the top drawer")
CHUNKS_SIZE = 1000
DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
VIDEO_PATH = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"


@dataclass
class FixtureEpisode:
    index: int
    task_index: int
    images: dict[str, np.ndarray]  # key -> (T, H, W, 3) uint8, as written (before any codec)
    state: np.ndarray  # (T, state_dim) float32
    action: np.ndarray  # (T, action_dim) float32
    timestamp: np.ndarray  # (T,) float32

    def __len__(self) -> int:
        return len(self.timestamp)


@dataclass
class LeRobotFixture:
    root: Path
    image_keys: tuple[str, ...]
    images: str  # "video" or "png"
    fps: int
    tasks: tuple[str, ...]
    episodes: list[FixtureEpisode] = field(default_factory=list)

    def data_file(self, episode: int) -> Path:
        return self.root / DATA_PATH.format(episode_chunk=episode // CHUNKS_SIZE, episode_index=episode)

    def video_file(self, episode: int, key: str) -> Path:
        return self.root / VIDEO_PATH.format(episode_chunk=episode // CHUNKS_SIZE, video_key=key, episode_index=episode)


def make_frames(n: int, size: int, seed: int) -> np.ndarray:
    """(n, size, size, 3) uint8 frames that survive yuv420 video coding well but differ per frame.

    A smooth colour gradient (changing with `seed`) whose brightness steps with the frame number,
    plus a square (a quarter of the side) that moves by 8 px per frame: a frame swap or an
    off-by-one is obvious.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    base = rng.uniform(40, 140, size=3).astype(np.float32)
    slope = rng.uniform(-30, 30, size=(2, 3)).astype(np.float32)
    frames = np.empty((n, size, size, 3), dtype=np.uint8)
    for t in range(n):
        img = base + xx[..., None] * slope[0] + yy[..., None] * slope[1] + 12.0 * t
        sq = max(size // 4, 2)
        x0 = (8 * t) % (size - sq)
        y0 = (8 * (t + seed)) % (size - sq)
        img[y0:y0 + sq, x0:x0 + sq] = (230.0, 60.0 + 20 * (seed % 5), 30.0)
        frames[t] = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return frames


def write_video(path: str | Path, frames: np.ndarray, fps: float, codec: str = "libx264", crf: int = 12) -> Path:
    """Encode (T, H, W, 3) uint8 frames as an mp4 (yuv420p) with the ffmpeg of imageio-ffmpeg."""
    import imageio_ffmpeg

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames.shape[1:3]
    writer = imageio_ffmpeg.write_frames(
        str(path), (w, h), fps=fps, codec=codec, pix_fmt_out="yuv420p", quality=None,
        macro_block_size=1, ffmpeg_log_level="error", output_params=["-crf", str(crf)],
    )
    writer.send(None)  # start ffmpeg
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()
    return path


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def _feature(dtype: str, shape: list[int], names=None, info: dict | None = None) -> dict:
    out = {"dtype": dtype, "shape": shape, "names": names}
    if info is not None:
        out["info"] = info
    return out


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def write_lerobot_dataset(
    root: str | Path,
    *,
    n_episodes: int = 2,
    n_frames: int | list[int] = 6,
    size: int = 64,
    images: str = "video",
    image_keys: tuple[str, ...] = ("observation.images.front", "observation.images.wrist"),
    state_dim: int = 8,
    action_dim: int = 7,
    fps: int = 10,
    seed: int = 0,
    codec: str = "libx264",
) -> LeRobotFixture:
    """Write a LeRobot v2.1 dataset with `n_episodes` episodes under `root` and return what was written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if images not in ("video", "png"):
        raise ValueError(f"images must be 'video' or 'png', got {images!r}")
    root = Path(root)
    (root / "meta").mkdir(parents=True, exist_ok=True)
    lengths = [n_frames] * n_episodes if isinstance(n_frames, int) else list(n_frames)
    if len(lengths) != n_episodes:
        raise ValueError(f"n_frames has {len(lengths)} entries for {n_episodes} episodes")
    fix = LeRobotFixture(root, tuple(image_keys), images, fps, TASKS)
    rng = np.random.default_rng(seed)
    global_index = 0
    for ep, n in enumerate(lengths):
        task_index = ep % len(TASKS)
        frames = {key: make_frames(n, size, seed=1000 * seed + 10 * ep + k) for k, key in enumerate(image_keys)}
        state = rng.normal(0, 0.5, size=(n, state_dim)).astype(np.float32)
        action = rng.uniform(-1, 1, size=(n, action_dim)).astype(np.float32)
        timestamp = (np.arange(n) / fps).astype(np.float32)
        episode = FixtureEpisode(ep, task_index, frames, state, action, timestamp)
        fix.episodes.append(episode)

        columns: dict[str, pa.Array] = {}
        for key in image_keys:
            if images == "png":
                structs = [{"bytes": png_bytes(img), "path": f"frame_{i:06d}.png"} for i, img in enumerate(frames[key])]
                columns[key] = pa.array(structs, type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
            else:
                write_video(fix.video_file(ep, key), frames[key], fps, codec=codec)
        columns["observation.state"] = pa.FixedSizeListArray.from_arrays(pa.array(state.reshape(-1)), state_dim)
        columns["action"] = pa.array(list(action), type=pa.list_(pa.float32()))
        columns["timestamp"] = pa.array(timestamp, type=pa.float32())
        columns["frame_index"] = pa.array(np.arange(n), type=pa.int64())
        columns["episode_index"] = pa.array(np.full(n, ep), type=pa.int64())
        columns["index"] = pa.array(np.arange(global_index, global_index + n), type=pa.int64())
        columns["task_index"] = pa.array(np.full(n, task_index), type=pa.int64())
        global_index += n
        path = fix.data_file(ep)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(columns), path)

    features = {}
    for key in image_keys:
        if images == "video":
            info = {"video.fps": float(fps), "video.height": size, "video.width": size, "video.channels": 3,
                    "video.codec": "h264" if codec == "libx264" else codec, "video.pix_fmt": "yuv420p",
                    "video.is_depth_map": False, "has_audio": False}
            features[key] = _feature("video", [size, size, 3], ["height", "width", "channel"], info)
        else:
            features[key] = _feature("image", [size, size, 3], ["height", "width", "channel"])
    features["observation.state"] = _feature("float32", [state_dim], [f"s{i}" for i in range(state_dim)])
    features["action"] = _feature("float32", [action_dim], [f"a{i}" for i in range(action_dim)])
    for name, dtype in (("timestamp", "float32"), ("frame_index", "int64"), ("episode_index", "int64"),
                        ("index", "int64"), ("task_index", "int64")):
        features[name] = _feature(dtype, [1])
    info = {
        "codebase_version": "v2.1",
        "robot_type": "panda",
        "total_episodes": n_episodes,
        "total_frames": int(sum(lengths)),
        "total_tasks": len(TASKS),
        "total_videos": n_episodes * len(image_keys) if images == "video" else 0,
        "total_chunks": 1,
        "chunks_size": CHUNKS_SIZE,
        "fps": fps,
        "splits": {"train": f"0:{n_episodes}"},
        "data_path": DATA_PATH,
        "video_path": VIDEO_PATH if images == "video" else None,
        "features": features,
    }
    (root / "meta" / "info.json").write_text(json.dumps(info, indent=4))
    _write_jsonl(root / "meta" / "tasks.jsonl", [{"task_index": i, "task": t} for i, t in enumerate(TASKS)])
    _write_jsonl(root / "meta" / "episodes.jsonl",
                 [{"episode_index": e.index, "tasks": [TASKS[e.task_index]], "length": len(e)} for e in fix.episodes])
    return fix
