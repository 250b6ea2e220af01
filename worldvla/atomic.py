"""Crash-safe file writes: a temporary file in the same folder, fsync, rename, fsync of the folder.

A file written this way is either the old one or the whole new one, also after a power loss
(not only after a killed process). Temporary names are `.<name>.tmp<pid>`; `clean_stale_tmp`
removes those a killed writer left behind.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def fsync_dir(folder: str | Path) -> None:
    """Make a rename inside `folder` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, data: bytes | str) -> Path:
    """Write `data` (bytes, or str as UTF-8) to `path` atomically and durably."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    payload = data.encode() if isinstance(data, str) else data
    try:
        with open(tmp, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return path


def atomic_write_json(path: str | Path, data, indent: int | None = 1) -> Path:
    return atomic_write(path, json.dumps(data, indent=indent) + "\n")


def fsync_file(path: str | Path) -> None:
    """fsync a file written by another library (np.save, safetensors, torch.save) before its rename."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_tree(folder: str | Path) -> None:
    """fsync every file and folder under `folder` (before renaming a finished folder into place)."""
    folder = Path(folder)
    for root, _dirs, files in os.walk(folder):
        for name in files:
            fsync_file(Path(root) / name)
        fsync_dir(root)


def clean_stale_tmp(folder: str | Path, patterns: tuple[str, ...] = ("*.tmp[0-9]*", ".*.tmp[0-9]*"),
                    recursive: bool = False) -> list[Path]:
    """Remove temporary files of killed writers (names ending `.tmp<pid>`) whose process is gone."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for pattern in patterns:
        for tmp in (folder.rglob(pattern) if recursive else folder.glob(pattern)):
            pid = tmp.name.rsplit(".tmp", 1)[-1]
            if not tmp.is_file() or (pid.isdigit() and pid_alive(int(pid))):
                continue
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    if removed:
        log.info("removed %d temporary file(s) of an interrupted run in %s (e.g. %s)", len(removed), folder,
                 removed[0].name)
    return removed


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this host (this process counts as alive)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
