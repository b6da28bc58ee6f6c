"""Input checks that run before a model loads or a file is written.

Click parameter types for CLI values (each failure is one line naming the option and what it
accepts), a typed check of YAML mappings against dataclass fields (search spaces, plans), and
cheap checks of model files (a truncated safetensors file) and of documents (binary data).
"""

from __future__ import annotations

import json
import math
import struct
import tempfile
import types
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any

import click

from ropesearch.errors import RopesearchError


# ---- CLI values ---------------------------------------------------------------------------------
class FiniteFloat(click.FloatRange):
    """A float range that also refuses nan and inf (click's FloatRange lets them through)."""

    name = "number"

    def convert(self, value, param, ctx):
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return super().convert(number, param, ctx)


def count(minimum: int = 1) -> click.IntRange:
    return click.IntRange(min=minimum)


SEED = click.IntRange(0, 2**32 - 1)


class Device(click.ParamType):
    """cpu, cuda, cuda:N or mps, and only if this machine and torch build have it."""

    name = "device"

    def convert(self, value, param, ctx):
        try:
            return check_device(value)
        except RopesearchError as exc:
            self.fail(str(exc), param, ctx)


def check_device(value: str | None, flag: str = "--device") -> str | None:
    if value is None:
        return None
    import torch

    try:
        device = torch.device(value)
    except (RuntimeError, TypeError):
        raise RopesearchError(f"{flag} {value!r} is not a device: give cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = "this torch build has no CUDA" if torch.version.cuda is None else "no GPU is visible"
            raise RopesearchError(f"{flag} {value}: {build} (torch {torch.__version__}); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise RopesearchError(f"{flag} {value}: only {torch.cuda.device_count()} GPU(s) are visible")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise RopesearchError(f"{flag} {value}: MPS is not available here; use --device cpu")
    elif device.type != "cpu":
        raise RopesearchError(f"{flag} {value!r} is not supported: give cpu, cuda, cuda:N or mps")
    return value


# ---- typed YAML mappings ------------------------------------------------------------------------
def _describe(hint) -> str:
    if hint is type(None):
        return "null"
    if typing.get_origin(hint) is tuple:
        return f"a list of {_describe(typing.get_args(hint)[0])}s"
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe(h) for h in typing.get_args(hint))
    return {int: "a whole number", float: "a number", str: "a string", bool: "true or false"}.get(hint, str(hint))


def _matches(value, hint) -> tuple[bool, Any]:
    """Whether `value` (from YAML) fits the type hint; with the value converted (lists to tuples)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            ok, converted = _matches(value, option)
            if ok:
                return True, converted
        return False, value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return False, value
        item = typing.get_args(hint)[0]
        converted = []
        for element in value:
            ok, element = _matches(element, item)
            if not ok:
                return False, value
            converted.append(element)
        return True, tuple(converted)
    if hint is type(None):
        return value is None, value
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return ok, value
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return ok, float(value) if ok else value
    if hint is str:
        return isinstance(value, str), value
    return True, value  # nested dataclasses and free-form fields are checked by their owner


def check_fields(cls, values: dict, where: str, skip: tuple[str, ...] = ()) -> dict:
    """`values` checked against the annotated types of dataclass `cls`; one line naming the field."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise RopesearchError(f"{where.rstrip(':')}: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")
    checked = {}
    for key, value in values.items():
        if key in skip:
            checked[key] = value
            continue
        ok, converted = _matches(value, hints[key])
        if not ok:
            shown = json.dumps(value, default=str)[:40]
            name = f"{where} {key}" if where.endswith(":") else f"{where}.{key}"
            raise RopesearchError(f"{name} must be {_describe(hints[key])}, got {shown}")
        checked[key] = converted
    return checked


# ---- files -------------------------------------------------------------------------------------------
def check_safetensors(path: str | Path, what: str = "model file", fix: str = "download or copy it again") -> None:
    """The header parses and every tensor lies inside the file (a cut-off download does not)."""
    path = Path(path)
    size = path.stat().st_size
    problem = None
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            problem = "shorter than a safetensors header"
        else:
            (length,) = struct.unpack("<Q", head)
            if length > size - 8:
                problem = "its header runs past the end of the file"
            else:
                try:
                    header = json.loads(handle.read(length))
                    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
                except (ValueError, KeyError, TypeError, IndexError, AttributeError):
                    problem = "its header is not valid"
                else:
                    if 8 + length + end > size:
                        problem = f"it is truncated ({size} bytes, the header needs {8 + length + end})"
    if problem:
        raise RopesearchError(f"{what} {path} is damaged: {problem}; {fix}")


def check_model_folder(folder: str | Path) -> None:
    folder = Path(folder)
    if not folder.is_dir():
        return
    config = folder / "config.json"
    if config.is_file():
        try:
            json.loads(config.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise RopesearchError(f"model folder {folder}: config.json is not valid JSON ({exc})") from None
    for weights in sorted(folder.glob("*.safetensors")):
        check_safetensors(weights)


def text_problem(text: str) -> str | None:
    """Why decoded `text` is not prose or code (mostly undecodable bytes or control characters), or None."""
    if not text:
        return None
    sample = text[:200_000]
    bad = sum(1 for c in sample if c == "\ufffd" or (c < " " and c not in "\n\r\t\f\v"))
    share = bad / len(sample)
    if share > 0.02:
        return f"{share:.0%} of its characters are undecodable bytes or control codes"
    return None


# ---- outputs never clobber inputs ------------------------------------------------------------------
def writable_folder(path: str | Path, flag: str = "--out", shown: str | Path | None = None) -> None:
    """The folder (or the nearest existing folder above it) takes new files: checked before any work,
    so a long run never ends unable to write its results. A real probe (a nameless temporary file,
    gone at once), since permission bits say nothing for root, /proc or a full or read-only disk.
    `shown`: the output as the user gave it, for the message (default: `path`)."""
    shown = path if shown is None else shown
    probe = Path(path).expanduser()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise RopesearchError(f"{flag} {shown}: {probe} is a file, not a folder: choose another {flag}")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise RopesearchError(f"{flag} {shown}: {probe} is not writable ({reason}): choose another {flag}") from None


def check_output(out: str | Path, inputs: dict[str, str | Path | None], flag: str = "--out", folder: bool = True) -> None:
    """`out` is not an input and holds none (a folder output also lies inside none), and its folder
    can be written (`writable_folder`): one line otherwise.

    `inputs` maps what an input is ("the model folder") to its path; entries that are not local
    paths (hub ids, dataset names, builtin) are skipped.
    """
    target = Path(out).expanduser().resolve()
    for what, path in inputs.items():
        if path is None or not Path(path).expanduser().exists():
            continue
        source = Path(path).expanduser().resolve()
        if source == target or (folder and target in source.parents) or (folder and source in target.parents):
            relation = "is" if source == target else ("holds" if target in source.parents else "lies inside")
            raise RopesearchError(f"{flag} {out} {relation} {what} ({path}), an input of this command: "
                                  f"choose another {flag}")
    writable_folder(target if folder else target.parent, flag, shown=out)


def read_json(path: str | Path, what: str, fix: str):
    """A JSON file ropesearch wrote; damage (truncation, hand edits) is one line saying how to continue."""
    try:
        return json.loads(Path(path).read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise RopesearchError(f"{what} {path} is damaged (not valid JSON: {exc}); {fix}") from None


def read_text(path, what: str) -> str:
    """A text input (YAML, CSV, JSON lines) as str; binary content is one line, not a UnicodeDecodeError.

    `path`: a str, a Path, or an importlib.resources Traversable (a shipped file)."""
    try:
        return (Path(path) if isinstance(path, str) else path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise RopesearchError(f"{what} {path} is not UTF-8 text (byte {exc.start}): give a text file") from None
