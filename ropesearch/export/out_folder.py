"""An export's output folder: built aside, locked while written, replaced only as far as it was ours.

`export_folder(out, overwrite)` locks OUT (`DirectoryLock`, whose file is removed again at the end:
a second export into it meanwhile stops at once with "in use"), hands out a staging folder inside OUT to write the new export into, and only once
that is complete swaps it in: the previous export's files go, the new ones are renamed into place,
and `.ropesearch-export` lists every file and folder the export wrote. A failed export (a full
disk, bad input) removes its staging folder and leaves the previous export as it was: nothing
half-written is ever left in OUT.

`--overwrite` removes only the entries of that list. A folder holding anything else (a run
directory started inside an earlier export, a file put there by hand), a lock another process
holds anywhere inside, or no list (not written by an export, or by an older ropesearch) is
refused and left untouched.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from ropesearch.errors import RopesearchError
from ropesearch.own_files import atomic_write_text, current_umask
from ropesearch.lock import LOCK_NAME, DirectoryLock, held_elsewhere
from ropesearch.validate import check_output

MARKER = ".ropesearch-export"  # the list of what the export in this folder wrote
MANIFEST_FORMAT = "ropesearch/export@1"
STAGING_PREFIX = ".ropesearch-staging-"  # an export under way (or one killed: removed by the next)
FULL = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


def _entries(out: Path, skip: Path | None = None) -> tuple[list[str], list[Path]]:
    """Every file, link and folder under OUT as a relative POSIX path (links never followed), but
    the lock, the list and staging folders; and the staging folders other than SKIP."""
    found, staging = [], []
    for folder, dirs, files in os.walk(out):
        here = Path(folder)
        if here == out:
            staging += [out / d for d in dirs if d.startswith(STAGING_PREFIX) and out / d != skip]
            dirs[:] = [d for d in dirs if not d.startswith(STAGING_PREFIX)]
            files = [f for f in files if f not in (LOCK_NAME, MARKER)]
        found += [(here / name).relative_to(out).as_posix() for name in dirs + files]
    return sorted(found), staging


def _listed(out: Path) -> set[str]:
    """The entries `.ropesearch-export` lists, or why --overwrite may not trust it."""
    marker = out / MARKER
    if marker.is_symlink() or not marker.is_file():
        raise RopesearchError(f"--overwrite replaces only folders that `ropesearch export` wrote, and {out} was not "
                              f"(no {MARKER} in it): remove it yourself, or choose another --out")
    try:
        document = json.loads(marker.read_text())
        files = document["files"] if isinstance(document, dict) and document.get("format") == MANIFEST_FORMAT else None
    except (ValueError, UnicodeDecodeError, KeyError):
        files = None
    if not isinstance(files, list) or not all(_safe_entry(f) for f in files):
        raise RopesearchError(f"{out} was exported by an older ropesearch, or its {MARKER} is damaged, so it does not "
                              "list the files that export wrote and --overwrite cannot tell them from others: remove "
                              "the folder yourself, or choose another --out")
    return set(files)


def _safe_entry(entry) -> bool:
    path = PurePosixPath(entry) if isinstance(entry, str) else None
    return path is not None and bool(entry) and not path.is_absolute() and ".." not in path.parts


def _previous(out: Path, overwrite: bool, staging: Path | None = None) -> tuple[list[str], list[Path]]:
    """What replacing OUT's earlier export removes: its listed entries and stale staging folders.
    Refused when OUT holds anything the list does not name, or a lock another process holds."""
    entries, stale = _entries(out, skip=staging)
    if not entries:
        return [], stale
    if not overwrite:
        raise RopesearchError(f"output folder {out} is not empty: choose another or pass --overwrite")
    for entry in entries:
        if PurePosixPath(entry).name == LOCK_NAME and (owner := held_elsewhere(out / entry)):
            raise RopesearchError(f"{out / entry} is held by another ropesearch process (pid {owner}), so {out} is "
                                  "in use: --overwrite never removes a folder a running command works in; wait for "
                                  "it to finish, or choose another --out")
    listed = _listed(out)
    foreign = [e for e in entries if e not in listed]
    if foreign:
        more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
        raise RopesearchError(f"--overwrite removes only what an earlier export wrote, and {out} also holds "
                              f"{foreign[0]}{more}, which it did not: move that out (or remove it yourself), "
                              "or choose another --out")
    return entries, stale


def _write_list(out: Path, entries) -> None:
    atomic_write_text(out / MARKER, json.dumps({"format": MANIFEST_FORMAT, "files": sorted(set(entries))}, indent=1)
                      + "\n")


def _remove(out: Path, entries: list[str]) -> None:
    """Remove ENTRIES of OUT, deepest first; links are removed, never followed."""
    for entry in sorted(entries, key=lambda e: len(PurePosixPath(e).parts), reverse=True):
        path = out / entry
        if path.is_dir() and not path.is_symlink():
            path.rmdir()  # empty by now: everything under it is listed too
        else:
            path.unlink(missing_ok=True)


def _shown(exc: OSError, staging: Path, out: Path) -> str:
    """The file in the staging folder an OSError names, as it will be in OUT."""
    return str(out / Path(exc.filename).relative_to(staging))


@contextmanager
def export_folder(out: str | Path, overwrite: bool, protect: dict | None = None):
    """Yields the folder to write a new export into; on success it becomes OUT (see module doc)."""
    out = Path(out)
    check_output(out, protect or {})
    if out.is_symlink():
        raise RopesearchError(f"--out {out} is a symbolic link: an export writes only into a folder of its own, never "
                              "through a link; give the folder itself, or another --out")
    if out.exists() and not out.is_dir():
        raise RopesearchError(f"--out {out} is a file, not a folder: choose another --out")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    own_lock_file = not (out / LOCK_NAME).exists()  # else another command's (a run's): left in place
    lock = DirectoryLock(out).acquire()  # a second export into OUT stops here: "in use"
    staging = None
    try:
        _previous(out, overwrite)  # refused before any work
        staging = Path(tempfile.mkdtemp(dir=out, prefix=STAGING_PREFIX))
        staging.chmod(0o777 & ~current_umask())
        try:
            yield staging
        except OSError as exc:  # a full disk, a file too large...: named as it will be in OUT, not the source
            if not (exc.filename and staging in Path(exc.filename).parents):
                raise
            fix = "free some space or choose another --out" if exc.errno in FULL else "choose another --out"
            raise RopesearchError(f"could not write {_shown(exc, staging, out)}: {exc.strerror or exc}; nothing of "
                                  f"this export was kept (an earlier one in {out} is unchanged): {fix}, and export "
                                  "again") from None
        written, _ = _entries(staging)
        old, stale = _previous(out, overwrite, staging)
        _write_list(out, [*old, *written])  # a kill from here on leaves only listed entries
        for folder in stale:
            shutil.rmtree(folder, ignore_errors=True)
        _remove(out, old)
        for item in sorted(staging.iterdir()):
            os.replace(item, out / item.name)
        _write_list(out, written)
    except BaseException:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        if created and [p.name for p in out.iterdir()] == [LOCK_NAME]:  # the folder this export made, unused
            out.joinpath(LOCK_NAME).unlink()
            out.rmdir()
        raise
    finally:
        if staging is not None and staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
        if own_lock_file:  # an exported folder carries no lock file; one who opened it meanwhile locks anew
            (out / LOCK_NAME).unlink(missing_ok=True)
        lock.release()
