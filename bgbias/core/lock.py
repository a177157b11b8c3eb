"""One lock per output folder, so two runs never write into the same folder at once.

A second ``bgbias build`` (or ``train``) into a folder another run is using would
interleave files of both runs (a mixed image with one run's foreground and the
other's background) while both exit 0. ``fcntl.flock`` on ``OUT/.bgbias.lock``
makes the second run stop with one sentence instead. The kernel drops the lock
when its holder dies (even by kill -9), so a stale lock never blocks a resume.
Where ``fcntl`` is missing (Windows) the lock is a no-op.
"""
from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".bgbias.lock"


class FolderInUse(ValueError):
    """Another live process holds the output folder's lock."""


class FolderLock:
    """Exclusive, non-blocking lock on ``folder`` (created if missing); use as a context manager.

    ``remove=True`` deletes the lock file on release, so a finished output holds
    only its results (the file is unlinked while still locked, then closed).
    """

    def __init__(self, folder: str | os.PathLike, what: str = "bgbias run", remove: bool = True):
        self.folder, self.what, self.remove = Path(folder), what, remove
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> "FolderLock":
        if fcntl is None or self._fd is not None:
            return self
        from bgbias.core.io import OutputError

        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError.of(self.folder, e) from None
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
        except OSError as e:
            raise OutputError.of(self.folder, e) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise FolderInUse(f"Output folder {self.folder} is in use by another {self.what} (pid {holder}); "
                              "wait for it to finish or choose another folder.") from None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(self.path, follow_symlinks=False))
        except OSError:
            same = False
        if not same:   # the holder removed the file as we opened it: lock the new one
            os.close(fd)
            return self.acquire()
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        if self.remove:
            try:
                os.unlink(self.path)
            except OSError:
                pass
        os.close(self._fd)   # closing drops the flock
        self._fd = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, et: type | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.release()
