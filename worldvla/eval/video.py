"""Episode videos: frames are streamed into an mp4 while the episode runs (no frame list in memory),
then the file is either moved into place atomically or deleted (e.g. a success when only failures
are kept). Frames are the rotated camera images the policy sees (agentview, plus wrist side by side).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from worldvla.atomic import fsync_file

from .protocol import EpisodeKey
# imageio (~30 ms) is imported where a video is written: LIBERO worker processes import this module.


def video_path(root: Path, key: EpisodeKey, status: str) -> Path:
    return Path(root) / key.suite / f"task{key.task:02d}_trial{key.trial:02d}_{status}.mp4"


class EpisodeVideo:
    """`add(agentview, wrist)` per step, then `finish(keep, final_path)`."""

    def __init__(self, tmp_path: Path, fps: int = 30, wrist: bool = False):
        self.tmp_path = Path(tmp_path)
        self.fps = fps
        self.wrist = wrist
        self._writer = None
        self.frames = 0

    def add(self, agentview: np.ndarray, wrist: np.ndarray | None = None) -> None:
        frame = np.concatenate([agentview, wrist], axis=1) if self.wrist and wrist is not None else agentview
        if self._writer is None:
            import imageio.v2 as imageio

            self.tmp_path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = imageio.get_writer(self.tmp_path, format="FFMPEG", mode="I", fps=self.fps,
                                              codec="libx264", macro_block_size=1, ffmpeg_log_level="error")
        self._writer.append_data(np.ascontiguousarray(frame, dtype=np.uint8))
        self.frames += 1

    def finish(self, keep: bool, final_path: Path | None = None) -> Path | None:
        """Close the stream; move it to `final_path` if `keep`, else delete it. Returns the kept path."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if keep and final_path is not None and self.tmp_path.exists():
            final_path = Path(final_path)
            final_path.parent.mkdir(parents=True, exist_ok=True)
            fsync_file(self.tmp_path)
            os.replace(self.tmp_path, final_path)
            return final_path
        self.tmp_path.unlink(missing_ok=True)
        return None
