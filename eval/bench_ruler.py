"""RULER proof: SmolLM2-135M with the searched factors against NTK, YaRN and the unscaled model.

Three factor sets, each against NTK and YaRN at its own scale; 20 samples per task and length,
all 11 synthetic tasks, greedy generation with RULER's answer budgets, essays from the books:

    64k set (x8)    results/search-smollm2-64k/fast-v2 at 8k-64k; none, NTK x8, YaRN x8
    128k set (x16)  results/search-smollm2-128k/fast at 8k-128k; NTK x16, YaRN x16 (the unscaled
                    model's 8k-64k scores come from the 64k set; at 128k it runs last of all)
    1m set (x128)   results/million-smollm2's factors on its fine-tuned weights (--found-model, the
                    plan's 02-finetune/model; the committed run keeps no weights, so
                    eval/run_ruler_1m.sh fine-tunes it again); NTK and YaRN x128 on the base model

    python eval/bench_ruler.py all [--found-model RUN/02-finetune/model]  # every remaining cell, in order
                                                 # (the 1m set's found factors need --found-model)
    bash eval/run_ruler.sh 540                   # the same on the GPU machine for at most 540 s
    bash eval/run_ruler_1m.sh 570                # with the 1m set's found factors: fine-tunes again first
    python eval/bench_ruler.py run --set 64k --lengths 32k --methods ntk --no-found   # some cells
    python eval/bench_ruler.py summary           # tables, heatmaps, targets: results/ruler-smollm2/README.md
    python eval/bench_ruler.py speed             # CPU: generating 64k x 11 tasks x 20 samples

The summary judges each length above 8k: the found factors' average against NTK's and YaRN's, with
the lead's paired standard error (the same samples, scored one by one); a lead or a gap within two
standard errors is called noise ("target met, within noise"), not a win.

(`--data` defaults to ../shared/data/books.) Everything resumes: cells (factor set, length)
already in results/ruler-smollm2/ruler-<set>.json are kept, each finished task of a cell is
written at once, and all factor sets run one length before the next (the prompts are built once
per length); a command killed at its limit loses at most the generate call it was in, and a step with
nothing left (`all` passes over finished sets) prints its table without loading the model.

Measured (one H100, 2026-11-25, "seconds" in ruler-64k.json; each task's 20 samples in one
generate call): a cell of 11 tasks took ~55 s at 8k and 16k, 85-130 s at 32k, 165-210 s at 64k
(the first factor set at a length also builds the prompts: ~45 s at 64k). Prefill is 0.41 s a
64k row; a decoding step ~30-40 ms up to 64k whatever the batch (results/bench-decode-cache.md:
cuDNN attention first makes it 2.4-3.7x faster than transformers' default choice; the reserved
cache, between 22% faster and 30% slower: noise, as the default's 111 and 94 ms at 64k x 20 in
two runs), and RULER's budgets ask 1,224 steps of a cell's calls, so short cells are mostly
decoding. Since then the eight NIAH tasks (one budget, one prompt length) share generate calls
(up to 160 samples a call where memory allows, instead of 20) and each call's prompts are
tokenized in one batch: from the 64k set's 64k cells on; not yet timed. From the 1m set's remaining
cells on, a worker process builds the prompts while the GPU answers (ruler_prefetch), and a cell
starts on its first task's: the build (~45 s at 64k) no longer idles the GPU. Its own timing,
with and without the worker in the same run (eval/bench_ruler_prefetch.py, one H100, 2026-12-06):
a 32k cell of 11 tasks took 84.3 s without it and 60.7 s with it, 1.39x (one pair;
results/bench-ruler-prefetch.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ropesearch.cli import cli  # noqa: E402
from ropesearch.evaluate.runs import save_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MILLION = ROOT / "results/million-smollm2"  # the million-token plan's committed run
SETS = {  # name: (factor file, scale, lengths)
    "64k": (ROOT / "results/search-smollm2-64k/fast-v2/best.json", 8, "8k,16k,32k,64k"),
    "128k": (ROOT / "results/search-smollm2-128k/fast/best.json", 16, "8k,16k,32k,64k,128k"),
    # the million-token plan's model: its factors on its fine-tuned weights (--found-model: the
    # plan's 02-finetune/model, which eval/run_ruler_1m.sh fine-tunes again: the committed run keeps
    # no weights), NTK and YaRN x128 on the base model
    "1m": (MILLION / "04-recover-short/search/best.json", 128, "8k,16k,32k,64k,128k"),
}


def run(args):
    factor_file, scale, lengths = SETS[args.set]
    factor_file = Path(args.factors or factor_file)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    found = out / f"found-{args.set}.json"  # a name of its own in the tables ("best.json" twice otherwise)
    if not found.is_file():
        shutil.copy(factor_file, found)
    # the 1m set's found factors run on their own fine-tuned model: a JSON of their own
    separate = args.set == "1m" and not args.no_found
    if separate and not args.found_model:
        raise SystemExit("--set 1m needs --found-model: the million plan's fine-tuned model folder")
    runs = [(args.found_model, "", True, "ruler-1m-found.json")] if separate else []
    if not separate or args.methods:
        runs.append((args.model, args.methods, not args.no_found and not separate, f"ruler-{args.set}.json"))
    for model, methods, with_found, name in runs:
        command = ["ruler", "--model", model, "--lengths", args.lengths or lengths, "--methods", methods,
                   "--scale", str(scale), "--samples", str(args.samples), "--data", args.data, "--seed",
                   str(args.seed), "--json", str(out / name), "--resume"]
        if with_found:
            command += ["--factors", str(found)]
        for option in ("tasks", "max_batch", "max_new_tokens"):
            if getattr(args, option):
                command += [f"--{option.replace('_', '-')}", str(getattr(args, option))]
        if args.device:
            command += ["--device", args.device]
        cli.main(command, prog_name="ropesearch", standalone_mode=False)


def run_all(args):
    """Every cell of the proof in order, each kept as it finishes: the 64k set with all methods,
    the 128k set with NTK, YaRN and the found factors at every length, the 1m set (its baselines
    on the base model; its found factors too with --found-model), and last the unscaled model at
    128k (its shorter lengths come from the 64k set, where it scores 0 from 16k on). Run it again
    after a kill to continue."""
    short_128k, last_128k = args.lengths_128k.rsplit(",", 1) if "," in args.lengths_128k else ("", args.lengths_128k)
    steps = [("64k", args.lengths_64k, "none,ntk,yarn", True)]
    steps += [("128k", short_128k, "ntk,yarn", True)] if short_128k else []
    steps += [("128k", last_128k, "ntk,yarn", True)]
    steps += [("1m", args.lengths_1m, "ntk,yarn", bool(args.found_model))]
    steps += [("128k", last_128k, "none", False)]
    for name, lengths, methods, found in steps:
        print(f"== {name} set at {lengths}: {methods}{' and the found factors' if found else ''}", flush=True)
        run(argparse.Namespace(**{**vars(args), "set": name, "lengths": lengths, "methods": methods,
                                  "no_found": not found}))


def _merged(out: Path, name: str) -> dict | None:
    """A set's results; the 128k set takes the unscaled model's shorter lengths from the 64k set, the
    1m set its unscaled scores from both and its found factors from their own JSON."""
    path = out / f"ruler-{name}.json"
    if not path.is_file():
        return None
    document = json.loads(path.read_text())
    if name == "1m" and (out / "ruler-1m-found.json").is_file():
        document["ruler"].update(json.loads((out / "ruler-1m-found.json").read_text())["ruler"])
    sources = {"128k": ["64k"], "1m": ["64k", "128k"]}.get(name, [])
    for other in (out / f"ruler-{source}.json" for source in sources):
        unscaled = json.loads(other.read_text())["ruler"].get("none") if other.is_file() else None
        if not unscaled:
            continue
        mine = document["ruler"].setdefault("none", {**unscaled, "scores": {}, "average": {}})
        for task, values in unscaled["scores"].items():
            for length, value in values.items():
                mine["scores"].setdefault(task, {}).setdefault(length, value)
        for length, value in unscaled["average"].items():
            mine["average"].setdefault(length, value)
    return document


def _progress(result: dict | None, length: int) -> str:
    """A missing cell, with how many of its tasks a killed run already scored (those are kept)."""
    scored = sum(str(length) in values for values in (result or {}).get("scores", {}).values())
    return f"{length} ({scored} of {len(result['tasks'])} tasks scored)" if scored else str(length)


def _beyond_training(factor_file: Path, length: int) -> str:
    """Which of the found factors leave dims past the critical dimension (never a full turn in
    training) rotating further than training ever did at `length`: YaRN and NTK give those dims
    the whole scale, and retrieval across the window needs them in range."""
    from ropesearch.export.factor_file import factors_from_dict
    from ropesearch.rope.methods import critical_dimension

    document = json.loads(factor_file.read_text())
    factors, _ = factors_from_dict(document, source=f"factor file {factor_file}")
    objective = document.get("provenance", {}).get("objective")
    trained, scale = factors.base.original_context, length / factors.base.original_context
    first = critical_dimension(factors.base) // 2
    short = [(i, lam) for i, lam in enumerate(factors.long_factor) if i >= first and lam < scale]
    if not short:
        return f"every dim from the critical one ({first}) on is scaled by >= {scale:g}"
    low, high = min(lam for _, lam in short), max(lam for _, lam in short)
    return (f"{len(short)} of the dims from the critical one ({first}) on have factors below the "
            f"scale {scale:g} (dims {short[0][0]}-{short[-1][0]}: {low:.2f}-{high:.2f}), so at "
            f"{length} tokens they rotate as far as {length / low:.0f} trained positions, beyond the "
            f"{trained} they were trained at" + ("; the search scored whole-document perplexity "
            "(`--objective ppl`), which local context dominates, not retrieval across the window "
            "(`--objective needle`)" if objective == "ppl" else ""))


def _noise(found: dict, others: dict[str, dict], length: int) -> tuple[str, bool]:
    """The found factors' lead over each baseline with its paired standard error, and whether any
    lead is within two standard errors of zero (a tie, not a win or a miss)."""
    from ropesearch.tasks.ruler_eval import paired_difference

    leads = {m: lead for m, other in others.items() if (lead := paired_difference(found, other, length))}
    if not leads:
        return "no per-sample scores to judge the noise", False
    ties = [m for m, (d, se) in leads.items() if abs(d) < 2 * se + 1e-12]
    text = "; ".join(f"found - {m} {100 * d:+.1f} ± {100 * se:.1f}" for m, (d, se) in leads.items())
    text += f" (paired standard error over {found['samples'] * len(found['tasks'])} samples)"
    return text + (f": within two standard errors of {' and '.join(ties)}" if ties else ": beyond noise"), bool(ties)


def _columns(name: str, out: Path) -> str:
    """What each column of a set ran: which factors on which weights (the 1m set's differ)."""
    factor_file = SETS[name][0].relative_to(ROOT)
    if name != "1m":
        extra = "; the unscaled model's 8k-64k cells come from the 64k set" if name == "128k" else ""
        return (f"Columns: `found-{name}.json` is `{factor_file}` (searched, no fine-tuning); NTK and YaRN "
                f"at x{SETS[name][1]}; none, the unscaled model; all on the base weights{extra}.")
    again = out / "finetune-again-done.json"
    loss = ""
    if again.is_file():
        now = json.loads(again.read_text())["outputs"]["final_loss"]
        then = json.loads((MILLION / "02-finetune/done.json").read_text())["outputs"]["final_loss"]
        loss = f" (final loss {now:.4f}, the committed run's {then:.4f}: `finetune-again-done.json`)"
    return (f"Columns: `found-1m.json` is `{factor_file}` (long factors past 8k, short ones at 8k) on the "
            f"million plan's fine-tuned weights, fine-tuned again for this proof by `eval/run_ruler_1m.sh`{loss}, "
            f"as the plan ships them; NTK and YaRN at x{SETS[name][1]} and the unscaled model on the base weights, "
            "as a user without that fine-tuning runs them; the unscaled cells come from the 64k and 128k sets.")


def summary(args):
    from ropesearch.tasks.ruler_eval import format_ruler
    from ropesearch.evaluate.runs import parse_lengths
    from ropesearch.report.plots import plot_ruler

    out = Path(args.out)
    lines = ["# RULER on SmolLM2-135M: searched factors against NTK, YaRN and the unscaled model", ""]
    for name in SETS:
        document = _merged(out, name)
        if document is None:
            continue
        results = document["ruler"]
        found = f"found-{name}.json"
        environment_ = document.get("environment", {})
        devices = sorted({d for r in results.values() for ds in r.get("devices", {}).values() for d in ds})
        lines += [f"## {name} set (x{SETS[name][1]})", "",
                  f"{' and '.join(devices) or environment_.get('device', '?')} (each cell's in `devices` of the JSON), "
                  f"{environment_.get('dtype', '?')}, last run {environment_.get('date', '?')}; "
                  f"essays from `{document.get('data')}`, seed {document.get('seed')}, "
                  f"{next(iter(results.values()))['samples']} samples per task and length; scores in %.", "",
                  _columns(name, out), "", "```", format_ruler(results), "```", ""]
        for method, result in results.items():
            image = f"ruler-{name}-{method.replace('.json', '')}.png"
            if plot_ruler(result, out / image, f"RULER {name} set: {method}"):
                lines += [f"![{method}]({image})", ""]
        averages = {m: results.get(m, {}).get("average", {}) for m in ("none", "ntk", "yarn", found)}
        if found in results:
            for length in sorted(int(n) for n in results[found]["average"]):
                if length <= 8192:
                    continue
                mine = results[found]["average"][str(length)]
                others = {m: averages[m].get(str(length)) for m in ("ntk", "yarn")}
                scores = ", ".join(f"{m} {100 * v:.1f}" if v is not None else f"{m} -" for m, v in others.items())
                if None in others.values():
                    lines.append(f"- {length}: found {100 * mine:.1f} vs {scores} (not all run yet)")
                    continue
                verdict = all(mine >= v for v in others.values())
                noise, tie = _noise(results[found], {m: results[m] for m in others}, length)
                status = ("target met" if verdict else "target NOT met") + (", within noise" if tie else "")
                lines += [f"- {length}: found {100 * mine:.1f} vs {scores} ({status})", f"  {noise}"]
                if not verdict:
                    lines.append(f"  why, in part: {_beyond_training(out / found, length)}")
            lines.append("")
        wanted = parse_lengths(SETS[name][2])
        missing = {m: [_progress(results.get(m), n) for n in wanted if str(n) not in done]
                   for m, done in averages.items()}
        if any(missing.values()):
            lines += ["Not complete yet: " + "; ".join(f"{m} at {', '.join(n)}" for m, n in missing.items() if n), ""]
    lines += ["Commands: see the docstring of `eval/bench_ruler.py`; each JSON keeps its `command`.", ""]
    (out / "README.md").write_text("\n".join(lines))
    print("\n".join(lines))


def speed(args):
    """Wall and CPU seconds to generate every task at one length (the issue's target: 64k x 20 in < 60 s)."""
    from ropesearch.tasks.ruler import TASKS, RulerSuite
    from ropesearch.evaluate.runs import parse_lengths
    from ropesearch.models import load_tokenizer, resolve_model

    length = parse_lengths(args.length)[0]
    tokenizer = load_tokenizer(resolve_model(args.model))
    suite = RulerSuite(tokenizer, args.data)
    per_task = {}
    wall, cpu = time.perf_counter(), time.process_time()
    for task in TASKS:
        started = time.perf_counter()
        samples = suite.samples(task, length, args.samples)
        assert all(s.prompt_tokens == length - s.max_new_tokens for s in samples)
        per_task[task] = round(time.perf_counter() - started, 2)
        print(f"{task:16s} {per_task[task]:6.2f} s")
    result = {"model": args.model, "length": length, "samples": args.samples, "tasks": len(TASKS),
              "wall_seconds": round(time.perf_counter() - wall, 1), "cpu_seconds": round(time.process_time() - cpu, 1),
              "per_task_seconds": per_task, "load_average_1min": round(os.getloadavg()[0], 2),
              "cpus": os.cpu_count(), "command": " ".join(sys.argv),
              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    print(json.dumps({k: v for k, v in result.items() if k != "per_task_seconds"}))
    if args.json:
        save_json(result, args.json)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="one factor set at some lengths (resumes)")
    run_parser.add_argument("--set", choices=list(SETS), required=True)
    run_parser.add_argument("--lengths", help="default: the set's lengths")
    run_parser.add_argument("--methods", default="none,ntk,yarn", help="baselines at the set's scale (none: unscaled)")
    run_parser.add_argument("--no-found", action="store_true", help="leave out the searched factors")
    run_parser.add_argument("--factors", help="another factor file for the set (tests: another model)")
    run_parser.set_defaults(function=run)
    all_parser = commands.add_parser("all", help="every remaining cell of both sets, in order (resumes)")
    all_parser.add_argument("--lengths-64k", default=SETS["64k"][2])
    all_parser.add_argument("--lengths-128k", default=SETS["128k"][2])
    all_parser.add_argument("--lengths-1m", default=SETS["1m"][2])
    all_parser.add_argument("--factors", help="one factor file for every set (tests: another model)")
    all_parser.set_defaults(function=run_all)
    for sub in (run_parser, all_parser):
        sub.add_argument("--found-model",
                         help="the 1m set's fine-tuned model folder (all: runs the 1m set's found factors too)")
        for flag, kwargs in (("--samples", {"type": int, "default": 20}), ("--seed", {"type": int, "default": 0}),
                             ("--data", {"default": "../shared/data/books", "help": "essay haystack documents"}),
                             ("--model", {"default": "smollm2-135m"}),
                             ("--max-batch", {"type": int, "help": "samples per generate call (default: what the GPU holds)"}),
                             ("--tasks", {"help": "a subset of the tasks (default all)"}),
                             ("--max-new-tokens", {"type": int, "help": "cap the answer budgets (default RULER's)"}),
                             ("--device", {})):
            sub.add_argument(flag, **kwargs)
    summary_parser = commands.add_parser("summary", help="tables, heatmaps and targets into --out/README.md")
    summary_parser.set_defaults(function=summary)
    speed_parser = commands.add_parser("speed", help="time the generation of every task at one length (CPU)")
    speed_parser.add_argument("--length", default="64k")
    speed_parser.add_argument("--samples", type=int, default=20)
    speed_parser.add_argument("--data", default="builtin")
    speed_parser.add_argument("--model", default="smollm2-135m")
    speed_parser.add_argument("--json", help="write the timings here")
    speed_parser.set_defaults(function=speed)
    for sub in (run_parser, all_parser, summary_parser):
        sub.add_argument("--out", default=str(ROOT / "results" / "ruler-smollm2"))
    args = parser.parse_args()
    args.function(args)


if __name__ == "__main__":
    main()
