"""One writer per run directory: an exclusive lock on a file inside it.

`fcntl.flock` on `.lock`: held while the command works on the folder, released by the OS
the moment the process ends, however it ends (kill -9 included), so a stale lock never
needs cleaning up. Nested use in one process (a plan's search stage inside the plan's
own run directory) counts up instead of blocking itself. The lock file is opened without
following links (`own_files.open_own`): a planted `.lock -> elsewhere` is refused, never written.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from ropesearch.errors import RopesearchError
from ropesearch.own_files import open_own

LOCK_NAME = ".lock"
_held: dict[str, list] = {}  # real path of the folder -> [fd, count]


class DirectoryLock:
    def __init__(self, folder: str | Path, wait: bool = False):
        self.folder = Path(folder)
        self.wait = wait  # block until the holder lets go, instead of "in use"
        self.held = False

    def acquire(self) -> DirectoryLock:
        if self.held:
            return self
        key = os.path.realpath(self.folder)
        if key in _held:
            _held[key][1] += 1
        else:
            fd = self._locked_fd(self.folder / LOCK_NAME)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            _held[key] = [fd, 1]
        self.held = True
        return self

    def _locked_fd(self, path: Path) -> int:
        """A descriptor of PATH holding the lock. Never through a link (`open_own`); and the file locked
        is the one at PATH now (a lock file removed and made again meanwhile is locked anew)."""
        for _ in range(10):
            fd = open_own(path, os.O_RDWR | os.O_CREAT, "a ropesearch lock file")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if self.wait else fcntl.LOCK_NB))
            except OSError:
                owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise RopesearchError(f"{self.folder} is in use by another ropesearch process (pid {owner}): "
                                      "wait for it to finish, or use another --out") from None
            try:
                current = os.lstat(path)
            except FileNotFoundError:
                current = None
            if current is not None and current.st_ino == os.fstat(fd).st_ino:
                return fd
            os.close(fd)
        raise RopesearchError(f"{self.folder} is in use by another ropesearch process: wait for it to finish, "
                              "or use another --out")

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        key = os.path.realpath(self.folder)
        entry = _held.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            del _held[key]
            os.close(entry[0])  # closing the last descriptor drops the flock

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def held_elsewhere(lock_file: str | Path) -> str | None:
    """The pid (or "unknown") of another process holding the lock LOCK_FILE, or None when it is free
    (or is not a lock file: a link, a missing or special file)."""
    try:
        fd = os.open(lock_file, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if os.path.realpath(Path(lock_file).parent) in _held:
            return None  # this process holds it
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        return None
    finally:
        os.close(fd)
