"""`ropesearch report RUN_DIR`: markdown plus PNG plots from a search or pipeline run directory.

Every folder under RUN_DIR that holds a search (best.json, progress.json), a fine-tuning
history (history.json) or perplexity tables (JSON with "ppl" and "lengths") gets a section.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

from ropesearch.errors import RopesearchError
from ropesearch.evaluate.baselines import format_table
from ropesearch.export.factor_file import factors_from_dict
from ropesearch.own_files import atomic_write_text
from ropesearch.report import sources
from ropesearch.report.plots import (is_baseline, plot_factors, plot_loss, plot_passkey, plot_perplexity,
                                     plot_progress, plot_relative, plot_ruler, spoken, windows_of)
from ropesearch.rope import make_factors
from ropesearch.tables import markdown_lines
from ropesearch.search.screening import screen_rank_correlation

SKIP = {"report", "model", "checkpoint", "hf", "vllm", "csv"}
# JSON files of a run that hold no results table: read by their own section, or not by the report at all
NOT_TABLES = {"config.json", "best.json", "progress.json", "history.json", "checkpoint.json", "done.json",
              "plan.json", "spent.json", "state.json"}


def _skipped(relative: Path) -> bool:
    """Folders that hold no results: outputs, weights, and fine-tuning's staging folders (.checkpoint.*)."""
    return any(part in SKIP or part.startswith(".checkpoint.") for part in relative.parts)


def _search_section(folder: Path, out: Path, tag: str) -> list[str]:
    lines = []
    config = sources.search_config(folder / "config.json")
    if config:
        lines += [f"Model `{config.get('model')}`, data `{config.get('data')}`, target {config.get('target_length')} "
                  f"tokens, objective `{config.get('objective')}`, space `{config.get('space', {}).get('name')}`, "
                  f"seed {config.get('seed')}; search windows: {', '.join(config.get('windows', []))}.", ""]
    if (folder / "best.json").is_file():
        document = sources.best_document(folder / "best.json")
        factors, _ = factors_from_dict(document, source=f"factor file {folder / 'best.json'}")
        provenance = document["provenance"]
        scores = provenance.get("scores", {})
        baselines = {f"{m} x{factors.scale:g}": make_factors(m, factors.base, factors.scale) for m in ("pi", "ntk", "yarn")}
        plot_factors({"found": factors, **baselines}, out / f"{tag}factors.png")
        lines += ["Scores on the search windows: " + ", ".join(f"{k} = {v:.4f}" for k, v in scores.items())
                  + f"; attention factor {factors.attention_factor:.4f}, start tokens {factors.start_tokens}, "
                  f"{provenance.get('full_evaluations', '?')} full evaluations.", ""]
        if scores and provenance.get("baselines"):
            target = next(iter(scores))
            lines += [f"On the search windows ({target}, lower is better) the found factors score "
                      f"{comparison(next(iter(scores.values())), _ordered(provenance['baselines'], TARGET_ORDER))}.", ""]
        lines += [f"![factors per dimension]({tag}factors.png)", ""]
        lines += markdown_lines(["i", "found long", "found short", *baselines],
                                [[str(i), f"{long:.3f}", f"{short:.3f}"] + [f"{b.long_factor[i]:.3f}" for b in baselines.values()]
                                 for i, (long, short) in enumerate(zip(factors.long_factor, factors.short_factor))])
        lines.append("")
    progress = sources.progress(folder / "progress.json")
    if progress:
        plot_progress(progress, out / f"{tag}progress.png", next(iter(progress[-1]["best"])), search_baselines(folder))
        last = progress[-1]
        wall, evaluator = last["elapsed"] / 60, last.get("evaluator_seconds", last.get("gpu_seconds", 0)) / 60
        # more in the evaluator than on the wall clock: workers scoring side by side, or a run from before the
        # baselines' scoring counted in the wall time; said so, not shown as if it were part of the wall time
        spent = (f"{wall:.1f} min wall over all sessions, {evaluator:.1f} min of it in the evaluator" if evaluator <= wall
                 else f"{wall:.1f} min wall over all sessions and {evaluator:.1f} min in the evaluator, summed over "
                 "candidates (more: workers scoring in parallel, or baselines outside the wall time of older runs)")
        lines += [f"{len(progress)} generations, {last['full_evals']} full evaluations (+{last['screen_evals']} "
                  f"screened), {spent}.",
                  "", f"![search progress]({tag}progress.png)", ""]
    lines += _screen_lines(folder)
    return lines


def _history(folder: Path) -> list[dict]:
    return sources.history(folder / "history.jsonl")[0]


def search_baselines(folder: Path) -> dict[str, float]:
    """The baselines' scores at the target on the search windows (the search's first objective): the true
    methods best.json's provenance records, else (runs that scored none: progressive, short regime) the
    seed rows of the history (origin seed:yarn...), which are the methods as the search space encodes them."""
    best = folder / "best.json"
    recorded = sources.best_document(best)["provenance"].get("baselines") if best.exists() else None
    if recorded:
        return dict(recorded)
    seeds = {}
    for record in _history(folder):
        origin, metrics = record.get("origin", ""), record.get("metrics") or {}
        if origin.startswith("seed:") and metrics and record.get("fidelity", "full") == "full":
            seeds.setdefault(origin.removeprefix("seed:"), next(iter(metrics.values())))
    return seeds


TARGET_ORDER = ("yarn", "ntk", "pi", "dynamic-ntk", "llama3", "none")  # the rival to beat first
ORIGINAL_ORDER = ("none", "yarn", "ntk", "pi", "dynamic-ntk", "llama3")  # at the original window: the unscaled model


def _ordered(scores: dict[str, float], order: tuple[str, ...]) -> dict[str, float]:
    """Finite scores, the named methods in `order` first (a failed baseline, inf, is no comparison)."""
    rank = {name: i for i, name in enumerate(order)}
    return {name: scores[name] for name in sorted(scores, key=lambda n: rank.get(n, len(order)))
            if isinstance(scores[name], (int, float)) and math.isfinite(scores[name])}


def _ratio(ratio: float) -> str:
    """Three decimals, four where three would round a real difference to 1.000x."""
    return f"{ratio:.3f}x" if round(ratio, 3) != 1 or ratio == 1 else f"{ratio:.4f}x"


def comparison(score: float, baselines: dict[str, float]) -> str:
    """'20.65: below YaRN (20.84, 0.991x) and above the unscaled model (...)' for perplexities."""
    parts = [f"{'below' if score < value else 'above' if score > value else 'level with'} {spoken(name)} "
             f"({value:.2f}, {_ratio(score / value)})" for name, value in baselines.items() if value > 0]
    if not parts:
        return f"{score:.2f}"
    return f"{score:.2f}: " + (parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1])


def verdict_lines(table: dict) -> list[str]:
    """One sentence per found model of a perplexity table: below or above each baseline, with the ratio,
    at the target window and at the original window (the lengths the table has of the two)."""
    lengths = {str(n) for n in table["lengths"]}
    ppl = table["ppl"]
    baselines = {name: values for name, values in ppl.items() if is_baseline(name)}
    windows = windows_of(table)
    places = [(windows.get("target window"), "the target", TARGET_ORDER),
              (windows.get("original window"), "the original window", ORIGINAL_ORDER)]
    places = [(n, role, order) for n, role, order in places if n is not None and str(n) in lengths]
    lines = []
    for name, values in ppl.items():
        if is_baseline(name) or not baselines:
            continue
        clauses = [f"at {n} tokens ({role}) {spoken(name)} score "
                   + comparison(values[str(n)], _ordered({b: v[str(n)] for b, v in baselines.items()}, order))
                   for n, role, order in places if values.get(str(n)) is not None]  # null: not measured
        if not clauses:
            continue
        sentence = "; ".join(clauses)
        lines += [sentence[0].upper() + sentence[1:] + " (perplexity, lower is better).", ""]
    return lines


def _screen_lines(folder: Path) -> list[str]:
    """How well the screen ranked the candidates that were also scored in full."""
    records, partial = sources.history(folder / "history.jsonl")
    cut = ([f"history.jsonl ends in a partial line (a process stopped while writing it, or the search is "
            f"running): read up to it, {len(records)} records.", ""] if partial else [])
    rank = screen_rank_correlation(records)
    if not rank["pairs"]:
        return cut
    if rank["spearman"] is None:
        return cut + [f"Screening: {rank['pairs']} candidates were scored both screened and in full (too few to rank).", ""]
    return cut + [f"Screening: over the {rank['pairs']} candidates scored both screened and in full, the screen's ranking "
            f"agrees with the full score's with Spearman {rank['spearman']:.2f} (Kendall {rank['kendall']:.2f}); "
            "promotion keeps only the screen's best, so this is the agreement among promising candidates.", ""]


def _finetune_section(folder: Path, out: Path, tag: str) -> list[str]:
    history = sources.finetune_history(folder / "history.json")
    if not history:
        return []
    plot_loss(history, out / f"{tag}loss.png")
    return [f"{len(history)} steps, final loss {history[-1]['loss']:.4f} at length {history[-1]['length']}, "
            f"{history[-1]['seconds'] / 60:.1f} min.", "", f"![fine-tuning loss]({tag}loss.png)", ""]


def _passkey_lines(path: Path, results: dict, out: Path, tag: str) -> list[str]:
    lines = [f"Passkey retrieval ({path.name}): accuracy by length, mean over depths.", ""]
    first = next(iter(results.values()))
    rows = []
    for length in first["lengths"]:
        cells = [sum(r["accuracy"][f"{length}@{d:g}"] for d in r["depths"]) / len(r["depths"]) for r in results.values()]
        rows.append([str(length)] + [f"{c:.0%}" for c in cells])
    lines += markdown_lines(["tokens", *results], rows) + [""]
    for name, result in results.items():
        image = f"{tag}passkey-{path.stem}-{name.replace('/', '_')}.png"
        plot_passkey(result, out / image, f"Passkey: {name}")
        lines += [f"![passkey {name}]({image})", ""]
    return lines


def _lm_eval_lines(path: Path, results: dict) -> list[str]:
    rows = [[name, task, metric.split(",")[0], f"{value:.4g}"] for name, run in results.items()
            for task, metrics in run["results"].items() for metric, value in metrics.items()
            if isinstance(value, (int, float)) and "stderr" not in metric and metric != "sample_len"]
    return [f"lm-eval ({path.name}):", ""] + markdown_lines(["factors", "task", "metric", "value"], rows) + [""]


def _ruler_lines(path: Path, document: dict, out: Path, tag: str) -> list[str]:
    from ropesearch.tasks.ruler_eval import check_ruler_json, format_ruler

    try:
        check_ruler_json(document, path)
    except RopesearchError as error:  # the rest of the report still comes
        return [f"RULER ({path.name}): left out, {error}", ""]
    results = document["ruler"]
    environment = document.get("environment", {})
    lines = [f"RULER ({path.name}): model `{document.get('model')}`, essays from `{document.get('data')}`, seed "
             f"{document.get('seed')}, {next(iter(results.values()))['samples']} samples per task and length; scores "
             f"in % (RULER's string_match_all); {environment.get('device', '?')}, {environment.get('date', '?')}.",
             "", "```", format_ruler(results), "```", ""]
    for name, result in results.items():
        image = f"{tag}ruler-{path.stem}-{name.replace('/', '_')}.png"
        if plot_ruler(result, out / image, f"RULER: {name}"):
            lines += [f"![RULER {name}]({image})", ""]
    return lines


def _table_sections(folder: Path, out: Path, tag: str) -> list[str]:
    lines = []
    for path in sorted(folder.glob("*.json")):
        if path.name in NOT_TABLES:
            continue
        try:
            table = sources.table(path)
        except RopesearchError as error:  # as for RULER: that table is left out, said so, and the report goes on
            lines += [f"Results {path.name}: left out, {error}", ""]
            continue
        if isinstance(table, dict) and isinstance(table.get("passkey"), dict) and table["passkey"]:
            lines += _passkey_lines(path, table["passkey"], out, tag)
            continue
        if isinstance(table, dict) and isinstance(table.get("ruler"), dict) and table["ruler"]:
            lines += _ruler_lines(path, table, out, tag)
            continue
        if isinstance(table, dict) and isinstance(table.get("lm_eval"), dict) and table["lm_eval"]:
            lines += _lm_eval_lines(path, table["lm_eval"])
            continue
        if not (isinstance(table, dict) and {"ppl", "lengths"} <= set(table)):
            continue
        plot_perplexity(table, out / f"{tag}ppl-{path.stem}.png")
        environment = table.get("environment", {})
        lines += [f"Perplexity ({path.name}): data `{table.get('data')}`, windows "
                  f"{', '.join(table.get('windows', []))}; {environment.get('device', '?')}, "
                  f"{environment.get('date', '?')}.", "", "```", format_table(table), "```", "",
                  f"![perplexity by length]({tag}ppl-{path.stem}.png)", ""] + verdict_lines(table)
        if plot_relative(table, out / f"{tag}ppl-relative-{path.stem}.png"):
            lines += [f"![perplexity relative to YaRN]({tag}ppl-relative-{path.stem}.png)", ""]
    return lines


def build_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write report.md and its plots (into `out`, default RUN_DIR/report); returns the markdown path."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RopesearchError(f"run directory {run_dir} does not exist")
    out = Path(out) if out else run_dir / "report"
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    folders = [run_dir] + sorted(p for p in run_dir.rglob("*") if p.is_dir() and not _skipped(p.relative_to(run_dir)))
    lines = [f"# ropesearch report: {run_dir.name}", ""]
    sections = 0
    try:
        for folder in folders:
            relative = folder.relative_to(run_dir)
            tag = "" if folder == run_dir else "-".join(relative.parts) + "-"
            body = (_search_section(folder, out, tag) + _finetune_section(folder, out, tag)
                    + _table_sections(folder, out, tag))
            if body:
                sections += 1
                lines += [f"## {relative}" if folder != run_dir else "## Run", ""] + body
    except BaseException:
        if created:  # the plots of a report that cannot be finished: the folder was made for them
            shutil.rmtree(out, ignore_errors=True)
        raise
    if not sections:
        if created:
            out.rmdir()  # nothing was plotted into it: leave no empty folder behind
        raise RopesearchError(f"{run_dir} holds nothing to report (no search, fine-tuning or perplexity results)")
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
