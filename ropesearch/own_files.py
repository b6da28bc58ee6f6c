"""How ropesearch writes files: whole files atomically, files in place never through a link it did not make.

Whole files are written by temp file + rename (`atomic_write_bytes`, `atomic_write_text`: readers
never see half a file, the mode is what the umask gives), which replaces a symbolic link instead
of writing through it. A file opened in place is opened with O_NOFOLLOW and must be
a regular file with no other hard link, so a planted `.lock -> ~/notes.txt` (or a hard link to
it) is one line naming the file, and the file it points to is never touched.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path

from ropesearch.errors import RopesearchError


def open_own(path: str | Path, flags: int, what: str) -> int:
    """A descriptor of PATH, opened without following a final symbolic link (and without blocking on
    a FIFO); `what` says what ropesearch keeps there, for the message."""
    path = Path(path)
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise RopesearchError(f"{path} is a symbolic link, not {what}: ropesearch never writes through a link; "
                                  "remove the link (what it points to is untouched) and run again") from None
        if exc.errno == errno.ENXIO:  # a FIFO or socket nobody reads
            raise RopesearchError(f"{path} is not a regular file, not {what}: remove it and run again") from None
        raise
    info = os.fstat(fd)
    problem = None
    if not stat.S_ISREG(info.st_mode):
        problem = "is not a regular file"
    elif info.st_nlink > 1:
        problem = f"has {info.st_nlink} hard links, so writing it would change a file elsewhere too"
    if problem:
        os.close(fd)
        raise RopesearchError(f"{path} {problem}, not {what}: replace it with a file of its own (or remove it) "
                              "and run again")
    return fd


def append_own(path: str | Path, data: bytes, what: str) -> None:
    """Append DATA to PATH (created if missing) and make it durable; never through a link."""
    fd = open_own(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, what)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def refuse_links(folder: str | Path, names: dict[str, str]) -> None:
    """None of FOLDER's files NAMES (name -> what it is) is a symbolic link: a run resumes only from
    files of its own."""
    for name, what in names.items():
        path = Path(folder) / name
        if path.is_symlink():
            raise RopesearchError(f"{path} is a symbolic link, not {what} of this run: ropesearch never writes "
                                  "through a link; put the file itself there (or start a new --out) and run again")


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write via a uniquely named temp file in the same folder and rename, so readers never see
    half a file and two writers never share a temp file; the file gets the mode the umask gives
    (0644 under umask 022), not mkstemp's private 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """`atomic_write_bytes` for text (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))
