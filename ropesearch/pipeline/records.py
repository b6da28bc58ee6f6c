"""A completed stage's `done.json`: what it produced, as paths inside the run directory, with the
SHA-256 of every file, so a resume reads only what that stage wrote, wherever the run directory
now is (moved, copied) and whatever folder ropesearch runs from.

    {"format": "ropesearch/stage@2", "outputs": {"factors": "01-search/search/best.json", ...},
     "sha256": {"01-search/search/best.json": "..."}, "seconds": 12.3}

Older records (no format) hold paths relative to the folder ropesearch ran in (`runs/x/01-search/
search/best.json`); as every output lies in its stage's folder, the part from that folder on is
read inside this run directory, and the record is written anew.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path, PurePosixPath

from ropesearch.errors import RopesearchError
from ropesearch.own_files import atomic_write_text
from ropesearch.models.registry import sha256_of
from ropesearch.validate import read_json

RECORD_FORMAT = "ropesearch/stage@2"
PATH_KEYS = ("factors", "search_dir", "model", "table", "report", "passkey")  # outputs that name a file or folder


def _paths(outputs: dict) -> list[tuple[tuple[str, ...], object]]:
    """(where in outputs, value) of every path a stage's outputs name."""
    found = [((key,), outputs[key]) for key in PATH_KEYS if outputs.get(key) is not None]
    exports = outputs.get("exports")
    if isinstance(exports, dict):
        found += [(("exports", fmt), path) for fmt, path in exports.items()]
    return found


def _put(outputs: dict, where: tuple[str, ...], value: str) -> None:
    for key in where[:-1]:
        outputs = outputs[key]
    outputs[where[-1]] = value


def _again(done: Path, stage: str) -> str:
    return f"delete {done} to run stage {stage} again, or start a new --out"


def write_record(done: Path, run: Path, outputs: dict, seconds: float | None) -> None:
    """Record a stage's outputs (paths as the stage gave them, inside `run`)."""
    root = run.resolve()
    stored, files = copy.deepcopy(outputs), {}
    for where, path in _paths(outputs):
        relative = Path(path).resolve().relative_to(root).as_posix()
        _put(stored, where, relative)
        if Path(path).is_file():
            files[relative] = sha256_of(Path(path))
    document = {"format": RECORD_FORMAT, "outputs": stored, "sha256": files, "seconds": seconds}
    atomic_write_text(done, json.dumps(document, indent=1) + "\n")


def read_record(done: Path, run: Path, stage: str) -> dict:
    """done.json with its outputs' paths under `run` (as given: relative to the working folder if
    `run` is); "legacy": an older record, to be written anew. Nothing outside `run` is accepted."""
    record = read_json(done, f"stage {stage}'s record", f"remove it to run {stage} again")
    if not isinstance(record, dict) or not isinstance(record.get("outputs"), dict):
        raise RopesearchError(f"{done} is damaged (no outputs): remove it to run {stage} again")
    legacy = record.get("format") != RECORD_FORMAT
    if not legacy and not isinstance(record.get("sha256"), dict):
        raise RopesearchError(f"{done} is damaged (no sha256 of its files): {_again(done, stage)}")
    root = run.resolve()
    outputs = copy.deepcopy(record["outputs"])
    for where, value in _paths(outputs):
        name = ".".join(where)
        if not isinstance(value, str) or not value:
            raise RopesearchError(f"{done} is damaged (outputs.{name} is not a path): {_again(done, stage)}")
        if legacy:  # relative to the folder that run ran in; every output lies in its stage's folder
            parts = Path(value).parts
            if stage not in parts:
                raise RopesearchError(
                    f"{done} was written by an older ropesearch and its outputs.{name} {value!r} is not in the "
                    f"stage's folder {stage}: {_again(done, stage)}")
            last = len(parts) - 1 - parts[::-1].index(stage)
            relative = Path(*parts[last:]).as_posix()
        else:
            relative = value
        pure = PurePosixPath(relative)
        if pure.is_absolute() or ".." in pure.parts or not (run / relative).resolve().is_relative_to(root):
            raise RopesearchError(f"{done} names outputs.{name} {value!r}, which is not inside the run "
                                  f"directory {run}: {_again(done, stage)}")
        _put(outputs, where, str(run / relative))
    return {"outputs": outputs, "sha256": record.get("sha256") or {}, "seconds": record.get("seconds"),
            "legacy": legacy}


def check_record(done: Path, run: Path, stage: str, record: dict) -> None:
    """Every output the record names exists, and every file is the one the stage wrote."""
    for where, path in _paths(record["outputs"]):
        name, path = ".".join(where), Path(path)
        if not path.exists():
            raise RopesearchError(f"{path} (outputs.{name} of stage {stage}) is missing: restore it, or "
                                  f"{_again(done, stage)}")
        if path.is_file():
            relative = path.relative_to(run).as_posix()  # read_record made it run / relative
            if record["sha256"].get(relative) != sha256_of(path):
                raise RopesearchError(
                    f"{path} (outputs.{name} of stage {stage}) is not the file that stage wrote (its SHA-256 "
                    f"differs from {done}'s): restore it, or {_again(done, stage)}")
