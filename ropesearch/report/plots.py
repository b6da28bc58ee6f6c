"""The report's pictures, one function each; matplotlib without a display.

Every plot takes a method's colour from one table (`method_color`), labels its log axes with
plain numbers above and below every point (`log_ticks`), and keeps its legend, where the
window and critical-dimension lines are named, outside the axes, so no label covers data.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import matplotlib
from ropesearch.own_files import atomic_write_bytes

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FixedLocator, MaxNLocator, NullLocator  # noqa: E402

from ropesearch.rope import METHODS, RopeFactors, critical_dimension  # noqa: E402

STYLE = {"figsize": (8.4, 4.2), "dpi": 110}

# One colour per method in every plot, so "YaRN is blue" learnt from one picture reads every other
# one; the found factors get the loudest hue, and the unscaled model a grey (the floor, not a rival).
METHOD_COLORS = {"found": "#d62728", "none": "#7f7f7f", "pi": "#ff7f0e", "ntk": "#2ca02c",
                 "dynamic-ntk": "#bcbd22", "yarn": "#1f77b4", "llama3": "#8c564b"}
OTHER_COLORS = ("#9467bd", "#e377c2", "#17becf", "#393b79", "#637939", "#843c39", "#7b4173", "#3182bd")
FOUND_NAMES = {"found", "best", "best.json"}  # a search's best.json, as the report and the CLI's --factors name it
_other_colors: dict[str, str] = {}  # further factor files, in order of first appearance: the same in every plot of a report
SPOKEN = {name: method.spoken for name, method in METHODS.items()} | {"found": "the found factors"}


def method_of(label: str) -> str:
    """The method a line's label names: 'yarn x8' -> 'yarn', 'found (short)' and 'best.json' -> 'found';
    any other factor file is its own method."""
    word = label.split(" ")[0].lower()
    return "found" if word in FOUND_NAMES else word


def method_color(label: str) -> str:
    method = method_of(label)
    if method in METHOD_COLORS:
        return METHOD_COLORS[method]
    return _other_colors.setdefault(method, OTHER_COLORS[len(_other_colors) % len(OTHER_COLORS)])


def is_baseline(label: str) -> bool:
    return method_of(label) in METHODS


def spoken(label: str) -> str:
    """A method as a sentence names it (YaRN, the unscaled model); a factor file by its name."""
    return SPOKEN.get(method_of(label), label)


def _save(figure, path: Path) -> Path:
    import io

    figure.tight_layout()
    image = io.BytesIO()
    figure.savefig(image, format=Path(path).suffix.lstrip(".") or "png")
    atomic_write_bytes(path, image.getvalue())  # never through a link planted at PATH
    plt.close(figure)
    return path


def _legend_outside(axis) -> None:
    """The legend right of the axes: inside, `loc="best"` still lands on points when lines cross everywhere."""
    axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0)


# 1-2-5 ladders, sparse to dense: a log axis gets the sparsest one that labels it well
LADDERS = ((1, 2, 5), (1, 1.5, 2, 3, 5, 7), (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 7, 8, 9))


def log_ticks(low: float, high: float, fewest: int = 4, widest: float = 1.5) -> list[float]:
    """Plain-number ticks for a log axis over data in [low, high]: one at or past each end, so every point
    lies between two labels (a point at 165 reads against 150 and 200, not against 100 and nothing), from
    the sparsest ladder that gives `fewest` ticks without widening an end by more than `widest`; a range
    too narrow for any ladder gets evenly spaced ticks."""
    if high < low * 1.01:  # one value (every factor 1): a small range around it still gets ticks
        low, high = low / 1.05, high * 1.05
    for ladder in LADDERS:
        exponents = range(math.floor(math.log10(low)) - 1, math.ceil(math.log10(high)) + 1)
        candidates = sorted(round(m * 10.0 ** e, 12) for e in exponents for m in ladder)
        below = max(c for c in candidates if c <= low * (1 + 1e-9))
        above = min(c for c in candidates if c >= high * (1 - 1e-9))
        ticks = [c for c in candidates if below <= c <= above]
        if len(ticks) >= fewest and low / below <= widest and above / high <= widest:
            return ticks
    ticks = [t for t in MaxNLocator(5).tick_values(low, high) if t > 0]
    return [max(t for t in ticks if t <= low)] + [t for t in ticks if low < t < high] + [min(t for t in ticks if t >= high)]


def _readable_log_y(axis) -> None:
    """A log y axis labelled 15, 20, 150 rather than 2x10^1, no unlabelled minor ticks, limits just past the
    outer ticks (call after the data is drawn: the ticks come from it)."""
    axis.set_yscale("log")  # before the ticks: setting the scale resets locators and formatters
    low, high = axis.dataLim.intervaly
    ticks = log_ticks(float(low), float(high))
    axis.set_yticks(ticks, [f"{t:g}" for t in ticks])
    axis.yaxis.set_minor_locator(NullLocator())
    axis.set_ylim(ticks[0] / 1.04, ticks[-1] * 1.04)


def plot_factors(factor_sets: Mapping[str, RopeFactors], path: Path) -> Path:
    """Rescale factor per dimension pair, found factors against the baselines (log scale)."""
    figure, axis = plt.subplots(**STYLE)
    base = None
    for name, factors in factor_sets.items():
        base = factors.base
        found = not is_baseline(name)
        axis.plot(np.arange(base.n_factors), factors.long_factor, marker="o" if found else None, markersize=3,
                  linewidth=2.2 if found else 1.2, linestyle="-" if found else "--", label=name,
                  color=method_color(name))
        if found and factors.short_factor != factors.long_factor:
            axis.plot(np.arange(base.n_factors), factors.short_factor, linewidth=1, linestyle=":",
                      label=f"{name} (short)", color=method_color(name))
    if base is not None:
        critical = critical_dimension(base) // 2
        axis.axvline(critical, color="black", linewidth=0.8, linestyle=":", label=f"critical dim. (pair {critical})")
    _readable_log_y(axis)
    axis.set_xlabel("dimension pair i (fast -> slow)")
    axis.set_ylabel("rescale factor λ_i")
    axis.set_title("RoPE rescale factors per dimension")
    _legend_outside(axis)
    axis.grid(alpha=0.3)
    return _save(figure, path)


def plot_progress(progress: list[dict], path: Path, objective: str,
                  baselines: Mapping[str, float] | None = None) -> Path:
    """Best objective so far against full evaluations, evaluator seconds (summed over workers) and wall time,
    with YaRN's and NTK's score at the target as lines: without them a zoomed axis makes a search that never
    got below YaRN look good."""
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.8), dpi=STYLE["dpi"])
    best = [next(iter(p["best"].values())) for p in progress]
    xs = ([p["full_evals"] for p in progress], [p.get("evaluator_seconds", p.get("gpu_seconds")) for p in progress],
          [p["elapsed"] for p in progress])
    lines = {name: value for name, value in (baselines or {}).items()
             if name in ("yarn", "ntk") and value is not None and math.isfinite(value)}
    for axis, x, label in zip(axes, xs, ("full evaluations", "evaluator seconds (all workers)", "wall seconds")):
        axis.plot(x, best, marker=".", color=method_color("found"), label="found (best so far)")
        for name, value in lines.items():
            axis.axhline(value, color=method_color(name), linestyle="--", linewidth=1.2,
                         label=f"{SPOKEN[name]} ({value:.4g})")
        axis.set_xlabel(label)
        axis.set_ylabel(f"best {objective}")
        axis.grid(alpha=0.3)
    _legend_outside(axes[-1])
    yarn = f", {best[-1] / lines['yarn']:.3f}x YaRN" if "yarn" in lines else ""  # the verdict, for a glance
    figure.suptitle(f"Search progress: best {objective} {best[-1]:.4g}{yarn}"
                    + (" (dashed: the baselines at the target)" if lines else ""))
    return _save(figure, path)


def token_label(count: float) -> str:
    """Token counts as people write them: 256, 1k, 32k, 1M."""
    count = int(round(count))
    for unit, size in (("M", 1 << 20), ("k", 1 << 10)):
        if count >= size and count % size == 0:
            return f"{count // size}{unit}"
    return str(count)


def windows_of(table: dict) -> dict[str, int]:
    """A perplexity table's original window and, where a model in it is scaled, its target window."""
    windows = {}
    if table.get("original_context"):
        windows["original window"] = table["original_context"]
        scales = [v for v in (table.get("scales") or {}).values() if isinstance(v, (int, float)) and v > 1]
        if scales:
            windows["target window"] = int(round(table["original_context"] * max(scales)))
    return windows


def _token_axis(axis, lengths, table: dict) -> None:
    """Lengths as ticks in tokens, and the original (and target) windows as lines named in the legend."""
    axis.set_xscale("log", base=2)
    axis.xaxis.set_major_locator(FixedLocator(list(lengths)))
    axis.xaxis.set_minor_locator(NullLocator())
    axis.set_xticks(list(lengths), [token_label(n) for n in lengths])
    axis.set_xlabel("tokens")
    for (label, position), style in zip(windows_of(table).items(), (":", "-.")):
        if min(lengths) <= position <= max(lengths):
            axis.axvline(position, color="black", linewidth=0.8, linestyle=style,
                         label=f"{label} ({token_label(position)})")


def plot_perplexity(table: dict, path: Path) -> Path:
    """Perplexity against length, one line per model (its scale in the legend), log-log."""
    figure, axis = plt.subplots(**STYLE)
    lengths = table["lengths"]
    scales = table.get("scales") or {}
    for name, values in table["ppl"].items():
        scale = scales.get(name)
        label = name if scale is None or isinstance(scale, str) else f"{name} (x{scale:g})"
        axis.plot(lengths, [values[str(n)] for n in lengths], marker="o", label=label, color=method_color(name))
    _token_axis(axis, lengths, table)
    _readable_log_y(axis)
    axis.set_ylabel("perplexity")
    axis.set_title("Perplexity by length")
    _legend_outside(axis)
    axis.grid(alpha=0.3)
    return _save(figure, path)


def plot_relative(table: dict, path: Path, reference: str = "yarn") -> Path | None:
    """Each model's perplexity divided by the reference's (YaRN) at every length; None without one."""
    ppl = table["ppl"]
    if reference not in ppl:
        return None
    figure, axis = plt.subplots(**STYLE)
    lengths = table["lengths"]
    for name, values in ppl.items():
        if name == reference:
            continue
        axis.plot(lengths, [values[str(n)] / ppl[reference][str(n)] for n in lengths], marker="o", label=name,
                  color=method_color(name))
    axis.axhline(1.0, color=method_color(reference), linewidth=1.2, label=f"{reference} (= 1)")
    _token_axis(axis, lengths, table)
    _readable_log_y(axis)
    axis.set_ylabel(f"perplexity / {reference}'s")
    axis.set_title(f"Perplexity relative to {reference} (below 1: better)")
    _legend_outside(axis)
    axis.grid(alpha=0.3)
    return _save(figure, path)


def plot_loss(history: list[dict], path: Path) -> Path:
    """Fine-tuning loss and sequence length per step."""
    figure, axis = plt.subplots(**STYLE)
    steps = [h["step"] for h in history]
    axis.plot(steps, [h["loss"] for h in history], color="C0")
    axis.set_xlabel("step")
    axis.set_ylabel("loss", color="C0")
    twin = axis.twinx()
    twin.plot(steps, [h["length"] for h in history], color="C1", linestyle="--")
    twin.set_ylabel("sequence length", color="C1")
    axis.set_title("Fine-tuning")
    axis.grid(alpha=0.3)
    return _save(figure, path)


def plot_passkey(results: dict, path: Path, title: str = "Passkey retrieval") -> Path:
    """Accuracy heatmap: lengths (rows) x depths (columns)."""
    lengths, depths = results["lengths"], results["depths"]
    grid = np.array([[results["accuracy"][f"{n}@{d:g}"] for d in depths] for n in lengths])
    figure, axis = plt.subplots(figsize=(1.2 * len(depths) + 2.5, 0.6 * len(lengths) + 1.8), dpi=STYLE["dpi"])
    image = axis.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
    axis.set_xticks(range(len(depths)), [f"{d:g}" for d in depths])
    axis.set_yticks(range(len(lengths)), [str(n) for n in lengths])
    for (row, column), value in np.ndenumerate(grid):
        axis.text(column, row, f"{value:.0%}", ha="center", va="center", fontsize=8)
    axis.set_xlabel("depth of the key")
    axis.set_ylabel("tokens")
    axis.set_title(title)
    figure.colorbar(image, ax=axis, fraction=0.04)
    return _save(figure, path)


def plot_ruler(result: dict, path: Path, title: str = "RULER") -> Path | None:
    """Score heatmap: lengths (rows) x tasks (columns), with the average per length as the last column.
    None, and no file, while no length is complete (a run killed in its first cell)."""
    lengths = sorted(int(n) for n in result["average"])
    if not lengths:
        return None
    tasks = list(result["tasks"])
    grid = np.array([[result["scores"][t][str(n)] for t in tasks] + [result["average"][str(n)]] for n in lengths])
    figure, axis = plt.subplots(figsize=(0.75 * len(tasks) + 3.2, 0.5 * len(lengths) + 2.4), dpi=STYLE["dpi"])
    image = axis.imshow(grid * 100, vmin=0, vmax=100, cmap="RdYlGn", aspect="auto")
    axis.set_xticks(range(len(tasks) + 1), [t.replace("niah_", "") for t in tasks] + ["average"], rotation=45,
                    ha="right", fontsize=8)
    axis.set_yticks(range(len(lengths)), [f"{n // 1024}k" if n % 1024 == 0 else str(n) for n in lengths])
    axis.axvline(len(tasks) - 0.5, color="black", linewidth=1)
    for (row, column), value in np.ndenumerate(grid):
        axis.text(column, row, f"{100 * value:.0f}", ha="center", va="center", fontsize=7)
    axis.set_ylabel("tokens")
    axis.set_title(title)
    figure.colorbar(image, ax=axis, fraction=0.03)
    return _save(figure, path)
