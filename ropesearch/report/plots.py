"""The report's pictures, one function each; matplotlib without a display."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ropesearch.rope import RopeFactors, critical_dimension  # noqa: E402

STYLE = {"figsize": (7, 4.2), "dpi": 110}


def _save(figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def plot_factors(factor_sets: Mapping[str, RopeFactors], path: Path) -> Path:
    """Rescale factor per dimension pair, found factors against the baselines (log scale)."""
    figure, axis = plt.subplots(**STYLE)
    base = None
    for name, factors in factor_sets.items():
        base = factors.base
        found = not name.lower().startswith(("pi", "ntk", "yarn", "dynamic", "llama3", "none"))
        axis.plot(np.arange(base.n_factors), factors.long_factor, marker="o" if found else None, markersize=3,
                  linewidth=2.2 if found else 1.2, linestyle="-" if found else "--", label=name)
        if found and factors.short_factor != factors.long_factor:
            axis.plot(np.arange(base.n_factors), factors.short_factor, linewidth=1, label=f"{name} (short)")
    if base is not None:
        critical = critical_dimension(base) // 2
        axis.axvline(critical, color="grey", linewidth=0.8, linestyle=":")
        axis.text(critical + 0.3, axis.get_ylim()[0] * 1.05, "critical dim.", color="grey", fontsize=8)
    axis.set_yscale("log")
    axis.set_xlabel("dimension pair i (fast -> slow)")
    axis.set_ylabel("rescale factor λ_i")
    axis.set_title("RoPE rescale factors per dimension")
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    return _save(figure, path)


def plot_progress(progress: list[dict], path: Path, objective: str) -> Path:
    """Best objective so far against full evaluations, evaluator seconds (summed over workers) and wall time."""
    figure, axes = plt.subplots(1, 3, figsize=(12, 3.8), dpi=STYLE["dpi"])
    best = [next(iter(p["best"].values())) for p in progress]
    axes[0].plot([p["full_evals"] for p in progress], best, marker=".")
    axes[0].set_xlabel("full evaluations")
    axes[1].plot([p.get("evaluator_seconds", p.get("gpu_seconds")) for p in progress], best, marker=".", color="C1")
    axes[1].set_xlabel("evaluator seconds (all workers)")
    axes[2].plot([p["elapsed"] for p in progress], best, marker=".", color="C2")
    axes[2].set_xlabel("wall seconds")
    for axis in axes:
        axis.set_ylabel(f"best {objective}")
        axis.grid(alpha=0.3)
    figure.suptitle("Search progress")
    return _save(figure, path)


def token_label(count: float) -> str:
    """Token counts as people write them: 256, 1k, 32k, 1M."""
    count = int(round(count))
    for unit, size in (("M", 1 << 20), ("k", 1 << 10)):
        if count >= size and count % size == 0:
            return f"{count // size}{unit}"
    return str(count)


def _token_axis(axis, lengths, table: dict) -> None:
    """Lengths as ticks in tokens, and the original (and target) windows as labelled lines."""
    from matplotlib.ticker import FixedLocator, NullLocator

    axis.set_xscale("log", base=2)
    axis.xaxis.set_major_locator(FixedLocator(list(lengths)))
    axis.xaxis.set_minor_locator(NullLocator())
    axis.set_xticks(list(lengths), [token_label(n) for n in lengths])
    axis.set_xlabel("tokens")
    windows = {"original window": table.get("original_context")}
    scales = [v for v in (table.get("scales") or {}).values() if isinstance(v, (int, float)) and v > 1]
    if windows["original window"] and scales:
        windows["target window"] = windows["original window"] * max(scales)
    for (label, position), color in zip(windows.items(), ("grey", "C3")):
        if position and min(lengths) <= position <= max(lengths):
            axis.axvline(position, color=color, linewidth=0.8, linestyle=":")
            axis.annotate(f"{label} ({token_label(position)})", (position, 0.98), xycoords=("data", "axes fraction"),
                          rotation=90, ha="right", va="top", fontsize=7, color=color)


def _plain_log_y(axis) -> None:
    """A log y axis labelled 20, 30, 1.5 rather than 2x10^1 (after set_yscale, which resets formatters)."""
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda value, _: f"{value:g}")
    axis.yaxis.set_major_formatter(plain)
    axis.yaxis.set_minor_formatter(plain)


def plot_perplexity(table: dict, path: Path) -> Path:
    """Perplexity against length, one line per model (its scale in the legend), log-log."""
    figure, axis = plt.subplots(**STYLE)
    lengths = table["lengths"]
    scales = table.get("scales") or {}
    for name, values in table["ppl"].items():
        scale = scales.get(name)
        label = name if scale is None or isinstance(scale, str) else f"{name} (x{scale:g})"
        axis.plot(lengths, [values[str(n)] for n in lengths], marker="o", label=label)
    _token_axis(axis, lengths, table)
    axis.set_yscale("log")
    _plain_log_y(axis)
    axis.set_ylabel("perplexity")
    axis.set_title("Perplexity by length")
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3, which="both")
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
        axis.plot(lengths, [values[str(n)] / ppl[reference][str(n)] for n in lengths], marker="o", label=name)
    axis.axhline(1.0, color="black", linewidth=1, label=f"{reference} (= 1)")
    _token_axis(axis, lengths, table)
    axis.set_yscale("log")
    _plain_log_y(axis)
    axis.set_ylabel(f"perplexity / {reference}'s")
    axis.set_title(f"Perplexity relative to {reference} (below 1: better)")
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3, which="both")
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
