"""The perplexity table of `eval` and `baselines`: factor sets x lengths on one set of windows, the
unscaled model's native-window floor, each factor file at the original window, and the table as text."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ropesearch.errors import RopesearchError
from ropesearch.evaluate import make_evaluator
from ropesearch.export.factor_file import check_fits, factor_provenance, load_factors
from ropesearch.models import config_of
from ropesearch.rope import RopeFactors, make_factors
from ropesearch.tables import aligned
from ropesearch.data.samples import native_windows
from ropesearch.export.transformers_config import factors_as_configured
from ropesearch.evaluate.runs import EvalSetup, environment, prefix_windows, window_parts


def _key(factors: RopeFactors) -> tuple:
    return (factors.long_factor, factors.short_factor, factors.attention_factor, factors.start_tokens,
            factors.dynamic_factor)


def _scored(scores: list, what: str) -> list:
    """The scores, or one line saying why a worker could not score one (see Score.failed)."""
    for score in scores:
        if score.failed:
            raise RopesearchError(f"{score.factors.method} could not be scored at {what}: {score.failed}")
    return scores


def native_column(evaluator, run: EvalSetup, lengths: Sequence[int]) -> dict[str, float]:
    """Perplexity of the unscaled model reading the first L tokens of the same windows in
    back-to-back windows of its own trained length, for each length L that is a multiple of it:
    the floor an extension is measured against (same text, no extrapolation)."""
    original = run.base.original_context
    chunks = native_windows(run.windows, original)
    (score,) = _scored(evaluator.score([make_factors("none", run.base, 1.0)], chunks, [original]),
                       f"the unscaled model in {original}-token windows")
    per_window = run.windows[0].length // original
    nll = np.asarray(score.window_nll[original]).reshape(len(run.windows), per_window)
    # lengths that are whole multiples of the window only: the column scores exactly the same tokens
    return {str(n): float(np.exp(nll[:, : n // original].mean())) for n in lengths
            if n >= original and n % original == 0}


def factor_labels(factor_files: Sequence[str]) -> dict[str, str]:
    """Unique column labels for factor files: `LABEL=PATH` names one; otherwise the file name, or the
    run folder's name where file names collide (runA/best.json, runB/best.json -> runA, runB)."""
    named, plain = {}, []
    for spec in factor_files:
        spec = str(spec)
        label, sep, path = spec.partition("=")
        if sep and label and not Path(spec).exists():
            if label in named:
                raise RopesearchError(f"--factors label {label!r} is given twice: choose another name")
            if not path:
                raise RopesearchError(f"--factors {spec}: no file after the label: give LABEL=PATH")
            named[label] = path
        else:
            plain.append(spec)
    names = [Path(p).name for p in plain]
    labels = {}
    for path, name in zip(plain, names):
        label = name if names.count(name) == 1 else (Path(path).resolve().parent.name or name)
        base, n = label, 2
        while label in labels or label in named:
            label, n = f"{base}-{n}", n + 1
        labels[label] = path
    return labels | named


def baseline_table(run: EvalSetup, lengths: Sequence[int], methods: Sequence[str] = (),
                   factor_files: Sequence[str] = (), scale: float | None = None, fixed_scale: bool = False,
                   per_length: bool = False, native: bool = False, workers=None, **evaluator_options) -> dict:
    """Perplexity by length for baseline methods and factor files, in as few passes as possible.

    Every column is one deployable model at one scale: a method at `scale` (default: the longest
    length / original window) at every length, a factor file at its own. per_length=True instead
    rescales each method to length / original window at each length (labelled "METHOD@per-length").
    Identical factor sets are scored once, and sets with the same lengths share batched passes.
    With factor files, their perplexity at the original window is compared with the unscaled
    model's (`original_window`; see original_window_warnings). `native` adds the unscaled model
    reading the same text in windows of its own length (`native_column`).
    `workers` (WorkerOptions): score on a pool of Ray workers (see ropesearch.evaluate.workers).
    """
    del fixed_scale  # every column has a fixed scale now unless per_length asks otherwise
    longest_scale = max(1.0, max(lengths) / run.base.original_context)
    scale = scale or longest_scale
    paths = factor_labels(factor_files)
    files = {label: load_factors(path) for label, path in paths.items()}
    for name, factors in files.items():
        check_fits(factors, run.base, source=f"factor file {name}")
    label_of = {m: f"{m}@per-length" if per_length and m not in ("none", "as-is") else m for m in methods}
    unique: dict[tuple, tuple[RopeFactors, set[int]]] = {}
    owner: dict[tuple[str, int], tuple] = {}
    for name in list(methods) + list(files):
        for length in lengths:
            if name in files:
                factors = files[name]
            elif name == "as-is":  # the model as its own config sets up RoPE

                factors = factors_as_configured(config_of(run.model), run.base)
            else:
                length_scale = max(1.0, length / run.base.original_context) if per_length else scale
                factors = make_factors(name, run.base, 1.0 if name == "none" else length_scale)
            key = _key(factors)
            unique.setdefault(key, (factors, set()))[1].add(length)
            owner[name, length] = key
    by_lengths: dict[tuple[int, ...], list[tuple]] = {}
    for key, (_, key_lengths) in unique.items():
        by_lengths.setdefault(tuple(sorted(key_lengths)), []).append(key)
    evaluator = make_evaluator(run.model, model_spec=run.model_spec, max_length=max(lengths), workers=workers,
                               **evaluator_options)
    try:
        scores = {}
        for key_lengths, keys in by_lengths.items():
            windows = prefix_windows(run.windows, max(key_lengths))
            scores.update(zip(keys, evaluator.score([unique[k][0] for k in keys], windows, key_lengths)))
        for name, key in owner.items():
            if scores[key].failed:
                raise RopesearchError(f"{name[0]} could not be scored at {name[1]} tokens: {scores[key].failed}")
        names = list(methods) + list(files)
        labels = {n: label_of.get(n, n) for n in names}
        scales = {labels[m]: 1.0 if m == "none" else ("per-length" if per_length else scale) for m in methods}
        if "as-is" in methods:
            scales["as-is"] = unique[owner["as-is", lengths[0]]][0].scale
        scales |= {name: factors.scale for name, factors in files.items()}
        ppl = {labels[n]: {str(length): scores[owner[n, length]].ppl[length] for length in lengths} for n in names}
        if native and run.windows[0].length >= run.base.original_context:
            native_label = f"none ({run.base.original_context} windows)"
            ppl[native_label] = native_column(evaluator, run, lengths)
            scales[native_label] = 1.0
        table = {
            "model": run.model_spec,
            "data": run.data_spec,
            "windows": [w.name for w in run.windows],
            **window_parts(run.windows),
            "options": run.options | {"scale": "length / original window" if per_length else scale},
            "original_context": run.base.original_context,
            "lengths": list(lengths),
            "scales": scales,
            "ppl": ppl,
            "seconds": {labels[n]: sum(scores[k].seconds for k in {owner[n, length] for length in lengths}) for n in names},
            "environment": environment(run.model),
        }
        if files:
            guards = {label: factor_provenance(path).get("short_guard") for label, path in paths.items()}
            table["original_window"] = _original_window(run, evaluator, files, guards)
        return table
    finally:
        if workers is not None and evaluator is not workers:  # a pool we started (not one handed in)
            evaluator.close()


def _original_window(run: EvalSetup, evaluator, files: dict[str, RopeFactors], guards: dict[str, dict | None]) -> dict:
    """Each factor file at the original window (its short factors there) against the unscaled model,
    with the short guard its search measured (None: an unguarded search, or not made by a search)."""
    original = run.base.original_context
    if run.windows[0].length < original:
        return {}
    sets = [make_factors("none", run.base, 1.0)] + list(files.values())
    scores = _scored(evaluator.score(sets, prefix_windows(run.windows, original), [original]),
                     f"the original window ({original} tokens)")
    unscaled = scores[0].ppl[original]
    return {name: {"length": original, "ppl": s.ppl[original], "unscaled": unscaled, "ratio": s.ppl[original] / unscaled,
                   "short_guard": guards.get(name)}
            for name, s in zip(files, scores[1:])}


def original_window_warnings(table: dict, tolerance: float = 0.01) -> list[str]:
    """One line per factor file that is worse than the unscaled model at the original window."""
    lines = []
    for name, row in (table.get("original_window") or {}).items():
        if row["ratio"] > 1 + tolerance:
            lines.append(f"warning: {name} is {row['ratio'] - 1:.1%} worse than the unscaled model at the original "
                         f"window ({row['ppl']:.2f} vs {row['unscaled']:.2f} at {row['length']} tokens): "
                         + short_remedy(row.get("short_guard")))
    return lines


def short_remedy(guard) -> str:
    """What to change, by how the factors were found. A guarded search already kept short_factor = 1
    and capped the attention factor on its own text: only a tighter cap helps (recover-short tunes
    short factors, which cannot undo an attention factor). Without the guard, the guard is missing."""
    if isinstance(guard, dict) and isinstance(guard.get("attention_cap"), (int, float)):
        where = f" on {guard['windows']} windows of its search text" if guard.get("windows") else " on its search windows"
        return (f"its search's short guard capped the attention factor at {guard['attention_cap']:.3f}{where}, "
                "where it cost less than on this text; search again with a smaller --short-tolerance (a plan "
                "search stage's short_tolerance) to lower the cap")
    return ("it was not found by a guarded search: search with the short guard (the default: no "
            "--no-short-guard, and no short_tolerance: null in a plan) or add a recover-short stage")


def _header(name: str, scale) -> str:
    return name if scale is None or isinstance(scale, str) else f"{name}@x{scale:g}"


def format_table(table: dict) -> str:
    """Rows = lengths, columns = models, each with its scale in the header; perplexity with 2 decimals
    (4 significant digits above 1000)."""
    names = list(table["ppl"])
    original = table.get("original_context")
    scales = table.get("scales", {})
    header = ["length", "x_window"] + [_header(n, scales.get(n)) for n in names]
    rows = []
    for length in table["lengths"]:
        cells = [str(length), f"{length / original:g}" if original else ""]
        for name in names:
            value = table["ppl"][name].get(str(length))
            cells.append("-" if value is None else format_ppl(value))
        rows.append(cells)
    return aligned(header, rows)


def format_ppl(value: float) -> str:
    """A perplexity as tables show it: 2 decimals, 4 significant digits above 1000, failed if not finite."""
    return "failed" if not math.isfinite(value) else f"{value:.4g}" if value >= 1000 else f"{value:.2f}"


def failed_cells(table: dict) -> list[str]:
    """"name@length" of every non-finite perplexity in a table: failed, never a result."""
    return [f"{name}@{length}" for name, row in table["ppl"].items() for length, value in row.items()
            if value is not None and not math.isfinite(value)]
