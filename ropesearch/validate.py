"""Input checks that run before a model loads or a file is written.

Click parameter types for CLI values (each failure is one line naming the option and what it
accepts), a typed check of YAML mappings against dataclass fields (search spaces, plans), and
cheap checks of model files (a truncated safetensors file) and of documents (binary data).
"""

from __future__ import annotations

import json
import math
import os
import stat
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


MAX_COUNT = 2**31 - 1  # counts go into numpy shapes and index arithmetic: past this, an OverflowError


def count(minimum: int = 1, maximum: int = MAX_COUNT) -> click.IntRange:
    return click.IntRange(min=minimum, max=maximum)


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
    if config.exists():
        read_json(config, "model config", "fix the file, or give another --model", expect=dict)
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


# ---- reading the files ropesearch is given or wrote ---------------------------------------------------
# One reader for every file: a regular file only (a FIFO would block the read forever, /dev/zero never
# ends), of a bounded size, JSON of a bounded depth (deeper nesting is a RecursionError in the parser or
# in whatever walks the document later), with the top-level type the caller needs. Each failure is one
# line: what the file is, its path, what is wrong with it and how to go on.
MAX_FILE_BYTES = 1 << 30  # a search history of 10^5 candidates is ~200 MiB
MAX_JSON_DEPTH = 64  # ropesearch's own files nest 4 levels deep; configs of real models fewer than 10

_KINDS = {dict: "a JSON object", list: "a list", str: "a string", int: "a whole number", float: "a number",
          bool: "true or false", type(None): "null"}


def damaged(source: str, problem: str, fix: str) -> RopesearchError:
    """The one-line error for a file that holds the wrong thing: '<source> is damaged (<problem>); <fix>'."""
    return RopesearchError(f"{source} is damaged ({problem}){'; ' + fix if fix else ''}")


def read_bytes(path: str | Path, what: str, fix: str, limit: int = MAX_FILE_BYTES) -> bytes:
    """The content of a regular file of at most `limit` bytes; anything else is one line naming it.

    Opened without blocking and checked again on the open file, so a FIFO put in place between the
    check and the open is refused too instead of waiting for a writer forever."""
    path = Path(path)
    if not path.exists():
        raise RopesearchError(f"{what} {path} does not exist{'; ' + fix if fix else ''}")
    if path.is_dir():
        raise RopesearchError(f"{what} {path} is a folder, not a file; {fix}")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise RopesearchError(f"{what} {path} cannot be read ({exc.strerror or exc}); {fix}") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise RopesearchError(f"{what} {path} is not a regular file (a FIFO, device or socket); {fix}")
        if info.st_size > limit:
            raise RopesearchError(f"{what} {path} is {info.st_size:,} bytes, more than such a file can be "
                                  f"({limit:,}); {fix}")
        try:
            data = handle.read(limit + 1)
        except OSError as exc:
            raise RopesearchError(f"{what} {path} cannot be read ({exc.strerror or exc}); {fix}") from None
    if len(data) > limit:  # it grew while being read
        raise RopesearchError(f"{what} {path} is more than {limit:,} bytes; {fix}")
    return data


def _too_deep(document, limit: int = MAX_JSON_DEPTH) -> bool:
    stack = [(document, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > limit:
                return True
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return False


def kind_of(value) -> str:
    """How an error names what a file holds: 'a list', 'a string'..."""
    return "a number" if isinstance(value, float) else _KINDS.get(type(value), type(value).__name__)


def parse_json(text: str | bytes, source: str, fix: str, expect: type | None = None):
    """JSON text of a file (or a line of one) named `source`; damage is one line (`damaged`)."""
    try:
        document = json.loads(text.decode("utf-8") if isinstance(text, bytes) else text)
    except RecursionError:
        raise damaged(source, f"JSON nested deeper than {MAX_JSON_DEPTH} levels", fix) from None
    except UnicodeDecodeError as exc:
        raise damaged(source, f"not UTF-8 text, byte {exc.start}", fix) from None
    except ValueError as exc:
        raise damaged(source, f"not valid JSON: {exc}", fix) from None
    if _too_deep(document):
        raise damaged(source, f"JSON nested deeper than {MAX_JSON_DEPTH} levels", fix)
    if expect is not None and not isinstance(document, expect):
        raise damaged(source, f"it holds {kind_of(document)}, not {_KINDS.get(expect, expect.__name__)}", fix)
    return document


def read_json(path: str | Path, what: str, fix: str, expect: type | None = None):
    """A JSON file (ropesearch's own, or a model's config): one line for every way it can be wrong."""
    return parse_json(read_bytes(path, what, fix), f"{what} {path}", fix, expect)


def read_json_lines(path: str | Path, what: str, fix: str) -> tuple[list[dict], bool]:
    """The records of a JSON-lines file (one object per line) and whether its last line is cut off:
    a process killed while appending leaves a partial line, which is not a record (resume cuts it)."""
    lines = read_bytes(path, what, fix).split(b"\n")
    partial = lines.pop() != b""  # the text after the last newline: empty in a complete file
    records = [parse_json(line, f"{what} {path}, line {number}", fix, expect=dict)
               for number, line in enumerate(lines, 1) if line.strip()]
    return records, partial


_REQUIRED = object()


def require(mapping: dict, key: str, kind, source: str, fix: str, default=_REQUIRED, finite: bool = False,
            prefix: str = ""):
    """mapping[key], of `kind` (a type or a tuple of them; int is no bool, float takes int too); missing or
    of another type is one line (`damaged`) naming the field (`prefix` + key, e.g. 'algorithm.rng').
    With `default`, a missing key gives it."""
    if key not in mapping:
        if default is not _REQUIRED:
            return default
        raise damaged(source, f"field {prefix}{key} is missing", fix)
    value = mapping[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    ok = _fits(value, kinds)
    if ok and finite and isinstance(value, float) and not math.isfinite(value):
        ok = False
    if not ok:
        wanted = " or ".join(_KINDS.get(k, k.__name__) for k in kinds) + (" (finite)" if finite else "")
        shown = json.dumps(value, default=str)[:40] if not isinstance(value, (dict, list)) else kind_of(value)
        raise damaged(source, f"field {prefix}{key} must be {wanted}, got {shown}", fix)
    return value


def read_text(path, what: str, fix: str = "give a text file", limit: int = MAX_FILE_BYTES) -> str:
    """A text input (YAML, CSV, JSON lines) as str; binary content is one line, not a UnicodeDecodeError.

    `path`: a str, a Path, or an importlib.resources Traversable (a shipped file)."""
    try:
        if isinstance(path, (str, Path)):
            return read_bytes(path, what, fix, limit).decode("utf-8")
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise RopesearchError(f"{what} {path} is not UTF-8 text (byte {exc.start}): give a text file") from None


# ---- the shape of a parsed document --------------------------------------------------------------------
class ListOf:
    """A schema: a list whose every item fits `item` (`nonempty`: at least one)."""

    def __init__(self, item, nonempty: bool = False):
        self.item, self.nonempty = item, nonempty


class MapOf:
    """A schema: a JSON object whose every value fits `value` (`nonempty`: at least one key)."""

    def __init__(self, value, nonempty: bool = False):
        self.value, self.nonempty = value, nonempty


def _fits(value, kinds: tuple) -> bool:
    return any(isinstance(value, k) and not (isinstance(value, bool) and k in (int, float)) for k in kinds) or (
        float in kinds and isinstance(value, int) and not isinstance(value, bool))


def _wanted(schema) -> str:
    if isinstance(schema, ListOf):
        return f"a{' non-empty' if schema.nonempty else ''} list"
    if isinstance(schema, (MapOf, dict)):
        return f"a{' non-empty' if isinstance(schema, MapOf) and schema.nonempty else ''} JSON object"
    kinds = schema if isinstance(schema, tuple) else (schema,)
    return " or ".join(_KINDS.get(type(None) if k is None else k, getattr(k, "__name__", str(k))) for k in kinds)


def conform(value, schema, source: str, fix: str, where: str = "") -> None:
    """`value` (parsed JSON) fits `schema`, else one line (`damaged`) naming the first field that does not.

    A schema is a type or a tuple of types (None for null; float takes whole numbers, int and float no
    booleans); a dict {"key": schema, "key?": schema} for an object with those keys (more are allowed,
    `?` marks an optional one); ListOf(schema); MapOf(schema)."""
    shown = where or "top level"
    if isinstance(schema, tuple) and not all(isinstance(k, type) or k is None for k in schema):
        for option in schema:  # a union with structured options: the first that fits
            try:
                return conform(value, option, source, fix, where)
            except RopesearchError:
                continue
        got = kind_of(value) if isinstance(value, (dict, list)) or value is None else json.dumps(value, default=str)[:40]
        raise damaged(source, f"field {shown} must be {' or '.join(_wanted(o) for o in schema)}, got {got}", fix)
    if isinstance(schema, dict):
        ok = isinstance(value, dict)
    elif isinstance(schema, ListOf):
        ok = isinstance(value, list) and (value or not schema.nonempty)
    elif isinstance(schema, MapOf):
        ok = isinstance(value, dict) and (value or not schema.nonempty)
    else:
        ok = _fits(value, tuple(type(None) if k is None else k for k in (schema if isinstance(schema, tuple)
                                                                         else (schema,))))
    if not ok:
        got = kind_of(value) if isinstance(value, (dict, list)) or value is None else json.dumps(value, default=str)[:40]
        raise damaged(source, f"field {shown} must be {_wanted(schema)}, got {got}", fix)
    if isinstance(schema, dict):
        for key, inner in schema.items():
            name = key.removesuffix("?")
            if name not in value:
                if key.endswith("?"):
                    continue
                raise damaged(source, f"field {where + '.' if where else ''}{name} is missing", fix)
            conform(value[name], inner, source, fix, f"{where + '.' if where else ''}{name}")
    elif isinstance(schema, ListOf):
        for i, item in enumerate(value):
            conform(item, schema.item, source, fix, f"{where}[{i}]")
    elif isinstance(schema, MapOf):
        for key, item in value.items():
            conform(item, schema.value, source, fix, f"{where}[{json.dumps(key)}]" if where else json.dumps(key))
