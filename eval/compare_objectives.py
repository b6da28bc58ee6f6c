"""What each search objective (or space) buys at a long target: one search per objective and space,
the same budget, seed and search windows, then every found set against NTK and YaRN on held-out text
in one run.

    python eval/compare_objectives.py --model smollm2-135m --data ../shared/data/books --pack \
        --target 128k --objectives ppl,ppl+needle --time-budget 3 --passkey-lengths 32k,128k \
        --out results/objectives-smollm2-128k

Columns, all on documents none of the searches read (each search's windows left out):
- perplexity at the target, and its ratio to YaRN at the same scale;
- needle perplexity at the target: the same windows with a number stated early (depth 0-20%, as
  the ppl+needle objective plants it) and only the answer's tokens scored;
- in range: the share of the target up to which the pairs that never turned in training stay inside
  their trained angles (`ropesearch show`; floor_unturned in a space sets it);
- the original window against the unscaled model (the short guard's promise);
- passkey accuracy (greedy, exact) at each --passkey-lengths, depths 0.1/0.5/0.9, --passkey-trials
  keys a depth, hidden in the held-out text.
`needle` (needle windows cut from single documents) cannot run with --pack. `--spaces A,B` searches
each objective in each space (rows `found:OBJECTIVE@SPACE`). Each search is its own run directory
under --out (`search-OBJECTIVE`, or `search-OBJECTIVE@SPACE`); running the same command again resumes what was
cut (a search from its last generation, passkey from its last trial) and keeps what is done.
Writes OUT/objectives.json and OUT/objectives.md. `--quick`: the pocket model on the CPU, target
1024, 16 evaluations a search (about two minutes).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ropesearch.data import build_windows, load_documents, plant_needle, tokenize_documents  # noqa: E402
from ropesearch.errors import RopesearchError  # noqa: E402
from ropesearch.evaluate import make_evaluator  # noqa: E402
from ropesearch.evaluate.baselines import baseline_table  # noqa: E402
from ropesearch.evaluate.runs import WindowSpec, save_json, searched_documents, setup  # noqa: E402
from ropesearch.export import load_factors  # noqa: E402
from ropesearch.fingerprint import data_fingerprint  # noqa: E402
from ropesearch.models import load_tokenizer, resolve_model  # noqa: E402
from ropesearch.models.loading import load_for_backend  # noqa: E402
from ropesearch.own_files import atomic_write_text  # noqa: E402
from ropesearch.rope import in_range_length, make_factors  # noqa: E402
from ropesearch.search.objectives import OBJECTIVES  # noqa: E402
from ropesearch.search.session import SearchConfig, run_search  # noqa: E402
from ropesearch.search.space import load_space  # noqa: E402
from ropesearch.tables import markdown  # noqa: E402
from ropesearch.tasks.passkey_run import PasskeyEntry, passkey_entries  # noqa: E402
from ropesearch.units import parse_token_list  # noqa: E402
from ropesearch.validate import read_json  # noqa: E402

BASELINES = ("ntk", "yarn")
DEPTHS = (0.1, 0.5, 0.9)


def variants(args) -> list[tuple[str, str, str]]:
    """(label, objective, space) of every search: each objective in each space; a label names the
    space only when several are compared."""
    names = [load_space(spec).name for spec in args.spaces]
    if len(set(names)) < len(names):
        raise RopesearchError(f"--spaces {','.join(args.spaces)}: two spaces share a name; rename one")
    return [(objective if len(names) == 1 else f"{objective}@{name}", objective, spec)
            for spec, name in zip(args.spaces, names) for objective in args.objectives]


def search_all(args, runs: list[tuple[str, str, str]], loaded) -> dict[str, Path]:
    """One search per variant (`variants`) in OUT/search-LABEL (resumed where a checkpoint is); their best.json files."""
    found = {}
    for label, objective, space in runs:
        out = args.out / f"search-{label}"
        config = SearchConfig(args.model, args.data, args.target, space=space, objective=objective,
                              samples=args.samples, seed=args.seed, max_evals=args.max_evals,
                              time_minutes=args.time_budget, pack=args.pack)
        resume = (out / "checkpoint.json").is_file()
        print(f"search {label}: {'resuming ' if resume else ''}{out}", flush=True)
        run_search(config, out, resume=resume, loaded=loaded, log=lambda line: print(f"  {line}", flush=True))
        found[label] = out / "best.json"
    return found


def needle_scores(run, sets: dict, target: int, seed: int) -> dict[str, float]:
    """Each set's needle perplexity on the held-out windows, a needle planted in each (seeded)."""
    rng = np.random.default_rng(seed)
    planted = [plant_needle(window, run.tokenizer, rng) for window in run.windows]
    evaluator = make_evaluator(run.model, model_spec=run.model_spec, max_length=target, progress=False)
    scores = evaluator.score(list(sets.values()), planted, [target])
    return {name: (None if s.failed else s.ppl[target]) for name, s in zip(sets, scores)}


def passkeys(args, run, sets: dict, held_out: list) -> dict:
    """Passkey accuracy of every set, keys hidden in held-out text; resumed from OUT/passkey.json."""
    if not args.passkey_lengths:
        return {}
    path = args.out / "passkey.json"
    tokenizer = run.tokenizer
    documents = tokenize_documents(held_out, tokenizer)
    (haystack,) = build_windows(documents, tokenizer, max(args.passkey_lengths), 1, args.seed, pack=True)
    keys = {name: data_fingerprint(dataclasses.asdict(factors)) for name, factors in sets.items()}
    saved = read_json(path, "passkey results", "delete it to measure again", expect=dict) if path.is_file() else {}
    # a set whose factors changed since (a search resumed with a larger budget) is measured again
    earlier = {name: r for name, r in saved.get("results", {}).items() if saved.get("keys", {}).get(name) == keys.get(name)}
    entries = [PasskeyEntry(name, factors, args.passkey_trials) for name, factors in sets.items()]
    return passkey_entries(entries, lambda spec: (run.model, tokenizer), args.passkey_lengths, DEPTHS, args.seed,
                           haystack=haystack.ids, results=earlier,
                           save=lambda r: save_json({"results": r, "keys": keys}, path))


def rows_of(document: dict) -> list[list[str]]:
    yarn = document["ppl"]["yarn"]
    rows = []
    for name in document["sets"]:
        ppl, needle = document["ppl"][name], document["needle_ppl"].get(name)
        original = document["original_window"].get(name)
        accuracy = document["passkey"].get(name, {})
        search = document["searches"].get(name, {})
        rows.append([name, f"{ppl:.2f}", f"{ppl / yarn:.3f}", "" if needle is None else f"{needle:.3f}",
                     f"{document['in_range'][name]:.0%}",
                     "" if original is None else f"{original:.3f}",
                     *[f"{accuracy[str(n)]:.0%}" if str(n) in accuracy else "" for n in document["passkey_lengths"]],
                     str(search.get("full_evals", "")), f"{search['evaluator_seconds']:.0f}" if search else ""])
    return rows


def table(document: dict) -> str:
    n = document["target"]
    head = ["set", f"ppl@{n}", "x YaRN", f"needle ppl@{n}", "in range", "original window x unscaled",
            *[f"passkey@{m}" for m in document["passkey_lengths"]], "full evaluations", "evaluator s"]
    return markdown(head, rows_of(document))


def parse_args(argv=None) -> argparse.Namespace:
    """The arguments, checked, with nothing loaded or written (a GPU queue's lines are checked with it)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data", default="builtin")
    parser.add_argument("--pack", action="store_true", help="packed windows (documents joined with EOS)")
    parser.add_argument("--target", default="128k", help="target length in tokens, e.g. 128k")
    parser.add_argument("--objectives", default="ppl,ppl+needle", help=f"comma-separated: {', '.join(OBJECTIVES)}")
    parser.add_argument("--spaces", default="fast", help="comma-separated spaces (names or YAML files): "
                        "each objective is searched in each")
    parser.add_argument("--samples", type=int, default=2, help="search windows")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-evals", type=int, default=None, help="full evaluations a search")
    parser.add_argument("--time-budget", type=float, default=None, help="minutes a search")
    parser.add_argument("--eval-samples", type=int, default=2, help="held-out windows")
    parser.add_argument("--passkey-lengths", default="", help="e.g. 32k,128k (none: no passkey)")
    parser.add_argument("--passkey-trials", type=int, default=3, help="keys a depth (3 depths)")
    parser.add_argument("--out", type=Path, default=Path("results/objectives"))
    parser.add_argument("--quick", action="store_true", help="pocket model on the CPU, target 1024, 16 evaluations")
    args = parser.parse_args(argv)
    if args.quick:
        args.model, args.data, args.target, args.max_evals, args.eval_samples = "pocket", "builtin", "1024", 16, 2
        args.passkey_lengths = args.passkey_lengths or "512"
    if args.max_evals is None and args.time_budget is None:
        parser.error("give a budget: --max-evals N and/or --time-budget MINUTES (the same for every search)")
    args.target = parse_token_list([args.target], "--target")[0]
    args.passkey_lengths = parse_token_list(args.passkey_lengths.split(","), "--passkey-lengths") \
        if args.passkey_lengths else []
    args.objectives = [o.strip() for o in args.objectives.split(",") if o.strip()]
    args.spaces = [x.strip() for x in args.spaces.split(",") if x.strip()]
    if not args.spaces:
        parser.error("--spaces: name at least one space")
    unknown = [o for o in args.objectives if o not in OBJECTIVES]
    if unknown or not args.objectives:
        parser.error(f"--objectives: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(OBJECTIVES)}")
    if args.pack and any(OBJECTIVES[o].needle for o in args.objectives):
        parser.error("the needle objective cuts its windows from single documents: drop it or --pack")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    # the model once: the searches and the held-out scoring share it
    ref = resolve_model(args.model)
    loaded = (load_for_backend(ref), load_tokenizer(ref))
    runs = variants(args)
    found = search_all(args, runs, loaded)
    searched = {d for path in found.values() for d in searched_documents(path.parent)}
    used = sorted(searched)
    held_out = [d for d in load_documents(args.data) if d.name not in searched]
    if not held_out:
        raise RopesearchError(f"the searches read every document of {args.data}: nothing is held out")
    run = setup(args.model, WindowSpec(args.data, samples=args.eval_samples, seed=args.seed, pack=args.pack,
                                       exclude=used), args.target, loaded=loaded)
    labels = [f"found:{o}={path}" for o, path in found.items()]
    ppl_table = baseline_table(run, [args.target], methods=BASELINES, factor_files=labels, progress=False)
    scale = ppl_table["scales"]["yarn"]
    sets = {m: make_factors(m, run.base, scale) for m in BASELINES} | \
        {f"found:{o}": load_factors(path) for o, path in found.items()}
    searches = {}
    for objective, path in found.items():
        last = read_json(path.parent / "progress.json", "search progress", "resume the search", expect=list)[-1]
        searches[f"found:{objective}"] = {"full_evals": last.get("full_evals"),
                                          "evaluator_seconds": last.get("evaluator_seconds", 0.0)}
    passkey = passkeys(args, run, sets, held_out)
    document = {
        "model": args.model, "data": args.data, "pack": args.pack, "target": args.target,
        "objectives": args.objectives, "budget": {"max_evals": args.max_evals, "time_minutes": args.time_budget,
                                                  "spaces": args.spaces, "samples": args.samples, "seed": args.seed},
        "sets": list(sets), "scale": scale,
        "variants": [{"label": f"found:{label}", "objective": o, "space": sp} for label, o, sp in runs],
        # how far each set keeps the pairs that never turned in training inside their trained angles
        "in_range": {name: min(1.0, in_range_length(f) / args.target) for name, f in sets.items()},
        "ppl": {name: ppl_table["ppl"][name][str(args.target)] for name in sets},
        "needle_ppl": needle_scores(run, sets, args.target, args.seed),
        "original_window": {name: row["ratio"] for name, row in ppl_table.get("original_window", {}).items()},
        "passkey_lengths": args.passkey_lengths,
        "passkey": {name: {str(n): float(np.mean([r["accuracy"][f"{n}@{d:g}"] for d in DEPTHS]))
                           for n in args.passkey_lengths} for name, r in passkey.items()},
        "passkey_trials": {name: args.passkey_trials * len(DEPTHS) for name in passkey},
        "searches": searches, "held_out_windows": ppl_table["windows"], "searched_documents": used,
        "command": " ".join(["python", "eval/compare_objectives.py", *(sys.argv[1:] if argv is None else argv)]),
        "environment": ppl_table["environment"],
    }
    save_json(document, args.out / "objectives.json")
    text = table(document)
    atomic_write_text(args.out / "objectives.md",
                      f"# What each objective buys at {args.target} tokens\n\n`{document['command']}`; "
                      f"{document['environment'].get('device')}, {document['environment'].get('date')}\n\n{text}\n")
    print(text)
    return document


if __name__ == "__main__":
    main()
