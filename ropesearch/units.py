"""Token counts as people write them: 2048, 2k (2048), 32k, 1.5k, 1M (1048576); one parser for every
length option, plan setting and Python call, exact, and bounded (MAX_TOKENS) like the scale (MAX_SCALE)."""

from __future__ import annotations

import re
from fractions import Fraction
from collections.abc import Iterable

from ropesearch.errors import RopesearchError

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20}
_PATTERN = re.compile(r"^\s*(\d{1,30})(?:\.(\d{1,30}))?\s*([kKmM]?)\s*$")
MAX_TOKENS = 1 << 27  # 128M tokens: beyond any window a model is extended to (bounds typos like 1e12)
MAX_SCALE = 1024  # the largest extension ratio (target / original window)
_EXAMPLES = "a token count like 2048, 2k or 1M"


def parse_tokens(value: str | int, what: str = "a token count", bounded: bool = True) -> int:
    """`2k` -> 2048, `1M` -> 1048576, `1.5k` -> 1536, `300` -> 300, exactly (no float on the way);
    a fraction of a token, more than MAX_TOKENS or anything else is an error naming `what`."""
    if isinstance(value, bool):
        raise RopesearchError(f"{what} must be {_EXAMPLES}, got {value!r}")
    if isinstance(value, int):
        count = value
    else:
        match = _PATTERN.match(str(value))
        if not match:
            raise RopesearchError(f"{what} must be {_EXAMPLES}, got {value!r}")
        whole, fraction, unit = match.groups()
        exact = Fraction(f"{whole}.{fraction or 0}") * _UNITS[unit.lower()]
        if exact.denominator != 1:
            raise RopesearchError(f"{what} must be a whole number of tokens, got {value!r} ({float(exact):g})")
        count = int(exact)
    if bounded:
        _check_bound(count, what, value)
    return count


def _check_bound(count: int, what: str, value) -> None:
    if count > MAX_TOKENS:
        raise RopesearchError(f"{what} must be at most {MAX_TOKENS} tokens (128M), got {value!r}")


def parse_token_list(text: str | Iterable, what: str = "--lengths") -> list[int]:
    """Comma-separated token counts (or a list of them), sorted, duplicates removed, each >= 2."""
    items = text.split(",") if isinstance(text, str) else list(text)
    if isinstance(text, str) and text.strip() and not all(x.strip() for x in items):
        fixed = ",".join(x.strip() for x in items if x.strip())
        raise RopesearchError(f"{what} has an empty item in {text!r} (a doubled or trailing comma): "
                              f"give {fixed or 'token counts like 16384,32k'}")
    try:
        lengths = sorted({parse_tokens(x, what, bounded=False) for x in items})
    except RopesearchError:
        raise RopesearchError(f"{what} must be comma-separated token counts like 16384,32k, got {text!r}") from None
    if not lengths or lengths[0] < 2:
        raise RopesearchError(f"{what} must be token counts >= 2, got {text!r}")
    _check_bound(lengths[-1], what, lengths[-1])
    return lengths


def token_count_type(minimum: int = 0):
    """A click parameter type accepting 2048, 2k, 1M, at least `minimum` (built lazily: the library
    does not need click)."""
    import click

    class TokenCount(click.ParamType):
        name = "TOKENS"

        def convert(self, value, param, ctx):
            what = f"--{param.name.replace('_', '-')}" if param else "a token count"
            try:
                tokens = parse_tokens(value, what)
            except RopesearchError as exc:
                self.fail(str(exc), param, ctx)
            if tokens < minimum:
                self.fail(f"{what} must be at least {minimum} tokens, got {value!r}", param, ctx)
            return tokens

    return TokenCount()
