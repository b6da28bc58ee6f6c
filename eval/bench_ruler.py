"""RULER proof: SmolLM2-135M with the searched factors against NTK, YaRN and the unscaled model.

Two factor sets, each against NTK and YaRN at its own scale, 20 samples per task and length,
all 11 synthetic tasks, greedy generation with RULER's answer budgets, essays from the books.
Each line below is planned to fit one 10-minute GPU command (estimates below):

    # 64k set (x8): results/search-smollm2-64k/fast-v2 against none, NTK x8, YaRN x8      ~25 min
    python eval/bench_ruler.py run --set 64k --lengths 8k,16k                             # ~5 min
    python eval/bench_ruler.py run --set 64k --lengths 32k                                # ~7 min
    python eval/bench_ruler.py run --set 64k --lengths 64k --methods none,ntk --no-found  # ~7 min
    python eval/bench_ruler.py run --set 64k --lengths 64k --methods yarn                 # ~7 min
    # 128k set (x16): results/search-smollm2-128k/fast against NTK x16, YaRN x16 (the unscaled
    # model's 8k-64k scores come from the 64k set; at 128k it runs here)                 ~52 min
    python eval/bench_ruler.py run --set 128k --lengths 8k,16k,32k --methods ntk,yarn     # ~9 min
    python eval/bench_ruler.py run --set 128k --lengths 64k --methods ntk,yarn --no-found # ~7 min
    python eval/bench_ruler.py run --set 128k --lengths 64k,128k --methods ""             # found: ~12 min, 2 runs
    python eval/bench_ruler.py run --set 128k --lengths 128k --methods ntk --no-found     # ~9 min
    python eval/bench_ruler.py run --set 128k --lengths 128k --methods yarn --no-found    # ~9 min
    python eval/bench_ruler.py run --set 128k --lengths 128k --methods none --no-found    # ~9 min
    python eval/bench_ruler.py summary            # table, heatmaps, targets: results/ruler-smollm2/README.md
    python eval/bench_ruler.py speed              # CPU: generating 64k x 11 tasks x 20 samples

(`--data` defaults to ../shared/data/books.) Every `run` resumes: cells (factor set, length)
already in results/ruler-smollm2/ruler-<set>.json are kept, each finished cell is written at
once, and all factor sets run one length before the next; a command killed at its limit loses
at most the cell it was on: run the same line again to continue. Each cell's seconds are in
the JSON ("seconds"), to re-plan the remaining commands from measured times.

Estimate, per cell (one factor set at one length, 11 tasks x 20 samples; batches of 512k tokens):
prefill = 220 forward passes at REFERENCE.md's H100 speeds (21 ms at 8k batched, 52 ms at 16k,
0.15 s at 32k, 0.46 s at 64k, 1.56 s at 128k) and decoding = (batches per task) x 1,224 steps
(RULER's budgets: 8 x 128 + 30 + 120 + 50) at an assumed 25 ms per step (not measured):
8k 35 s, 16k 42 s, 32k 94 s, 64k 193 s, 128k 496 s; 6 min per factor set for 8k-64k, 8.3 min
at 128k. Whole proof: about 77 GPU-minutes (11 commands).
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
SETS = {  # name: (factor file, scale, lengths)
    "64k": (ROOT / "results/search-smollm2-64k/fast-v2/best.json", 8, "8k,16k,32k,64k"),
    "128k": (ROOT / "results/search-smollm2-128k/fast/best.json", 16, "8k,16k,32k,64k,128k"),
}


def run(args):
    factor_file, scale, lengths = SETS[args.set]
    factor_file = Path(args.factors or factor_file)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    found = out / f"found-{args.set}.json"  # a name of its own in the tables ("best.json" twice otherwise)
    if not found.is_file():
        shutil.copy(factor_file, found)
    command = ["ruler", "--model", args.model, "--lengths", args.lengths or lengths, "--methods", args.methods,
               "--scale", str(scale), "--samples", str(args.samples), "--data", args.data, "--seed", str(args.seed),
               "--json", str(out / f"ruler-{args.set}.json"), "--resume"]
    if not args.no_found:
        command += ["--factors", str(found)]
    for option in ("tasks", "max_batch", "max_new_tokens"):
        if getattr(args, option):
            command += [f"--{option.replace('_', '-')}", str(getattr(args, option))]
    if args.device:
        command += ["--device", args.device]
    cli.main(command, prog_name="ropesearch", standalone_mode=False)


def _merged(out: Path, name: str) -> dict | None:
    """A set's results; the 128k set takes the unscaled model's shorter lengths from the 64k set."""
    path = out / f"ruler-{name}.json"
    if not path.is_file():
        return None
    document = json.loads(path.read_text())
    other = out / "ruler-64k.json"
    unscaled = json.loads(other.read_text())["ruler"].get("none") if name == "128k" and other.is_file() else None
    if unscaled:
        mine = document["ruler"].setdefault("none", {**unscaled, "scores": {}, "average": {}})
        for task, values in unscaled["scores"].items():
            for length, value in values.items():
                mine["scores"].setdefault(task, {}).setdefault(length, value)
        for length, value in unscaled["average"].items():
            mine["average"].setdefault(length, value)
    return document


def summary(args):
    from ropesearch.evaluate.ruler_eval import format_ruler
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
        lines += [f"## {name} set (x{SETS[name][1]})", "",
                  f"{environment_.get('device', '?')}, {environment_.get('dtype', '?')}, {environment_.get('date', '?')}; "
                  f"essays from `{document.get('data')}`, seed {document.get('seed')}, "
                  f"{next(iter(results.values()))['samples']} samples per task and length; scores in %.", "",
                  "```", format_ruler(results), "```", ""]
        for method, result in results.items():
            image = f"ruler-{name}-{method.replace('.json', '')}.png"
            plot_ruler(result, out / image, f"RULER {name} set: {method}")
            lines += [f"![{method}]({image})", ""]
        if found in results:
            for length in sorted(int(n) for n in results[found]["average"]):
                if length <= 8192:
                    continue
                mine = results[found]["average"][str(length)]
                others = {m: results[m]["average"].get(str(length)) for m in ("ntk", "yarn") if m in results}
                verdict = all(v is not None and mine >= v for v in others.values())
                lines.append(f"- {length}: found {100 * mine:.1f} vs " + ", ".join(
                    f"{m} {100 * v:.1f}" if v is not None else f"{m} -" for m, v in others.items())
                    + (" (target met)" if verdict else " (target NOT met)"))
            lines.append("")
    lines += ["Commands: see the docstring of `eval/bench_ruler.py`; each JSON keeps its `command`.", ""]
    (out / "README.md").write_text("\n".join(lines))
    print("\n".join(lines))


def speed(args):
    """Wall and CPU seconds to generate every task at one length (the issue's target: 64k x 20 in < 60 s)."""
    from ropesearch.evaluate.ruler import TASKS, RulerSuite
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
    run_parser.add_argument("--samples", type=int, default=20)
    run_parser.add_argument("--seed", type=int, default=0)
    run_parser.add_argument("--data", default="../shared/data/books", help="essay haystack documents")
    run_parser.add_argument("--model", default="smollm2-135m")
    run_parser.add_argument("--max-batch", type=int, help="samples per generate call (default 512k tokens' worth)")
    run_parser.add_argument("--factors", help="another factor file for the set (tests: another model)")
    run_parser.add_argument("--tasks", help="a subset of the tasks (default all)")
    run_parser.add_argument("--max-new-tokens", type=int, help="cap the answer budgets (default RULER's)")
    run_parser.add_argument("--device")
    run_parser.set_defaults(function=run)
    summary_parser = commands.add_parser("summary", help="tables, heatmaps and targets into --out/README.md")
    summary_parser.set_defaults(function=summary)
    speed_parser = commands.add_parser("speed", help="time the generation of every task at one length (CPU)")
    speed_parser.add_argument("--length", default="64k")
    speed_parser.add_argument("--samples", type=int, default=20)
    speed_parser.add_argument("--data", default="builtin")
    speed_parser.add_argument("--model", default="smollm2-135m")
    speed_parser.add_argument("--json", help="write the timings here")
    speed_parser.set_defaults(function=speed)
    for sub in (run_parser, summary_parser):
        sub.add_argument("--out", default=str(ROOT / "results" / "ruler-smollm2"))
    args = parser.parse_args()
    args.function(args)


if __name__ == "__main__":
    main()
