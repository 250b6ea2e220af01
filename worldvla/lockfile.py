"""One writer at a time per folder: a lock file holding the writer's pid, host and start time.

`FolderLock(folder)` creates `<folder>/.lock` with O_EXCL. A second writer gets `LockedError`
naming the holder. A lock whose process no longer exists on this host (killed with -9, power
loss) is stale: it is replaced with a log line. A lock from another host cannot be checked, so it
is only replaced after `stale_after_s` without the holder touching it (`refresh`), or by hand.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Self

from worldvla.atomic import pid_alive

log = logging.getLogger(__name__)
LOCK_NAME = ".lock"


class LockedError(FileExistsError):
    pass


class FolderLock:
    def __init__(self, folder: str | Path, what: str = "writer", stale_after_s: float = 24 * 3600):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.what = what
        self.stale_after_s = stale_after_s
        self.held = False

    def _holder(self) -> dict | None:
        """The lock's content, or None when it is unreadable (a writer killed between create and write)."""
        try:
            data = json.loads(self.path.read_text())
            return data if isinstance(data, dict) else None
        except (OSError, ValueError):
            return None

    def _stale_reason(self, holder: dict | None) -> str | None:
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return "gone"
        if holder is None:
            return "unreadable" if age > 10 else None  # give a writer that just created it time to fill it
        if holder.get("host") == socket.gethostname():
            pid = holder.get("pid")
            if not isinstance(pid, int) or not pid_alive(pid):
                return f"process {pid} on this host is gone"
            return None
        if age > self.stale_after_s:
            return f"untouched for {age / 3600:.1f} h"
        return None

    def acquire(self) -> FolderLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "what": self.what}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                reason = self._stale_reason(holder)
                if reason is None:
                    who = holder or {}
                    raise LockedError(
                        f"{self.path}: another {self.what} is using {self.folder} (pid {who.get('pid')} on "
                        f"{who.get('host')}, since {who.get('started')}); only one at a time may write here. Wait "
                        "for it to finish, use another folder, or delete the lock file if that process is gone"
                    ) from None
                log.warning("%s: removing a stale lock (%s): %s", self.path, reason, holder)
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
                f.flush()
                os.fsync(f.fileno())
            self.held = True
            return self
        raise LockedError(f"{self.path}: could not take the lock (another process keeps replacing it)")

    def refresh(self) -> None:
        if self.held:
            os.utime(self.path)

    def release(self) -> None:
        if self.held:
            holder = self._holder()
            if holder and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
                self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> Self:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
