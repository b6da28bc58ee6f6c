"""The factor file: a RoPE setting as JSON with a format tag and provenance.

    {"format": "ropesearch/factors@1",
     "rope": {method, rope_theta, rotary_dim, original_context, target_context,
              long_factor, short_factor, attention_factor, start_tokens, dynamic_factor, params},
     "constraints": {"monotone": bool},          # what the search space demanded
     "provenance": {model, data, objective, scores, ropesearch_version, created}}

Loading validates every field (and refuses a key the format does not define) and fails with one
line naming it.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ropesearch import __version__
from ropesearch.errors import RopesearchError
from ropesearch.own_files import atomic_write_text
from ropesearch.rope.factors import MAX_ATTENTION_FACTOR, MAX_FACTOR, RopeBase, RopeFactors
from ropesearch.units import MAX_TOKENS
from ropesearch.validate import read_json

FACTOR_FIX = "give a factor file ropesearch wrote (a run's best.json, an export's ropesearch_factors.json)"

FORMAT = "ropesearch/factors@1"
ROPE_FIELDS = ("method", "rope_theta", "rotary_dim", "original_context", "target_context", "long_factor",
               "short_factor", "attention_factor", "start_tokens", "dynamic_factor", "params")


def factors_to_dict(factors: RopeFactors, provenance: Mapping[str, Any] | None = None, monotone: bool | None = None) -> dict:
    document = {
        "format": FORMAT,
        "rope": {
            "method": factors.method,
            "rope_theta": factors.base.rope_theta,
            "rotary_dim": factors.base.rotary_dim,
            "original_context": factors.base.original_context,
            "target_context": factors.target_context,
            "long_factor": list(factors.long_factor),
            "short_factor": list(factors.short_factor),
            "attention_factor": factors.attention_factor,
            "start_tokens": factors.start_tokens,
            "dynamic_factor": factors.dynamic_factor,
            "params": dict(factors.params),
        },
        "constraints": {} if monotone is None else {"monotone": bool(monotone)},
        "provenance": {
            "ropesearch_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            **(provenance or {}),
        },
    }
    return document


def save_factors(
    factors: RopeFactors, path: str | Path, provenance: Mapping[str, Any] | None = None, monotone: bool | None = None
) -> Path:
    if monotone and not factors.is_monotone():
        raise RopesearchError("long_factor decreases somewhere but monotone=True was asked for")
    atomic_write_text(path, json.dumps(factors_to_dict(factors, provenance, monotone), indent=2) + "\n")
    return Path(path)


class _Fields:
    """Typed access to a JSON object that names the offending field in every error."""

    def __init__(self, source: str, data: Any, prefix: str):
        if not isinstance(data, dict):
            raise RopesearchError(f"{source}: field {prefix or 'top level'} must be a JSON object")
        self.source, self.data, self.prefix = source, data, prefix

    def fail(self, key: str, problem: str) -> RopesearchError:
        return RopesearchError(f"{self.source}: field {self.prefix}{key} {problem}")

    def only(self, known: tuple[str, ...]) -> None:
        """Refuse a key this format does not have: a typo (`start_token`) would otherwise be a default."""
        import difflib

        for key in self.data:
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
                hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(known)}"
                raise RopesearchError(f"{self.source}: field {self.prefix}{key} is not a field of "
                                      f"{self.prefix.rstrip('.') or 'a factor file'} ({hint})")

    def get(self, key: str, kind, required: bool = True, default=None):
        if key not in self.data or self.data[key] is None:
            if required:
                raise self.fail(key, "is missing")
            return default
        value = self.data[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if kind is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
            raise self.fail(key, f"must be {getattr(kind, '__name__', kind)}, got {json.dumps(value)[:40]}")
        if isinstance(value, float) and not math.isfinite(value):
            raise self.fail(key, f"must be finite, got {value}")
        return value

    def factors(self, key: str, n: int) -> list[float]:
        values = self.get(key, list)
        if len(values) != n:
            raise self.fail(key, f"has {len(values)} values but rotary_dim {2 * n} needs {n}")
        for i, v in enumerate(values):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= MAX_FACTOR:
                raise self.fail(f"{key}[{i}]", f"is {json.dumps(v)}: factors must be finite numbers > 0 and at "
                                f"most {MAX_FACTOR:g}")
        return [float(v) for v in values]


def factors_from_dict(document: Any, source: str = "factor file") -> tuple[RopeFactors, dict]:
    """Validate a parsed factor file; returns the factors and the whole document."""
    top = _Fields(source, document, "")
    fmt = top.get("format", str)
    if fmt != FORMAT:
        raise top.fail("format", f"is {fmt!r}, not a format this version reads (expected {FORMAT!r})")
    top.only(("format", "rope", "constraints", "provenance"))
    rope = _Fields(source, top.get("rope", dict), "rope.")
    rope.only(ROPE_FIELDS)
    rotary_dim = rope.get("rotary_dim", int)
    if rotary_dim < 2 or rotary_dim % 2:
        raise rope.fail("rotary_dim", f"must be an even number >= 2, got {rotary_dim}")
    theta = rope.get("rope_theta", float)
    if theta <= 1:
        raise rope.fail("rope_theta", f"must be > 1, got {theta}")
    original = rope.get("original_context", int)
    target = rope.get("target_context", int)
    for key, value in (("original_context", original), ("target_context", target)):
        if value < 1:
            raise rope.fail(key, f"must be >= 1, got {value}")
        if value > MAX_TOKENS:
            raise rope.fail(key, f"must be at most {MAX_TOKENS} tokens (128M), got {value}")
    n = rotary_dim // 2
    long_factor = rope.factors("long_factor", n)
    short_factor = rope.factors("short_factor", n)
    attention = rope.get("attention_factor", float)
    if not 0 < attention <= MAX_ATTENTION_FACTOR:
        raise rope.fail("attention_factor", f"must be > 0 and at most {MAX_ATTENTION_FACTOR:g}, got {attention}")
    start_tokens = rope.get("start_tokens", int, required=False, default=0)
    if start_tokens < 0:
        raise rope.fail("start_tokens", f"must be >= 0, got {start_tokens}")
    dynamic = rope.get("dynamic_factor", float, required=False)
    if dynamic is not None and dynamic < 1:
        raise rope.fail("dynamic_factor", f"must be >= 1, got {dynamic}")
    factors = RopeFactors(
        base=RopeBase(theta, rotary_dim, original),
        long_factor=long_factor,
        short_factor=short_factor,
        target_context=target,
        attention_factor=attention,
        start_tokens=start_tokens,
        method=rope.get("method", str, required=False, default="longrope"),
        params=rope.get("params", dict, required=False, default={}),
        dynamic_factor=dynamic,
    )
    constraints = _Fields(source, top.get("constraints", dict, required=False, default={}), "constraints.")
    constraints.only(("monotone",))
    if constraints.get("monotone", bool, required=False, default=False):
        for i in range(1, n):
            if long_factor[i] < long_factor[i - 1]:
                raise rope.fail(
                    "long_factor",
                    f"decreases at index {i} ({long_factor[i - 1]} -> {long_factor[i]}) but the file's "
                    "search space demanded non-decreasing factors",
                )
    return factors, document


def load_factors(path: str | Path, expect: RopeBase | None = None) -> RopeFactors:
    """Read and validate a factor file; with `expect`, also check it fits that model."""
    path = Path(path)
    if path.is_dir():
        raise RopesearchError(f"factor file {path} is a folder: give the factor file in it (a run's best.json, "
                              "or an exported model's ropesearch_factors.json)")
    if not path.exists():
        raise RopesearchError(f"factor file {path} does not exist")
    document = read_json(path, "factor file", FACTOR_FIX, expect=dict)  # a FIFO, deep nesting...: one line
    factors, _ = factors_from_dict(document, source=f"factor file {path}")
    if expect is not None:
        check_fits(factors, expect, source=f"factor file {path}")
    return factors


def factor_provenance(path: str | Path) -> dict:
    """The provenance of a factor file that load_factors accepted (empty where it has none)."""
    provenance = read_json(path, "factor file", FACTOR_FIX, expect=dict).get("provenance")
    return provenance if isinstance(provenance, dict) else {}


def check_fits(factors: RopeFactors, base: RopeBase, source: str = "factors") -> None:
    """The factors were made for a model with this RoPE (count, base, window)."""
    got = factors.base
    if got.rotary_dim != base.rotary_dim:
        raise RopesearchError(
            f"{source} has {got.n_factors} factors (rotary_dim {got.rotary_dim}) but the model rotates "
            f"{base.rotary_dim} dims ({base.n_factors} factors): made for another model"
        )
    if not math.isclose(got.rope_theta, base.rope_theta, rel_tol=1e-9):
        raise RopesearchError(f"{source} has rope_theta {got.rope_theta} but the model has {base.rope_theta}")
    if got.original_context != base.original_context:
        raise RopesearchError(
            f"{source} has original_context {got.original_context} but the model was trained at {base.original_context}"
        )
