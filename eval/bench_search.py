"""Search proof: our `fast` space against the LongRoPE reference search, same GPU time, held-out scores.

    # each search in its own call (a device command runs at most 10 minutes)
    python eval/bench_search.py search --space fast --minutes 8 --data ../shared/data/books --out results/search-smollm2-64k
    python eval/bench_search.py search --space longrope --minutes 8 --data ../shared/data/books --out results/search-smollm2-64k
    python eval/bench_search.py compare --data ../shared/data/books --out results/search-smollm2-64k

The searches see only `--search-docs`; `compare` scores the best factors of each run and
PI / NTK / YaRN on the longest documents the searches never saw, and on the built-in corpus
(Python's own documentation, not part of the books folder), then writes a table of held-out
perplexity and best-so-far against GPU seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ropesearch.data import load_documents, sample_windows, tokenize_documents  # noqa: E402
from ropesearch.evaluate import make_evaluator  # noqa: E402
from ropesearch.evaluate.runs import environment, save_json  # noqa: E402
from ropesearch.export import load_factors  # noqa: E402
from ropesearch.models import load_model, load_tokenizer, resolve_model, rope_base  # noqa: E402
from ropesearch.rope import make_factors  # noqa: E402
from ropesearch.search.session import SearchConfig, run_search  # noqa: E402
from ropesearch.tables import markdown_lines  # noqa: E402

SEARCH_DOCS = "austen-emma.txt,j.fenimore.cooper.the.prairie.txt"


def subset_folder(data: str, names: list[str]) -> str:
    """A temporary folder holding only some documents of `data` (symlinks)."""
    folder = Path(tempfile.mkdtemp(prefix="ropesearch-docs-"))
    for name in names:
        source = Path(data) / name
        if not source.is_file():
            raise SystemExit(f"{source} does not exist")
        (folder / name).symlink_to(source.resolve())
    return str(folder)


def heldout_books(documents, search_names, target: int, count: int) -> list:
    """The `count` longest documents the searches never saw, each cut to its first `target` tokens."""
    others = [d for d in documents if d.name not in set(search_names) and len(d.ids) >= target]
    longest = sorted(others, key=lambda d: -len(d.ids))[:count]
    return sample_windows(longest, target, len(longest))


def search(args):
    out = Path(args.out) / (args.name or Path(args.space).stem)
    names = args.search_docs.split(",")
    result = run_search(SearchConfig(args.model, subset_folder(args.data, names), args.target, space=args.space,
                                     samples=len(names), time_minutes=args.minutes, seed=args.seed,
                                     short_tolerance=None),
                        out, resume=(out / "config.json").exists())  # unguarded, as results/search-smollm2-* were made
    print(json.dumps({"space": args.space, "best": result.values, "evals": result.state.full_evals,
                      "gpu_seconds": result.state.evaluator_seconds}))


def compare(args):
    ref = resolve_model(args.model)
    tokenizer, model = load_tokenizer(ref), load_model(ref)
    base = rope_base(model.config)
    documents = tokenize_documents(load_documents(args.data), tokenizer)
    heldout = {"books (held out)": heldout_books(documents, args.search_docs.split(","), args.target, args.heldout)}
    builtin = [d for d in tokenize_documents(load_documents("builtin"), tokenizer) if len(d.ids) >= args.target]
    if builtin:
        heldout["python docs (builtin)"] = sample_windows(builtin, args.target, len(builtin))
    runs = {p.name: p for p in sorted(Path(args.out).iterdir()) if (p / "best.json").is_file()}
    candidates = {m: make_factors(m, base, args.target / base.original_context) for m in ("pi", "ntk", "yarn")}
    candidates |= {f"search:{name}": load_factors(path / "best.json", expect=base) for name, path in runs.items()}
    evaluator = make_evaluator(model)
    table = {}
    for label, windows in heldout.items():
        scores = evaluator.score(list(candidates.values()), windows, [args.target])
        table[label] = {name: s.ppl[args.target] for name, s in zip(candidates, scores)}
        table[label]["windows"] = [w.name for w in windows]
    progress = {}
    for name, path in runs.items():
        points = json.loads((path / "progress.json").read_text())
        progress[name] = [{"gpu_seconds": p.get("evaluator_seconds", p.get("gpu_seconds")), "elapsed": p["elapsed"], "full_evals": p["full_evals"],
                           "best": list(p["best"].values())[0]} for p in points]
    race = time_to_reach(progress, args.reference)
    report = {"command": " ".join(["python"] + sys.argv), "target": args.target, "heldout": table,
              "progress": progress, "race": race, "environment": environment(model)}
    save_json(report, Path(args.out) / "compare.json")
    lines = [f"# Search at {args.target} tokens: held-out perplexity", "",
             f"Command: `{report['command']}`  ", f"Device: {report['environment']['device']}, "
             f"{report['environment']['dtype']}; date {report['environment']['date']}", ""]
    names = list(candidates)
    lines += heldout_lines(table, names, bool(runs))
    if race:
        lines += ["", f"## GPU seconds to reach {args.reference}'s final best ({race['target']:.2f} on the search "
                  f"documents, after {race['reference_seconds']:.0f} s)", ""] + race_lines(race)
    lines += ["", "## Best search perplexity (search documents) against GPU seconds", ""]
    for name, points in progress.items():
        lines.append(f"- {name}: " + ", ".join(f"{p['gpu_seconds']:.0f}s: {p['best']:.2f}" for p in points[:: max(1, len(points) // 12)]))
    (Path(args.out) / "compare.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def heldout_lines(table: dict, names: list[str], searched: bool) -> list[str]:
    """Held-out perplexity per document set (rows) and factor set (columns), with the best search over YaRN."""
    rows = []
    for label, row in table.items():
        best = min(row[n] for n in names if n.startswith("search:")) if searched else float("nan")
        rows.append([label] + [f"{row[n]:.2f}" for n in names] + [f"{best / row['yarn']:.3f}"])
    return markdown_lines(["documents", *names, "best search / YaRN"], rows)


def race_lines(race: dict) -> list[str]:
    """The GPU seconds each run took to reach the reference's final best (`time_to_reach`), as a table."""
    return markdown_lines(["run", "GPU seconds", "fraction of the reference's", "its final best"],
                          [[name, "not reached" if row["seconds"] is None else f"{row['seconds']:.0f}",
                            "" if row["fraction"] is None else f"{row['fraction']:.2f}", f"{row['final_best']:.2f}"]
                           for name, row in race["runs"].items()])


def time_to_reach(progress: dict, reference: str) -> dict | None:
    """GPU seconds each run needed to match the reference run's final best (None: it never did)."""
    if reference not in progress or not progress[reference]:
        return None
    target = progress[reference][-1]["best"]
    reference_seconds = next(p["gpu_seconds"] for p in progress[reference] if p["best"] <= target)
    runs = {}
    for name, points in progress.items():
        if name == reference:
            continue
        seconds = next((p["gpu_seconds"] for p in points if p["best"] <= target), None)
        runs[name] = {"seconds": seconds, "fraction": None if seconds is None else seconds / reference_seconds,
                      "final_best": points[-1]["best"], "final_seconds": points[-1]["gpu_seconds"]}
    return {"reference": reference, "target": target, "reference_seconds": reference_seconds, "runs": runs}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("phase", choices=["search", "compare"])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--target", type=int, default=65536)
    parser.add_argument("--space", default="fast", help="a shipped space's name or a space file")
    parser.add_argument("--name", help="the run's folder under --out (default: the space's name)")
    parser.add_argument("--reference", default="longrope",
                        help="compare: the run whose final best the others race to (GPU seconds to reach it)")
    parser.add_argument("--minutes", type=float, default=8.0)
    parser.add_argument("--search-docs", default=SEARCH_DOCS)
    parser.add_argument("--heldout", type=int, default=4, help="longest documents not searched on")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    search(args) if args.phase == "search" else compare(args)


if __name__ == "__main__":
    main()
