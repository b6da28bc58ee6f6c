"""The one table writer: every table ropesearch and eval/ print or write comes from here.

`markdown` makes a GitHub Markdown table (reports, results READMEs); `aligned` makes plain text
with right-justified columns (the CLI's perplexity and RULER tables). Cells are strings already
formatted by the caller (anything else is str()-ed); a row shorter than the header gets empty cells.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def _cells(row: Iterable, width: int) -> list[str]:
    """A row as `width` strings: str() of each cell, empty ones after the last."""
    cells = [str(cell) for cell in row]
    return cells + [""] * (width - len(cells))


def markdown_lines(header: Sequence, rows: Iterable[Iterable]) -> list[str]:
    """A Markdown table as lines: "| a | b |", "|---|---|", then one line a row.

    An empty cell is one space between its bars ("| |"); a "|" in a cell is escaped as "\\|"."""
    def line(cells: list[str]) -> str:
        return "|" + "|".join(" " + c.replace("|", "\\|") + " " if c else " " for c in cells) + "|"

    width = len(header)
    return [line(_cells(header, width)), "|" + "---|" * width] + [line(_cells(row, width)) for row in rows]


def markdown(header: Sequence, rows: Iterable[Iterable]) -> str:
    """`markdown_lines` joined by newlines, no newline at the end."""
    return "\n".join(markdown_lines(header, rows))


def aligned(header: Sequence, rows: Iterable[Iterable], sep: str = "  ", rule: bool = True) -> str:
    """Plain text: every column right-justified to its widest cell, columns joined by `sep`, and under
    the header a line of dashes as wide as each column (none with rule=False); no newline at the end."""
    width = len(header)
    table = [_cells(header, width)] + [_cells(row, width) for row in rows]
    widths = [max(len(cells[i]) for cells in table) for i in range(width)]
    lines = [sep.join(c.rjust(w) for c, w in zip(cells, widths)) for cells in table]
    if rule:
        lines.insert(1, sep.join("-" * w for w in widths))
    return "\n".join(lines)


__all__ = ["aligned", "markdown", "markdown_lines"]
