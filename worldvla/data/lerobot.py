"""LeRobot v2.x datasets -> one HDF5 file per episode (RynnVLA-002 `data_lerobot` layout) + min/max stats.

Input (LeRobot codebase v2.0 / v2.1, read with pyarrow + the ffmpeg of imageio-ffmpeg, no `lerobot`):
    meta/info.json, meta/episodes.jsonl, meta/tasks.jsonl,
    data/chunk-XXX/episode_XXXXXX.parquet      (path template `data_path` of info.json)
    videos/chunk-XXX/<key>/episode_XXXXXX.mp4  (template `video_path`; camera features of dtype "video")
Camera features of dtype "image" are read from the parquet file itself (`struct<bytes, path>`, PNG/JPEG).
Video frames are matched to rows by timestamp (frame k of the episode's video is at k / video fps).

Output (official_format.md §10.4), `<out>/episode_XXXXXX.hdf5`:
    obs/front_image (T, H, W, 3) uint8, obs/wrist_image (T, H, W, 3) uint8,
    obs/state (T, S) float32, action (T, A) float32, timestamp (T,) float32,
    attrs: task_index, language_instruction, episode_index, fps, source keys.
Each file is written to a temporary name and renamed when complete; a rerun skips complete files.
`compute_min_max` / `write_stats` give the per-dimension min/max over all episode files as
`{"min": [...], "max": [...]}` JSON (NormStats), usable as `tokenizer.action_stats=<file>`.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger("worldvla.data.lerobot")

INFO_JSON = "meta/info.json"
EPISODES_JSONL = "meta/episodes.jsonl"
TASKS_JSONL = "meta/tasks.jsonl"
DEFAULT_DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
DEFAULT_VIDEO_PATH = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
DEFAULT_CHUNKS_SIZE = 1000
EPISODE_FILE = "episode_{:06d}.hdf5"  # official output name
FORMAT_TAG = "worldvla-lerobot-hdf5/1"
STATS_FILES = {"action": "action_stats.json", "obs/state": "state_stats.json"}
IMAGE_DTYPES = ("video", "image")


class LeRobotError(ValueError):
    """A LeRobot dataset that cannot be read as asked; the message names the file and field."""


# ----------------------------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EpisodeMeta:
    index: int
    length: int | None  # from meta/episodes.jsonl (None when the file is absent)
    tasks: tuple[str, ...] = ()


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
    """Read-only view of a local LeRobot v2.x dataset folder (meta files + per-episode parquet / mp4)."""

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
        if self.version.startswith("v3") or "{file_index" in str(self.info.get("data_path", "")):
            raise LeRobotError(
                f"{info_path}: codebase_version {self.version or '?'} (several episodes per file) is not supported; "
                "this importer reads LeRobot v2.0 / v2.1 (one parquet file per episode)")
        if not self.version:
            log.warning("%s has no codebase_version; reading it as LeRobot v2.x", info_path)
        self.features: dict[str, dict] = self.info.get("features") or {}
        self.fps = float(self.info.get("fps") or 0) or None
        self.chunks_size = int(self.info.get("chunks_size") or DEFAULT_CHUNKS_SIZE)
        self.data_path = self.info.get("data_path") or DEFAULT_DATA_PATH
        self.video_path = self.info.get("video_path") or DEFAULT_VIDEO_PATH
        self.tasks = self._read_tasks()
        self.episodes = self._read_episodes()

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

    @property
    def episode_indices(self) -> list[int]:
        return list(self.episodes)

    @property
    def image_keys(self) -> list[str]:
        return [k for k, f in self.features.items() if isinstance(f, dict) and f.get("dtype") in IMAGE_DTYPES]

    def data_file(self, episode: int) -> Path:
        return self.root / self.data_path.format(episode_chunk=episode // self.chunks_size, episode_index=episode)

    def video_file(self, episode: int, key: str) -> Path:
        return self.root / self.video_path.format(
            episode_chunk=episode // self.chunks_size, episode_index=episode, video_key=key)

    def describe_range(self) -> str:
        idx = self.episode_indices
        if not idx:
            return "no episodes"
        contiguous = idx == list(range(idx[0], idx[-1] + 1))
        span = f"{idx[0]}-{idx[-1]}" if contiguous else _format_episode_list(idx)
        return f"{span}, {len(idx)} episodes"

    # -- data ---------------------------------------------------------------------------------
    def read_table(self, episode: int):
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = self.data_file(episode)
        if not path.is_file():
            raise LeRobotError(f"episode {episode}: data file {path} not found")
        try:
            return pq.read_table(path)
        except (OSError, ValueError, pa.ArrowException) as err:
            raise LeRobotError(f"episode {episode}: cannot read {path} ({err})") from None

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
            raise LeRobotError(f"{path}: {n} rows but {EPISODES_JSONL} gives length {expected} for episode {episode}")
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
        frames, video_fps = decode_video(path)
        feat = self.features[key]
        # exact rate from the metadata first (ffmpeg reports a rounded one, e.g. 29.97)
        fps = float((feat.get("info") or feat.get("video_info") or {}).get("video.fps") or 0) or self.fps or video_fps
        if not fps:
            raise LeRobotError(f"{path}: unknown frame rate (no fps in the video or in {INFO_JSON})")
        if video_fps and abs(video_fps - fps) > 0.01 * fps:
            log.warning("%s: ffmpeg reports %g fps, %s gives %g; frames are matched at %g fps",
                        path, video_fps, INFO_JSON, fps, fps)
        n_rows, n_video = len(timestamp), len(frames)
        if strict_frame_count and n_video != n_rows:
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
    import io

    from PIL import Image

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


def decode_video(path: str | Path) -> tuple[np.ndarray, float | None]:
    """All frames of a video file as (N, H, W, 3) uint8 RGB, in decoding order, and its frame rate.

    Uses the ffmpeg binary of imageio-ffmpeg (h264, hevc, vp9 and AV1 via libdav1d), frames passed
    through without frame-rate conversion.
    """
    import imageio_ffmpeg

    path = Path(path)
    try:
        gen = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24", output_params=["-fps_mode", "passthrough"])
        meta = next(gen)
        w, h = meta["size"]
        frames = [np.frombuffer(buf, dtype=np.uint8).reshape(h, w, 3) for buf in gen]
    except (OSError, RuntimeError, StopIteration) as err:
        raise LeRobotError(f"{path}: cannot decode video ({err})") from None
    if not frames:
        raise LeRobotError(f"{path}: video has no frames")
    fps = meta.get("fps")
    return np.stack(frames), (float(fps) if fps else None)


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
    """`"0-9"` (inclusive), `"3"`, `"0-4,7,9-12"` -> sorted unique indices; `""` / `"all"` -> None (all)."""
    spec = str(spec).strip()
    if spec in ("", "all"):
        return None
    out: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
        if not m:
            raise LeRobotError(f"episodes={spec!r}: {part!r} is not an index or an inclusive range like 0-9")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if hi < lo:
            raise LeRobotError(f"episodes={spec!r}: range {part!r} ends before it starts")
        out.update(range(lo, hi + 1))
    return sorted(out)


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


@dataclass
class ImportResult:
    out: Path
    written: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    stats: dict[str, Path] = field(default_factory=dict)


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
    import h5py

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
    except OSError as err:
        return f"cannot be opened ({err})"
    if keys is not None and json.loads(keys) != _source_keys(cfg):
        raise LeRobotError(f"{path} was written from other columns {json.loads(keys)} than asked "
                           f"{_source_keys(cfg)}; use another out folder or overwrite=true")
    return "complete"


def write_episode_hdf5(path: str | Path, ep: Episode, cfg: LeRobotImportConfig, fps: float | None) -> Path:
    """Write one episode in the official layout (tmp file + rename)."""
    import h5py

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


def _check_shapes(ep: Episode, where: str) -> None:
    for key, img in ep.images.items():
        if img.ndim != 4 or img.shape[-1] != 3:
            raise LeRobotError(f"{where}: camera {key!r} decoded to shape {img.shape}, expected (T, H, W, 3)")
        if len(img) != len(ep):
            raise LeRobotError(f"{where}: camera {key!r} has {len(img)} frames for {len(ep)} rows")


def convert(cfg: LeRobotImportConfig) -> ImportResult:
    """Convert the selected episodes; skip complete ones; then write the min/max stats (cfg.stats)."""
    from tqdm import tqdm

    if cfg.input is None or cfg.out is None:
        raise LeRobotError("both input=<LeRobot dataset folder> and out=<HDF5 folder> are required")
    if not cfg.front_key:
        raise LeRobotError("front_key is required (the camera written to obs/front_image)")
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
        write_episode_hdf5(path, ep, cfg, ds.fps)
        result.written.append(idx)
        bar.set_postfix(written=len(result.written), skipped=len(result.skipped))
    bar.close()
    log.info("wrote %d episode file(s), skipped %d complete one(s) in %s", len(result.written),
             len(result.skipped), out)
    if cfg.stats:
        result.stats = write_stats(out)
    return result


# ----------------------------------------------------------------------------------------------
# normalisation statistics
# ----------------------------------------------------------------------------------------------


def episode_files(hdf5_dir: str | Path) -> list[Path]:
    return sorted(p for p in Path(hdf5_dir).glob("episode_*.hdf5") if re.fullmatch(r"episode_\d+\.hdf5", p.name))


def compute_min_max(files: Iterable[str | Path], key: str = "action"):
    """Per-dimension min/max of dataset `key` ("action", "obs/state") over all frames of all files -> NormStats."""
    import h5py

    from worldvla.tokenizers.action import NormStats

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
    return NormStats(tuple(lo.tolist()), tuple(hi.tolist()))


def write_stats(hdf5_dir: str | Path, out_dir: str | Path | None = None,
                keys: dict[str, str] | None = None) -> dict[str, Path]:
    """Write `{"min": [...], "max": [...]}` JSON files (NormStats format) for actions and states.

    Keys missing from the episode files (e.g. converted with state_key="") are skipped with a log line.
    """
    import h5py

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
    """LeRobot v2.x dataset -> one HDF5 per episode (obs/front_image, obs/wrist_image, obs/state, action, timestamp)."""
    import sys

    from worldvla.config import parse_cli, save_config

    argv = _normalise_argv(sys.argv[1:] if argv is None else argv)
    cfg = parse_cli(LeRobotImportConfig, argv, description=__doc__)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [%(name)s] %(message)s", datefmt="%H:%M:%S")
    try:
        result = convert(cfg)
    except LeRobotError as err:
        raise SystemExit(f"error: {err}") from None
    cfg_path = Path(cfg.out) / "lerobot_to_hdf5_config.yaml"
    tmp = cfg_path.with_name(f"{cfg_path.name}.tmp{os.getpid()}")
    save_config(cfg, tmp)
    tmp.replace(cfg_path)
    log.info("config -> %s", cfg_path)
    return result
