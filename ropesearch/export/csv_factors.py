"""LongRoPE-style CSV: one factor per line, lowest dimension first (what LongRoPE's search writes)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from ropesearch.errors import RopesearchError
from ropesearch.own_files import atomic_write_text
from ropesearch.validate import read_text


def write_factor_csv(values: Sequence[float], path: str | Path) -> Path:
    atomic_write_text(path, "".join(f"{float(v)!r}\n" for v in values))
    return Path(path)


def read_factor_csv(path: str | Path, expected: int | None = None) -> list[float]:
    """Numbers one per line (or comma-separated on one line); a header line of text is skipped."""
    path = Path(path)
    if not path.is_file():
        raise RopesearchError(f"CSV file {path} does not exist")
    cells = [c.strip() for line in read_text(path, "CSV file").splitlines() for c in line.split(",")]
    cells = [c for c in cells if c]
    values = []
    for i, cell in enumerate(cells):
        try:
            value = float(cell)
        except ValueError:
            if i == 0:
                continue  # a header
            raise RopesearchError(f"CSV file {path}: {cell!r} is not a number") from None
        if not math.isfinite(value) or value <= 0:
            raise RopesearchError(f"CSV file {path}: value {len(values)} is {value}; factors must be finite and > 0")
        values.append(value)
    if not values:
        raise RopesearchError(f"CSV file {path} holds no numbers")
    if expected is not None and len(values) != expected:
        raise RopesearchError(f"CSV file {path} has {len(values)} factors but the model needs {expected}")
    return values
