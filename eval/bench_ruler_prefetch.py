"""`ropesearch ruler` with and without --prefetch, in the same run: what building the prompts in a
worker process (while the model answers) saves on one cell of all 11 tasks.

    python eval/bench_ruler_prefetch.py --length 32k --out results/bench-ruler-prefetch.json

(SmolLM2-135M, YaRN at --scale, 20 samples per task; on an H100 about 75 s a run at 32k; essays
from --data, default ../shared/data/books, else builtin.) `--quick` runs the pocket model on the
CPU at 2k with one sample per task in under a minute (a test of the script, not a timing: there the
worker shares the model's cores).

First a warm-up (one task, one sample: CUDA's start), then `--rounds` pairs of runs in the order
off, on, on, off, ... (each way as often first as second of a pair, so what the first run of a
shape pays falls on both), each a fresh `ropesearch ruler` into its own JSON: `cell s` is the
cell's `seconds` (its tasks' prompts built, tokenized, answered; without the worker the build is
inside it), `wall s` the whole command (model load and the worker's start too). The speed-up is
the mean of the off runs over the mean of the on runs, and each pair's ratio shows its spread. This
is the first cell of a command, where the worker also starts and builds the first task while the
GPU waits: in a run of several lengths it builds the next length meanwhile, so later cells can
gain more. The samples are the same either way (tests/test_ruler_prefetch.py; `--prompts-only`
checks every task's at --length without a model: all 11 x 20 at 32k of the books on this CPU,
results/bench-ruler-prefetch-prompts.json), but greedy bf16 answers on a GPU need not be: a batch
size is measured from free memory (`same batches`), and even with the same batches two runs can
differ, so `same predictions` is reported, not required.

Measured (one H100, 2026-12-06, `--length 32k --rounds 1`, results/bench-ruler-prefetch.md): the
cell took 84.3 s without the worker and 60.7 s with it, 1.39x (one pair, same batches; averages
8.7 and 8.3 %, from the same prompts: the spread of the GPU's answers between runs; the proof's
own run of this cell, with other batches, 8.6).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ropesearch.cli import cli  # noqa: E402
from ropesearch.tasks.ruler import TASKS  # noqa: E402
from ropesearch.evaluate.runs import save_json  # noqa: E402
from ropesearch.own_files import atomic_write_text  # noqa: E402
from ropesearch.tables import markdown  # noqa: E402
from ropesearch.units import parse_token_list  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BOOKS = ROOT.parent / "shared/data/books"


def ruler(args, json_out: Path, prefetch: bool, tasks: str, samples: int) -> tuple[dict, float]:
    """One `ropesearch ruler` command: its result column and wall seconds."""
    command = ["ruler", "--model", args.model, "--methods", "yarn", "--scale", str(args.scale), "--lengths",
               str(args.length), "--tasks", tasks, "--samples", str(samples), "--data", args.data,
               "--json", str(json_out), "--prefetch" if prefetch else "--no-prefetch"]
    if args.device:
        command += ["--device", args.device]
    started = time.perf_counter()
    cli.main(command, prog_name="ropesearch", standalone_mode=False)
    wall = time.perf_counter() - started
    document = json.loads(json_out.read_text())
    return {**document["ruler"]["yarn"], "environment": document["environment"]}, wall


def run_order(rounds: int) -> list[bool]:
    """Prefetch off or on for each run: off, on, then on, off, ... (each way first as often)."""
    return [flag for pair in range(rounds) for flag in ((False, True) if pair % 2 == 0 else (True, False))]


def speedups(runs: list[dict]) -> tuple[dict, float, list[float]]:
    """Mean cell seconds each way, their ratio (off over on), and each pair's ratio."""
    mean = {flag: float(np.mean([r["cell_seconds"] for r in runs if r["prefetch"] == flag])) for flag in (False, True)}
    pairs = [sorted(runs[i:i + 2], key=lambda r: r["prefetch"]) for i in range(0, len(runs), 2)]
    return mean, mean[False] / mean[True], [off["cell_seconds"] / on["cell_seconds"] for off, on in pairs]


def table(runs: list[dict]) -> str:
    return markdown(["run", "prefetch", "cell s", "wall s", "average %", "batch sizes"],
                    [[str(i + 1), "on" if r["prefetch"] else "off", f"{r['cell_seconds']:.1f}", f"{r['wall_seconds']:.1f}",
                      f"{r['average']:.1f}", " ".join(map(str, r["batch_sizes"]))] for i, r in enumerate(runs)])


def same_prompts(args, argv) -> dict:
    """Every task's samples at --length built by the worker and in this process, compared (no model)."""
    from ropesearch.tasks.ruler import RulerSuite
    from ropesearch.tasks.ruler_prefetch import PrefetchedSuite
    from ropesearch.models import load_tokenizer, resolve_model

    tokenizer = load_tokenizer(resolve_model(args.model))
    here, started = RulerSuite(tokenizer, args.data), time.perf_counter()
    with PrefetchedSuite(tokenizer, args.data) as ahead:
        ahead.plan((task, args.length, args.samples) for task in TASKS)
        same = {task: ahead.samples(task, args.length, args.samples) == here.samples(task, args.length, args.samples)
                for task in TASKS}
    document = {"model": args.model, "length": args.length, "samples": args.samples, "data": args.data,
                "same_prompts": same, "seconds": time.perf_counter() - started,
                "command": " ".join(["python eval/bench_ruler_prefetch.py", *argv]),
                "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    save_json(document, args.out)
    print(f"{sum(same.values())} of {len(same)} tasks: the same {args.samples} samples at {args.length:,} tokens "
          f"with and without the worker ({document['seconds']:.0f} s)")
    return document


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--length", default="32k", help="one length in tokens")
    parser.add_argument("--scale", type=float, default=8.0, help="YaRN's scale")
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=1, help="pairs of runs (off, on, then on, off, ...)")
    parser.add_argument("--data", default=str(BOOKS) if BOOKS.is_dir() else "builtin")
    parser.add_argument("--device")
    parser.add_argument("--quick", action="store_true",
                        help="instead of --model, --length, --samples, --scale, --device: the pocket model on the "
                             "CPU at 2k, 1 sample, YaRN x2")
    parser.add_argument("--prompts-only", action="store_true",
                        help="no timing and no model: check that the worker builds the samples this process builds")
    parser.add_argument("--out", default="results/bench-ruler-prefetch.json")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds: give 1 or more")
    if args.quick:
        args.model, args.length, args.samples, args.device, args.scale = "pocket", "2k", 1, "cpu", 2.0
    (args.length,) = parse_token_list(args.length)
    if args.prompts_only:
        return same_prompts(args, argv)
    runs = []
    with tempfile.TemporaryDirectory() as scratch:
        ruler(args, Path(scratch) / "warm-up.json", True, "niah_single_1", 1)
        for index, prefetch in enumerate(run_order(args.rounds)):
            result, wall = ruler(args, Path(scratch) / f"run-{index}.json", prefetch, "all", args.samples)
            runs.append({"prefetch": prefetch, "cell_seconds": result["seconds"][str(args.length)],
                         "wall_seconds": wall, "average": 100 * result["average"][str(args.length)],
                         "batch_sizes": result["batch_sizes"][str(args.length)],
                         "predictions": result["predictions"], "environment": result["environment"]})
            print(f"prefetch {'on ' if prefetch else 'off'}: cell {runs[-1]['cell_seconds']:.1f} s, "
                  f"wall {wall:.1f} s", flush=True)
    mean, speedup, pair_speedups = speedups(runs)
    same = all(r["predictions"] == runs[0]["predictions"] for r in runs)
    same_batches = all(r["batch_sizes"] == runs[0]["batch_sizes"] for r in runs)
    environment = runs[0]["environment"]
    document = {"model": args.model, "length": args.length, "method": f"yarn x{args.scale:g}",
                "samples": args.samples, "tasks": len(TASKS), "data": args.data, "speedup": speedup,
                "pair_speedups": pair_speedups, "same_predictions": same, "same_batches": same_batches,
                "runs": [{k: v for k, v in r.items() if k not in ("predictions", "environment")} for r in runs],
                "command": " ".join(["python eval/bench_ruler_prefetch.py", *argv]),
                "environment": environment}
    save_json(document, args.out)
    summary = (f"cell of {len(TASKS)} tasks x {args.samples} samples at {args.length:,} tokens, {args.model}, yarn "
               f"x{args.scale:g}: prefetch off {mean[False]:.1f} s, on {mean[True]:.1f} s (mean of {args.rounds}), "
               f"speed-up {document['speedup']:.2f}x (pairs: "
               f"{', '.join(f'{x:.2f}x' for x in document['pair_speedups'])}); same predictions: {same}, "
               f"same batches: {same_batches}")
    print(table(document["runs"]) + "\n\n" + summary)
    atomic_write_text(Path(args.out).with_suffix(".md"),
                      f"# RULER prompts built ahead (--prefetch) or in the cell\n\n`{document['command']}`; "
                      f"{environment.get('device')}, {environment.get('date')}\n\n{table(document['runs'])}\n\n"
                      f"{summary}\n")
    return document


if __name__ == "__main__":
    main()
