"""LeRobot datasets (v2.0, v2.1, v3.0) -> one HDF5 file per episode (RynnVLA-002 `data_lerobot` layout) + min/max stats.

Input, read with pyarrow + the ffmpeg of imageio-ffmpeg (no `lerobot`); path templates from meta/info.json:
  v2.0 / v2.1 (one file per episode):
    meta/info.json, meta/episodes.jsonl, meta/tasks.jsonl,
    data/chunk-XXX/episode_XXXXXX.parquet      (template `data_path`)
    videos/chunk-XXX/<key>/episode_XXXXXX.mp4  (template `video_path`; camera features of dtype "video")
  v3.0 (many episodes per file, as LeRobot >= 0.4 writes):
    meta/info.json, meta/tasks.parquet, meta/stats.json,
    meta/episodes/chunk-XXX/file-XXX.parquet   (one row per episode: length, data chunk/file index, and per camera
                                                the video chunk/file index and from/to timestamps)
    data/chunk-XXX/file-XXX.parquet            (rows of several episodes, column episode_index)
    videos/<key>/chunk-XXX/file-XXX.mp4        (several episodes back to back; an episode is the time slice
                                                [from_timestamp, to_timestamp) of its episodes row)
Camera features of dtype "image" are read from the parquet file itself (`struct<bytes, path>`, PNG/JPEG).
Video frames are matched to rows by timestamp (frame k of the episode is at from_timestamp + k / video fps;
from_timestamp is 0 for v2.x).

Output (official_format.md §10.4), `<out>/episode_XXXXXX.hdf5`:
    obs/front_image (T, H, W, 3) uint8, obs/wrist_image (T, H, W, 3) uint8,
    obs/state (T, S) float32, action (T, A) float32, timestamp (T,) float32,
    attrs: task_index, language_instruction, episode_index, fps, source keys.
Each file is written to a temporary name and renamed when complete; a rerun skips complete files.
`compute_min_max` / `write_stats` give the per-dimension min/max over all episode files as
`{"min": [...], "max": [...]}` JSON (NormStats), usable as `tokenizer.action_stats=<file>`.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
from PIL import Image
from tqdm import tqdm

from worldvla.config import parse_cli, parse_ids, save_config
from worldvla.data.lerobot_episodes import EPISODE_FILE, LeRobotError, episode_files
from worldvla.data.lerobot_export import export_lerobot_hdf5
from worldvla.errors import exit_on_input_errors
from worldvla.tokenizers.action import NormStats
from worldvla.tokenizers.image import resize_square
# pyarrow and imageio_ffmpeg (the lerobot extra) are imported by the functions that use them.

log = logging.getLogger("worldvla.data.lerobot")

INFO_JSON = "meta/info.json"
EPISODES_JSONL = "meta/episodes.jsonl"
TASKS_JSONL = "meta/tasks.jsonl"
TASKS_PARQUET = "meta/tasks.parquet"  # v3.0
EPISODES_DIR = "meta/episodes"  # v3.0: chunk-XXX/file-XXX.parquet
STATS_JSON = "meta/stats.json"  # v3.0 (v2.1 has per-episode meta/episodes_stats.jsonl)
DEFAULT_DATA_PATH_V3 = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
DEFAULT_VIDEO_PATH_V3 = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
SUPPORTED_VERSIONS = ("v2.0", "v2.1", "v3.0")
DEFAULT_DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
DEFAULT_VIDEO_PATH = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
DEFAULT_CHUNKS_SIZE = 1000
FORMAT_TAG = "worldvla-lerobot-hdf5/1"
STATS_FILES = {"action": "action_stats.json", "obs/state": "state_stats.json"}
IMAGE_DTYPES = ("video", "image")


# ----------------------------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VideoSlice:
    """v3.0: where one episode of one camera lies in a shared mp4 file."""

    chunk: int
    file: int
    from_s: float
    to_s: float


@dataclass(frozen=True)
class EpisodeMeta:
    index: int
    length: int | None  # from meta/episodes.jsonl / meta/episodes/*.parquet (None when v2.x has no episodes.jsonl)
    tasks: tuple[str, ...] = ()
    # v3.0 only: the data file holding the episode, its global row range [from_index, to_index), its video slices
    data_chunk: int | None = None
    data_file: int | None = None
    from_index: int | None = None
    to_index: int | None = None
    videos: dict[str, VideoSlice] = field(default_factory=dict, compare=False)


@dataclass
class Episode:
    """One episode in memory, rows sorted by frame index."""

    index: int
    task_index: int
    task: str
    images: dict[str, np.ndarray]  # key -> (T, H, W, 3) uint8
    state: np.ndarray | None  # (T, S) float32
    action: np.ndarray | None  # (T, A) float32
    timestamp: np.ndarray  # (T,) float32
    frame_index: np.ndarray  # (T,) int64

    def __len__(self) -> int:
        return len(self.timestamp)


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise LeRobotError(f"{path}:{n}: invalid JSON line ({err})") from None
    return rows


def _format_columns(names: Iterable[str]) -> str:
    return ", ".join(sorted(names)) or "(none)"


class LeRobotDataset:
    """Read-only view of a local LeRobot dataset folder: v2.x (per-episode parquet / mp4) or v3.0 (shared files)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        info_path = self.root / INFO_JSON
        if not info_path.is_file():
            raise LeRobotError(f"{info_path} not found: {self.root} is not a LeRobot dataset folder")
        try:
            self.info: dict = json.loads(info_path.read_text())
        except json.JSONDecodeError as err:
            raise LeRobotError(f"{info_path}: invalid JSON ({err})") from None
        self.version = str(self.info.get("codebase_version", ""))
        self.v3 = self.version.startswith("v3") or "{file_index" in str(self.info.get("data_path", ""))
        if self.version and self.version not in SUPPORTED_VERSIONS:
            raise LeRobotError(f"{info_path}: codebase_version {self.version} is not supported; "
                               f"this importer reads LeRobot {', '.join(SUPPORTED_VERSIONS)}")
        if not self.version:
            log.warning("%s has no codebase_version; reading it as LeRobot %s", info_path, "v3.0" if self.v3 else "v2.x")
        self.features: dict[str, dict] = self.info.get("features") or {}
        self.fps = float(self.info.get("fps") or 0) or None
        self.chunks_size = int(self.info.get("chunks_size") or DEFAULT_CHUNKS_SIZE)
        default_data, default_video = ((DEFAULT_DATA_PATH_V3, DEFAULT_VIDEO_PATH_V3) if self.v3
                                       else (DEFAULT_DATA_PATH, DEFAULT_VIDEO_PATH))
        self.data_path = self.info.get("data_path") or default_data
        self.video_path = self.info.get("video_path") or default_video
        self.tasks = self._read_tasks_v3() if self.v3 else self._read_tasks()
        self.episodes = self._read_episodes_v3() if self.v3 else self._read_episodes()
        self._table_cache: tuple[Path, object] | None = None  # v3.0: the last data file read (episodes share it)

    @property
    def stats(self) -> dict[str, dict]:
        """LeRobot's own dataset statistics (v3.0 meta/stats.json: per feature min/max/mean/std/count/q..)."""
        path = self.root / STATS_JSON
        if not path.is_file():
            return {}
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise LeRobotError(f"{path}: invalid JSON ({err})") from None

    # -- meta ---------------------------------------------------------------------------------
    def _read_tasks(self) -> dict[int, str]:
        path = self.root / TASKS_JSONL
        if not path.is_file():
            return {}
        out = {}
        for row in _read_jsonl(path):
            if "task_index" not in row or "task" not in row:
                raise LeRobotError(f"{path}: every line needs 'task_index' and 'task', got keys {sorted(row)}")
            out[int(row["task_index"])] = str(row["task"])
        return out

    def _read_episodes(self) -> dict[int, EpisodeMeta]:
        path = self.root / EPISODES_JSONL
        if path.is_file():
            out = {}
            for row in _read_jsonl(path):
                if "episode_index" not in row:
                    raise LeRobotError(f"{path}: a line has no 'episode_index' (keys {sorted(row)})")
                idx = int(row["episode_index"])
                length = row.get("length")
                out[idx] = EpisodeMeta(idx, None if length is None else int(length), tuple(row.get("tasks") or ()))
            return dict(sorted(out.items()))
        # no episodes.jsonl: list the parquet files
        found = {}
        for p in self.root.glob("data/**/*.parquet"):
            m = re.search(r"episode_(\d+)\.parquet$", p.name)
            if m:
                found[int(m.group(1))] = EpisodeMeta(int(m.group(1)), None)
        if not found:
            raise LeRobotError(f"{path} not found and no data/**/episode_*.parquet files under {self.root}")
        log.warning("%s not found; using the %d episode parquet files found", path, len(found))
        return dict(sorted(found.items()))

    def _read_tasks_v3(self) -> dict[int, str]:
        path = self.root / TASKS_PARQUET
        if not path.is_file():
            log.warning("%s not found; task names come from the episodes' 'tasks' column", path)
            return {}
        table = _read_parquet(path)
        # LeRobot writes it from pandas with the task string as the index; pyarrow gives it back as a column
        missing = [c for c in ("task_index", "task") if c not in table.column_names]
        if missing:
            raise LeRobotError(f"{path}: missing column(s) {missing}; available columns: "
                               f"{_format_columns(table.column_names)}")
        index = _numeric_column(table, "task_index", path).reshape(-1)
        return {int(i): str(t) for i, t in zip(index, table.column("task").to_pylist())}

    def _read_episodes_v3(self) -> dict[int, EpisodeMeta]:
        folder = self.root / EPISODES_DIR
        files = sorted(folder.glob("chunk-*/file-*.parquet"))
        if not files:
            raise LeRobotError(f"{folder}: no chunk-XXX/file-XXX.parquet episode files (LeRobot v3.0 keeps the "
                               "per-episode rows there)")
        video_keys = [k for k in self.image_keys if self._feature_dtype(k) == "video"]
        out: dict[int, EpisodeMeta] = {}
        for path in files:
            table = _read_parquet(path)
            need = ["episode_index", "length", "data/chunk_index", "data/file_index"]
            for key in video_keys:
                need += [f"videos/{key}/{c}" for c in ("chunk_index", "file_index", "from_timestamp", "to_timestamp")]
            missing = [c for c in need if c not in table.column_names]
            if missing:
                raise LeRobotError(f"{path}: missing column(s) {missing}; available columns: "
                                   f"{_format_columns(c for c in table.column_names if not c.startswith('stats/'))}")
            cols = {c: _numeric_column(table, c, path).reshape(-1) for c in need}
            has_range = "dataset_from_index" in table.column_names and "dataset_to_index" in table.column_names
            if has_range:
                lo = _numeric_column(table, "dataset_from_index", path).reshape(-1)
                hi = _numeric_column(table, "dataset_to_index", path).reshape(-1)
            tasks = table.column("tasks").to_pylist() if "tasks" in table.column_names else [None] * table.num_rows
            for r in range(table.num_rows):
                idx = int(cols["episode_index"][r])
                if idx in out:
                    raise LeRobotError(f"{path}: episode {idx} is listed twice in {folder}")
                videos = {k: VideoSlice(int(cols[f"videos/{k}/chunk_index"][r]), int(cols[f"videos/{k}/file_index"][r]),
                                        float(cols[f"videos/{k}/from_timestamp"][r]),
                                        float(cols[f"videos/{k}/to_timestamp"][r])) for k in video_keys}
                out[idx] = EpisodeMeta(idx, int(cols["length"][r]), tuple(tasks[r] or ()),
                                       int(cols["data/chunk_index"][r]), int(cols["data/file_index"][r]),
                                       int(lo[r]) if has_range else None, int(hi[r]) if has_range else None, videos)
        return dict(sorted(out.items()))

    @property
    def episode_indices(self) -> list[int]:
        return list(self.episodes)

    @property
    def image_keys(self) -> list[str]:
        return [k for k, f in self.features.items() if isinstance(f, dict) and f.get("dtype") in IMAGE_DTYPES]

    def data_file(self, episode: int) -> Path:
        if self.v3:
            meta = self.episodes[episode]
            return self.root / self.data_path.format(chunk_index=meta.data_chunk, file_index=meta.data_file)
        return self.root / self.data_path.format(episode_chunk=episode // self.chunks_size, episode_index=episode)

    def video_file(self, episode: int, key: str) -> Path:
        if self.v3:
            sl = self._video_slice(episode, key)
            return self.root / self.video_path.format(video_key=key, chunk_index=sl.chunk, file_index=sl.file)
        return self.root / self.video_path.format(
            episode_chunk=episode // self.chunks_size, episode_index=episode, video_key=key)

    def _video_slice(self, episode: int, key: str) -> VideoSlice:
        sl = self.episodes[episode].videos.get(key)
        if sl is None:
            raise LeRobotError(f"{self.root / EPISODES_DIR}: episode {episode} has no video slice for camera {key!r} "
                               f"(video features: {_format_columns(self.episodes[episode].videos)})")
        return sl

    def describe_range(self) -> str:
        idx = self.episode_indices
        if not idx:
            return "no episodes"
        contiguous = idx == list(range(idx[0], idx[-1] + 1))
        span = f"{idx[0]}-{idx[-1]}" if contiguous else _format_episode_list(idx)
        return f"{span}, {len(idx)} episodes"

    # -- data ---------------------------------------------------------------------------------
    def read_table(self, episode: int):
        """The parquet rows of one episode (v3.0: its rows out of the shared data file)."""
        import pyarrow.compute as pc

        path = self.data_file(episode)
        if not path.is_file():
            raise LeRobotError(f"episode {episode}: data file {path} not found")
        if not self.v3:
            return _read_parquet(path, f"episode {episode}: ")
        if self._table_cache is None or self._table_cache[0] != path:
            self._table_cache = (path, _read_parquet(path, f"episode {episode}: "))
        table = self._table_cache[1]
        if "episode_index" not in table.column_names:
            raise LeRobotError(f"{path}: no 'episode_index' column; a v3.0 data file holds several episodes and "
                               f"needs it (columns: {_format_columns(table.column_names)})")
        rows = table.filter(pc.equal(table.column("episode_index"), episode))
        meta = self.episodes[episode]
        if meta.from_index is not None and "index" in rows.column_names and rows.num_rows:
            index = _numeric_column(rows, "index", path).reshape(-1)
            if index.min() != meta.from_index or index.max() != meta.to_index - 1:
                raise LeRobotError(
                    f"{path}: episode {episode} has rows with index {int(index.min())}..{int(index.max())}, "
                    f"{EPISODES_DIR} gives dataset_from_index {meta.from_index} / dataset_to_index {meta.to_index}")
        return rows

    def read_episode(self, episode: int, image_keys: Sequence[str], state_key: str | None = "observation.state",
                     action_key: str | None = "action", tolerance_s: float = 1e-4,
                     strict_frame_count: bool = True) -> Episode:
        """Load one episode: the given cameras (HWC uint8), state and action (float32), timestamps."""
        if episode not in self.episodes:
            raise LeRobotError(f"episode {episode} is not in {self.root} (episodes {self.describe_range()})")
        table = self.read_table(episode)
        path = self.data_file(episode)
        columns = set(table.column_names)
        wanted = [k for k in (state_key, action_key) if k]
        missing = [k for k in wanted if k not in columns]
        missing += [k for k in image_keys if k not in columns and self._feature_dtype(k) != "video"]
        if missing:
            video_keys = [k for k in self.image_keys if self._feature_dtype(k) == "video"]
            raise LeRobotError(
                f"{path}: missing column(s) {missing}; available columns: {_format_columns(columns)}"
                + (f"; video features: {_format_columns(video_keys)}" if video_keys else "")
                + f"; camera features in {INFO_JSON}: {_format_columns(self.image_keys)}")
        n = table.num_rows
        if n == 0:
            raise LeRobotError(f"{path}: episode {episode} has no rows")
        expected = self.episodes[episode].length
        if expected is not None and expected != n:
            raise LeRobotError(f"{path}: {n} rows but {EPISODES_DIR if self.v3 else EPISODES_JSONL} gives length "
                               f"{expected} for episode {episode}")
        if "episode_index" in columns:
            ep_col = _numeric_column(table, "episode_index", path)
            if not np.all(ep_col == episode):
                bad = sorted(set(ep_col.reshape(-1).tolist()) - {episode})
                raise LeRobotError(f"{path}: column episode_index holds {bad}, expected only {episode}")
        frame_index = (_numeric_column(table, "frame_index", path).reshape(-1).astype(np.int64)
                       if "frame_index" in columns else np.arange(n, dtype=np.int64))
        order = np.argsort(frame_index, kind="stable")
        frame_index = frame_index[order]
        if "timestamp" in columns:
            timestamp = _numeric_column(table, "timestamp", path).reshape(-1).astype(np.float32)[order]
        elif self.fps:
            timestamp = (frame_index / self.fps).astype(np.float32)
        else:
            raise LeRobotError(f"{path}: no 'timestamp' column and no fps in {INFO_JSON}")

        def vector(key):
            if not key:
                return None
            arr = _numeric_column(table, key, path)
            return arr.reshape(n, -1).astype(np.float32)[order]

        images = {}
        for key in image_keys:
            if key in columns:
                images[key] = _inline_images(table, key, path, self.root)[order]
            else:
                images[key] = self._video_images(episode, key, timestamp, tolerance_s, strict_frame_count, path)

        task_index = int(_numeric_column(table, "task_index", path).reshape(-1)[order][0]) if "task_index" in columns else -1
        task = self.tasks.get(task_index)
        if task is None:
            task = self.episodes[episode].tasks[0] if self.episodes[episode].tasks else ""
        return Episode(episode, task_index, task, images, vector(state_key), vector(action_key), timestamp, frame_index)

    def _feature_dtype(self, key: str) -> str | None:
        f = self.features.get(key)
        return f.get("dtype") if isinstance(f, dict) else None

    def _video_images(self, episode: int, key: str, timestamp: np.ndarray, tolerance_s: float,
                      strict_frame_count: bool, data_path: Path) -> np.ndarray:
        path = self.video_file(episode, key)
        if not path.is_file():
            raise LeRobotError(f"episode {episode}: video {path} for camera {key!r} not found")
        feat = self.features[key]
        vinfo = feat.get("info") or feat.get("video_info") or {}
        codec = vinfo.get("video.codec")
        # exact rate from the metadata first (ffmpeg reports a rounded one, e.g. 29.97)
        fps = float(vinfo.get("video.fps") or 0) or self.fps
        if self.v3:
            sl = self._video_slice(episode, key)
            if not fps:
                raise LeRobotError(f"{path}: unknown frame rate (no video.fps / fps in {INFO_JSON})")
            n_slice = round((sl.to_s - sl.from_s) * fps)
            if strict_frame_count and n_slice != len(timestamp):
                raise LeRobotError(
                    f"frame-count mismatch for episode {episode}, camera {key!r}: its slice "
                    f"{sl.from_s:g}..{sl.to_s:g} s of {path} holds {n_slice} frames, {data_path} has "
                    f"{len(timestamp)} rows")
            frames, video_fps = decode_video(path, start_s=sl.from_s, n_frames=n_slice, fps=fps, codec=codec)
            if len(frames) < n_slice:
                raise LeRobotError(
                    f"frame-count mismatch for episode {episode}, camera {key!r}: {path} ends {len(frames)} frames "
                    f"after {sl.from_s:g} s, the slice {sl.from_s:g}..{sl.to_s:g} s needs {n_slice}")
        else:
            frames, video_fps = decode_video(path, codec=codec)
            fps = fps or video_fps
        if not fps:
            raise LeRobotError(f"{path}: unknown frame rate (no fps in the video or in {INFO_JSON})")
        if video_fps and abs(video_fps - fps) > 0.01 * fps:
            log.warning("%s: ffmpeg reports %g fps, %s gives %g; frames are matched at %g fps",
                        path, video_fps, INFO_JSON, fps, fps)
        n_rows, n_video = len(timestamp), len(frames)
        if strict_frame_count and n_video != n_rows and not self.v3:
            raise LeRobotError(
                f"frame-count mismatch for episode {episode}, camera {key!r}: video {path} has {n_video} frames, "
                f"{data_path} has {n_rows} rows (strict_frame_count=false accepts longer videos)")
        ts = timestamp.astype(np.float64)
        idx = np.rint(ts * fps).astype(np.int64)
        off_grid = np.abs(idx / fps - ts) > tolerance_s
        if off_grid.any():
            i = int(np.argmax(off_grid))
            raise LeRobotError(
                f"{data_path}: timestamp {ts[i]:.6f} of row {i} is more than tolerance_s={tolerance_s} away from "
                f"any frame of {path} ({fps:g} fps)")
        if idx.min() < 0 or idx.max() >= n_video:
            raise LeRobotError(
                f"frame-count mismatch for episode {episode}, camera {key!r}: timestamps reach frame {int(idx.max())} "
                f"but video {path} has {n_video} frames ({data_path} has {n_rows} rows)")
        return frames[idx]


def _numeric_column(table, key: str, path: Path) -> np.ndarray:
    """A scalar column -> (T,), a list / fixed-size-list column -> (T, D); nulls and ragged rows are errors."""
    import pyarrow as pa
    import pyarrow.compute as pc

    col = table.column(key).combine_chunks()
    if col.null_count:
        raise LeRobotError(f"{path}: column {key!r} has {col.null_count} missing values")
    typ = col.type
    if pa.types.is_list(typ) or pa.types.is_large_list(typ) or pa.types.is_fixed_size_list(typ):
        if pa.types.is_nested(typ.value_type):
            raise LeRobotError(f"{path}: column {key!r} is a nested list ({typ}); expected a list of numbers")
        lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
        if len(lengths) and lengths.min() != lengths.max():
            raise LeRobotError(f"{path}: column {key!r} has rows of different lengths "
                               f"({int(lengths.min())}..{int(lengths.max())})")
        flat = col.flatten()
        if flat.null_count:
            raise LeRobotError(f"{path}: column {key!r} has {flat.null_count} missing entries")
        return flat.to_numpy(zero_copy_only=False).reshape(len(col), -1)
    if pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_boolean(typ):
        return col.to_numpy(zero_copy_only=False)
    raise LeRobotError(f"{path}: column {key!r} has type {typ}; expected numbers or a list of numbers")


def _decode_image_bytes(data: bytes, where: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise LeRobotError(f"{where}: cannot decode the stored image ({err})") from None


def _inline_images(table, key: str, path: Path, root: Path) -> np.ndarray:
    """Images stored in the parquet file (datasets Image feature: struct<bytes, path>) -> (T, H, W, 3)."""
    import pyarrow as pa

    col = table.column(key).combine_chunks()
    if not pa.types.is_struct(col.type) or col.type.get_field_index("bytes") < 0:
        raise LeRobotError(f"{path}: column {key!r} has type {col.type}; expected an image struct<bytes, path> "
                           "(or a video feature in meta/info.json)")
    has_path = col.type.get_field_index("path") >= 0
    blobs = col.field("bytes").to_pylist()
    paths = col.field("path").to_pylist() if has_path else [None] * len(blobs)
    out = []
    for i, (blob, rel) in enumerate(zip(blobs, paths)):
        where = f"{path} row {i} column {key!r}"
        if blob is None:
            file = Path(rel) if rel else None
            if file is not None and not file.is_absolute():
                file = root / file
            if file is None or not file.is_file():
                raise LeRobotError(f"{where}: no image bytes and image path {rel!r} not found")
            blob = file.read_bytes()
        out.append(_decode_image_bytes(blob, where))
    shapes = {im.shape for im in out}
    if len(shapes) > 1:
        raise LeRobotError(f"{path}: column {key!r} holds images of different sizes {sorted(shapes)}")
    return np.stack(out)


def _read_parquet(path: Path, prefix: str = ""):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path)
    except (OSError, ValueError, pa.ArrowException) as err:
        raise LeRobotError(f"{prefix}cannot read {path} ({err})") from None


def _ffmpeg_decoders(exe: str) -> str:
    try:
        return subprocess.run([exe, "-hide_banner", "-decoders"], capture_output=True, text=True, timeout=30,
                              check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def decode_video(path: str | Path, start_s: float = 0.0, n_frames: int | None = None, fps: float | None = None,
                 codec: str | None = None) -> tuple[np.ndarray, float | None]:
    """Frames of a video file as (N, H, W, 3) uint8 RGB, in decoding order, and its frame rate.

    All frames by default; with `start_s` (and `fps`) the frames from the one at `start_s` on, at most
    `n_frames` of them (a v3.0 episode slice). Uses the ffmpeg binary of imageio-ffmpeg (h264, hevc, vp9 and
    AV1 via libdav1d), frames passed through without frame-rate conversion. `codec` (from meta/info.json)
    only makes the error clearer when this ffmpeg cannot decode the file.
    """
    import imageio_ffmpeg

    path = Path(path)
    input_params = []
    if start_s > 0:
        if not fps:
            raise LeRobotError(f"{path}: decoding from {start_s} s needs the frame rate")
        # seek half a frame early: ffmpeg keeps the frames at or after the seek point (accurate seek),
        # so the first frame returned is the one at start_s even when its stored time is rounded down
        input_params = ["-ss", f"{max(0.0, start_s - 0.5 / fps):.6f}"]
    output_params = ["-fps_mode", "passthrough"]
    if n_frames is not None:
        output_params += ["-frames:v", str(int(n_frames))]
    try:
        gen = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24", input_params=input_params,
                                         output_params=output_params)
        meta = next(gen)
        w, h = meta["size"]
        frames = [np.frombuffer(buf, dtype=np.uint8).reshape(h, w, 3) for buf in gen]
    except (OSError, RuntimeError, StopIteration) as err:
        exe = imageio_ffmpeg.get_ffmpeg_exe()
        if codec and f"(codec {codec})" not in _ffmpeg_decoders(exe):
            raise LeRobotError(
                f"{path}: the ffmpeg at {exe} has no {codec} decoder; install a build that has one, e.g. "
                "`pip install -U imageio-ffmpeg` (from 0.8 its bundled ffmpeg decodes AV1 with libdav1d; installed by "
                "`pip install -e .[lerobot]`), or point IMAGEIO_FFMPEG_EXE at an ffmpeg with libdav1d") from None
        raise LeRobotError(f"{path}: cannot decode video ({err})") from None
    if not frames:
        raise LeRobotError(f"{path}: video has no frames" + (f" after {start_s} s" if start_s else ""))
    fps_read = meta.get("fps")
    return np.stack(frames), (float(fps_read) if fps_read else None)


# ----------------------------------------------------------------------------------------------
# episode selection
# ----------------------------------------------------------------------------------------------


def _format_episode_list(idx: Sequence[int]) -> str:
    parts, start, prev = [], None, None
    for i in sorted(idx):
        if start is None:
            start = prev = i
        elif i == prev + 1:
            prev = i
        else:
            parts.append(f"{start}-{prev}" if prev != start else str(start))
            start = prev = i
    if start is not None:
        parts.append(f"{start}-{prev}" if prev != start else str(start))
    return ",".join(parts)


def parse_episode_spec(spec: str) -> list[int] | None:
    """`"0-9"` (inclusive), `"3"`, `"0-4,7,9-12"` -> sorted unique indices (worldvla.config.parse_ids);
    `""` / `"all"` -> None (all)."""
    spec = str(spec).strip()
    if spec in ("", "all"):
        return None
    try:
        return sorted(set(parse_ids(spec)))
    except ValueError as err:
        raise LeRobotError(f"episodes={spec!r}: {err}") from None


def select_episodes(ds: LeRobotDataset, spec: str = "", start: int | None = None, end: int | None = None) -> list[int]:
    """Episode indices to convert: `spec` or the official inclusive `start`..`end`; all by default."""
    if (start is not None or end is not None) and str(spec).strip() not in ("", "all"):
        raise LeRobotError("give either episodes=... or episode_start_idx/episode_end_idx, not both")
    available = ds.episode_indices
    if not available:
        raise LeRobotError(f"{ds.root}: the dataset has no episodes")
    if start is not None or end is not None:
        lo = available[0] if start is None else start
        hi = available[-1] if end is None else end
        if hi < lo:
            raise LeRobotError(f"episode range {lo}..{hi} ends before it starts")
        wanted = list(range(lo, hi + 1))
        label = f"episode_start_idx={start}, episode_end_idx={end}"
    else:
        parsed = parse_episode_spec(spec)
        wanted = available if parsed is None else parsed
        label = f"episodes={spec!r}"
    missing = sorted(set(wanted) - set(available))
    if missing:
        raise LeRobotError(f"{label}: episode(s) {_format_episode_list(missing)} not in {ds.root} "
                           f"(available: {ds.describe_range()})")
    return wanted


# ----------------------------------------------------------------------------------------------
# conversion
# ----------------------------------------------------------------------------------------------


@dataclass
class LeRobotImportConfig:
    input: Path | None = None  # LeRobot dataset folder (has meta/info.json); alias --lerobot_input_dir
    out: Path | None = None  # output folder for episode_XXXXXX.hdf5; alias --hdf5_output_dir
    episodes: str = ""  # "0-9" (inclusive), "3", "0-4,7"; empty = all
    episode_start_idx: int | None = None  # official flag: first episode (inclusive)
    episode_end_idx: int | None = None  # official flag: last episode (inclusive)
    front_key: str = "observation.images.front"  # LIBERO datasets: observation.images.image
    wrist_key: str = "observation.images.wrist"  # LIBERO datasets: observation.images.wrist_image; "" = none
    state_key: str = "observation.state"  # "" = no obs/state
    action_key: str = "action"
    compression: str = "gzip"  # image datasets: gzip | lzf | none
    overwrite: bool = False  # redo episodes whose HDF5 already exists
    stats: bool = True  # write action_stats.json / state_stats.json over all episode files in `out`
    tolerance_s: float = 1e-4  # allowed distance between a row timestamp and its video frame
    strict_frame_count: bool = True  # video frame count must equal the parquet row count
    export_dir: Path | None = None  # also write the per-frame folders data/conversations.py reads (lerobot_export.py)
    export_layout: str = "both"  # worldvla (imgs) | rynnvla (third view + wrist + state) | both
    rotate180: bool = False  # rotate exported frames 180 degrees (raw LIBERO renders; LeRobot LIBERO data is rotated)
    resize: int = 0  # 0 = frames as stored; N = both cameras resized to N x N px (PIL bicubic, RynnVLA-002's
    # LeRobot path), for a model at N px when the dataset's frames are another size (e.g. 96 x 128)


@dataclass
class ImportResult:
    out: Path
    written: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    stats: dict[str, Path] = field(default_factory=dict)
    exported: dict[str, list[Path]] = field(default_factory=dict)  # task folder -> trajectory folders (export_dir)


def episode_path(out_dir: str | Path, episode: int) -> Path:
    return Path(out_dir) / EPISODE_FILE.format(episode)


def _source_keys(cfg: LeRobotImportConfig) -> dict[str, str]:
    return {"front": cfg.front_key, "wrist": cfg.wrist_key, "state": cfg.state_key, "action": cfg.action_key}


def _required_datasets(cfg: LeRobotImportConfig) -> list[str]:
    names = ["obs/front_image", "timestamp"]
    if cfg.wrist_key:
        names.append("obs/wrist_image")
    if cfg.state_key:
        names.append("obs/state")
    if cfg.action_key:
        names.append("action")
    return names


def existing_status(path: Path, cfg: LeRobotImportConfig, length: int | None) -> str:
    """"missing", "complete", or a reason why the file must be written again."""
    if not path.exists():
        return "missing"
    try:
        with h5py.File(path, "r") as f:
            names = _required_datasets(cfg)
            absent = [n for n in names if n not in f]
            if absent:
                return f"lacks {absent}"
            lengths = {n: f[n].shape[0] for n in names}
            if len(set(lengths.values())) != 1:
                return f"has datasets of different lengths {lengths}"
            if length is not None and lengths["timestamp"] != length:
                return f"has {lengths['timestamp']} frames, the episode has {length}"
            keys = f.attrs.get("source_keys")
            side = tuple(f["obs/front_image"].shape[1:3])
            if cfg.resize and side != (cfg.resize, cfg.resize):
                return f"has {side[0]}x{side[1]} px frames, resize={cfg.resize} asks for {cfg.resize}x{cfg.resize}"
    except OSError as err:
        return f"cannot be opened ({err})"
    if keys is not None and json.loads(keys) != _source_keys(cfg):
        raise LeRobotError(f"{path} was written from other columns {json.loads(keys)} than asked "
                           f"{_source_keys(cfg)}; use another out folder or overwrite=true")
    return "complete"


def write_episode_hdf5(path: str | Path, ep: Episode, cfg: LeRobotImportConfig, fps: float | None) -> Path:
    """Write one episode in the official layout (tmp file + rename)."""
    path = Path(path)
    comp = None if cfg.compression in ("", "none", "None") else cfg.compression
    if comp not in (None, "gzip", "lzf"):
        raise LeRobotError(f"compression={cfg.compression!r}: use gzip, lzf or none")
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        with h5py.File(tmp, "w") as f:
            obs = f.create_group("obs")
            for name, key in (("front_image", cfg.front_key), ("wrist_image", cfg.wrist_key)):
                if not key:
                    continue
                img = ep.images[key]
                obs.create_dataset(name, data=img, dtype=np.uint8, chunks=(1, *img.shape[1:]), compression=comp,
                                   compression_opts=4 if comp == "gzip" else None)
            if ep.state is not None:
                obs.create_dataset("state", data=ep.state.astype(np.float32))
            if ep.action is not None:
                f.create_dataset("action", data=ep.action.astype(np.float32))
            f.create_dataset("timestamp", data=ep.timestamp.astype(np.float32))
            f.attrs["task_index"] = ep.task_index
            f.attrs["language_instruction"] = ep.task
            f.attrs["episode_index"] = ep.index
            f.attrs["fps"] = float(fps or 0.0)
            f.attrs["source_keys"] = json.dumps(_source_keys(cfg))
            f.attrs["format"] = FORMAT_TAG
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def resize_frames(frames: np.ndarray, size: int) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (T, size, size, 3), every frame as the tokenizer's `resize_square`."""
    return np.stack([resize_square(f, size) for f in frames]) if len(frames) else frames.reshape(0, size, size, 3)


def _check_shapes(ep: Episode, where: str) -> None:
    for key, img in ep.images.items():
        if img.ndim != 4 or img.shape[-1] != 3:
            raise LeRobotError(f"{where}: camera {key!r} decoded to shape {img.shape}, expected (T, H, W, 3)")
        if len(img) != len(ep):
            raise LeRobotError(f"{where}: camera {key!r} has {len(img)} frames for {len(ep)} rows")


def convert(cfg: LeRobotImportConfig) -> ImportResult:
    """Convert the selected episodes; skip complete ones; then write the min/max stats (cfg.stats)."""
    if cfg.input is None or cfg.out is None:
        raise LeRobotError("both input=<LeRobot dataset folder> and out=<HDF5 folder> are required")
    if not cfg.front_key:
        raise LeRobotError("front_key is required (the camera written to obs/front_image)")
    if cfg.resize < 0 or cfg.resize % 32:
        raise LeRobotError(f"resize={cfg.resize}: use 0 (frames as stored) or the model resolution, a multiple "
                           "of 32 (256, 512)")
    ds = LeRobotDataset(cfg.input)
    episodes = select_episodes(ds, cfg.episodes, cfg.episode_start_idx, cfg.episode_end_idx)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    result = ImportResult(out)
    cams = [k for k in (cfg.front_key, cfg.wrist_key) if k]
    log.info("converting %d episode(s) of %s (%s, cameras %s) -> %s", len(episodes), ds.root,
             ds.version or "v2.x", cams, out)
    bar = tqdm(episodes, desc="lerobot->hdf5", unit="ep", dynamic_ncols=True)
    for idx in bar:
        path = episode_path(out, idx)
        if not cfg.overwrite:
            status = existing_status(path, cfg, ds.episodes[idx].length)
            if status == "complete":
                result.skipped.append(idx)
                continue
            if status != "missing":
                log.warning("%s %s; writing it again", path, status)
        for stale in out.glob(f"{path.name}.tmp*"):  # left by a killed run
            stale.unlink(missing_ok=True)
        ep = ds.read_episode(idx, cams, cfg.state_key or None, cfg.action_key or None,
                             tolerance_s=cfg.tolerance_s, strict_frame_count=cfg.strict_frame_count)
        _check_shapes(ep, str(ds.data_file(idx)))
        if cfg.resize:
            ep.images = {key: resize_frames(img, cfg.resize) for key, img in ep.images.items()}
        write_episode_hdf5(path, ep, cfg, ds.fps)
        result.written.append(idx)
        bar.set_postfix(written=len(result.written), skipped=len(result.skipped))
    bar.close()
    log.info("wrote %d episode file(s), skipped %d complete one(s) in %s", len(result.written),
             len(result.skipped), out)
    if cfg.stats:
        result.stats = write_stats(out)
    if cfg.export_dir is not None:
        result.exported = export_lerobot_hdf5(out, cfg.export_dir, cfg.export_layout, cfg.rotate180, cfg.overwrite)
    return result


# ----------------------------------------------------------------------------------------------
# normalisation statistics
# ----------------------------------------------------------------------------------------------


def compute_min_max(files: Iterable[str | Path], key: str = "action"):
    """Per-dimension min/max of dataset `key` ("action", "obs/state") over all frames of all files -> NormStats."""
    files = list(files)
    lo = hi = None
    for file in files:
        with h5py.File(file, "r") as f:
            if key not in f:
                raise LeRobotError(f"{file}: no dataset {key!r}")
            arr = np.asarray(f[key][()], dtype=np.float64)
        if arr.ndim != 2 or len(arr) == 0:
            raise LeRobotError(f"{file}: dataset {key!r} has shape {arr.shape}, expected (T, D) with T > 0")
        if not np.isfinite(arr).all():
            raise LeRobotError(f"{file}: dataset {key!r} has non-finite values")
        if lo is not None and arr.shape[1] != len(lo):
            raise LeRobotError(f"{file}: dataset {key!r} has {arr.shape[1]} dims, earlier files have {len(lo)}")
        a_lo, a_hi = arr.min(0), arr.max(0)
        lo = a_lo if lo is None else np.minimum(lo, a_lo)
        hi = a_hi if hi is None else np.maximum(hi, a_hi)
    if lo is None:
        raise LeRobotError(f"no episode files to compute {key!r} statistics from")
    try:
        return NormStats(tuple(lo.tolist()), tuple(hi.tolist()))
    except ValueError as err:  # a dimension constant over every frame cannot be normalised
        raise LeRobotError(f"{Path(files[0]).parent}: dataset {key!r} over {len(files)} episode file(s): {err}; "
                           "leave that column out, or pass stats=false and write a statistics file with a range "
                           "for it") from None


def write_stats(hdf5_dir: str | Path, out_dir: str | Path | None = None,
                keys: dict[str, str] | None = None) -> dict[str, Path]:
    """Write `{"min": [...], "max": [...]}` JSON files (NormStats format) for actions and states.

    Keys missing from the episode files (e.g. converted with state_key="") are skipped with a log line.
    """
    files = episode_files(hdf5_dir)
    if not files:
        raise LeRobotError(f"no episode_*.hdf5 files in {hdf5_dir}")
    out_dir = Path(out_dir or hdf5_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for key, name in (keys or STATS_FILES).items():
        with h5py.File(files[0], "r") as f:
            present = key in f
        if not present:
            log.info("no %r in %s; no %s written", key, files[0], name)
            continue
        stats = compute_min_max(files, key)
        path = out_dir / name
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
        stats.to_json(tmp)
        tmp.replace(path)
        written[key] = path
        log.info("%s min/max over %d episode files (%d dims) -> %s", key, len(files), stats.dim, path)
    return written


# ----------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------

_ALIASES = {"lerobot_input_dir": "input", "hdf5_output_dir": "out", "input_dir": "input", "output_dir": "out"}


def _normalise_argv(argv: Sequence[str]) -> list[str]:
    """`--front-key x` -> `--front_key x`; official flag names -> ours. Values are left alone."""
    out, expect_value = [], False
    for tok in argv:
        if expect_value:
            out.append(tok)
            expect_value = False
            continue
        if tok.startswith("-") and tok not in ("-h", "--help") or ("=" in tok and not tok.startswith("-")):
            dashes = len(tok) - len(tok.lstrip("-"))
            key, sep, value = tok[dashes:].partition("=")
            key = key.replace("-", "_")
            key = _ALIASES.get(key, key)
            tok = "-" * dashes + key + sep + value
            expect_value = dashes > 0 and not sep and key != "config"
            if key == "config" and not sep:
                expect_value = True
        out.append(tok)
    return out


def main(argv: Sequence[str] | None = None) -> ImportResult:
    """LeRobot v2.x / v3.0 dataset -> one HDF5 per episode (obs/front_image, obs/wrist_image, obs/state, action, timestamp)."""
    argv = _normalise_argv(sys.argv[1:] if argv is None else argv)
    cfg = parse_cli(LeRobotImportConfig, argv, description=__doc__)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [%(name)s] %(message)s", datefmt="%H:%M:%S")
    result = exit_on_input_errors(convert, LeRobotError)(cfg)
    cfg_path = Path(cfg.out) / "lerobot_to_hdf5_config.yaml"
    tmp = cfg_path.with_name(f"{cfg_path.name}.tmp{os.getpid()}")
    save_config(cfg, tmp)
    tmp.replace(cfg_path)
    log.info("config -> %s", cfg_path)
    return result


if __name__ == "__main__":  # `python -m worldvla.data.lerobot`; errors exit with one `error:` line
    main()
