"""Candidates per second on Ray workers against one worker: the pocket model at 8x on CPU.

    python eval/bench_workers.py --json results/bench-workers.json --markdown results/bench-workers.md

Each worker is a Ray actor holding its own copy of the pocket model with ONE torch thread, so
"2 workers vs 1" compares the same per-worker setting on twice the cores (the pool's scaling).
For reference the same job also runs in this process, without Ray, with 1 and with 2 torch
threads (2 threads = the whole 2-core machine for one process). The rounds alternate the
settings, so a neighbour's load hits all of them alike; every round is reported, plus the median.
On a GPU machine the same script measures GPU workers (--gpus-per-worker 1, --workers N).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# a one-machine Ray instance on the loopback interface only
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from ropesearch.data import load_documents, sample_windows, tokenize_documents  # noqa: E402
from ropesearch.evaluate import TorchEvaluator  # noqa: E402
from ropesearch.evaluate.workers import WorkerOptions, WorkerPool  # noqa: E402
from ropesearch.models import load_model, load_tokenizer, resolve_model, rope_base  # noqa: E402
from ropesearch.rope import methods  # noqa: E402
from ropesearch.tables import markdown_lines  # noqa: E402


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="pocket")
    parser.add_argument("--scale", type=float, default=8.0, help="window = scale x the model's window")
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument("--windows", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--gpus-per-worker", type=int, default=0, help="0: CPU workers with one torch thread each")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json")
    parser.add_argument("--markdown")
    args = parser.parse_args(argv)

    import ray
    import torch

    ref = resolve_model(args.model)
    model, tokenizer = load_model(ref, device="cpu" if not args.gpus_per_worker else None), load_tokenizer(ref)
    base = rope_base(model.config)
    length = int(base.original_context * args.scale)
    windows = sample_windows(tokenize_documents(load_documents("builtin"), tokenizer), length, args.windows, 0)
    # distinct candidates: YaRN at scales around the target (nothing is cached between rounds anyway)
    candidates = [methods.yarn(base, args.scale * (1 + 0.02 * i)) for i in range(args.candidates)]

    ray.init(address="local", num_cpus=max(os.cpu_count() or 1, 1 + args.workers), include_dashboard=False, log_to_driver=False)
    options = dict(gpus_per_worker=args.gpus_per_worker, threads=1)
    started = time.perf_counter()
    pools = {1: WorkerPool(args.model, WorkerOptions(count=1, **options), progress=False),
             args.workers: WorkerPool(args.model, WorkerOptions(count=args.workers, **options), progress=False)}
    startup = time.perf_counter() - started
    print(f"{len(candidates)} candidates x {len(windows)} windows of {length} tokens; workers started in {startup:.1f} s",
          file=sys.stderr)

    def in_process(threads: int):
        def run():
            previous = torch.get_num_threads()
            torch.set_num_threads(threads)
            try:
                return TorchEvaluator(model, progress=False).score(candidates, windows)
            finally:
                torch.set_num_threads(previous)
        return run

    settings = {"1 worker": lambda: pools[1].score(candidates, windows),
                f"{args.workers} workers": lambda: pools[args.workers].score(candidates, windows),
                "in-process, 1 thread": in_process(1), "in-process, 2 threads": in_process(2)}
    reference = None
    for name, run in settings.items():  # warm-up, and every setting must give the same scores
        scores = [s.nll_sum for s in run()]
        reference = reference or scores
        assert scores == reference, f"{name} scored differently"
    rates: dict[str, list[float]] = {name: [] for name in settings}
    for round_number in range(args.rounds):
        for name, run in settings.items():
            began = time.perf_counter()
            run()
            rates[name].append(len(candidates) / (time.perf_counter() - began))
        print(f"round {round_number + 1}: " + ", ".join(f"{n} {r[-1]:.3f}/s" for n, r in rates.items()), file=sys.stderr)
    for pool in pools.values():
        pool.close()
    ray.shutdown()

    one, many = "1 worker", f"{args.workers} workers"
    speedups = [b / a for a, b in zip(rates[one], rates[many])]
    result = {
        "model": args.model, "tokens": length, "candidates": len(candidates), "windows": len(windows),
        "workers": args.workers, "threads_per_worker": 1, "gpus_per_worker": args.gpus_per_worker,
        "rounds": args.rounds, "candidates_per_second": rates,
        "median": {name: statistics.median(values) for name, values in rates.items()},
        "speedup_per_round": speedups, "speedup_median": statistics.median(speedups),
        "worker_startup_seconds": round(startup, 1), "scores_identical": True,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores ({platform.processor() or 'cpu'}), shared with "
                   "other jobs", "load_average": os.getloadavg(),
        "torch": torch.__version__, "ray": ray.__version__,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python eval/bench_workers.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    table = markdown(result)
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    return result


def markdown(result: dict) -> str:
    names = list(result["candidates_per_second"])
    rounds = range(result["rounds"])
    lines = [
        "# Ray workers: candidates per second",
        "",
        f"Command: `{result['command']}`  ",
        f"Machine: {result['machine']}; load average at the end {', '.join(f'{x:.1f}' for x in result['load_average'])}; "
        f"torch {result['torch']}, ray {result['ray']}; date {result['date']}  ",
        f"Job: {result['candidates']} candidates x {result['windows']} windows of {result['tokens']} tokens "
        f"({result['model']}); each worker one torch thread; scores identical in every setting: "
        f"{result['scores_identical']}",
        "",
    ]
    rows = [[f"{name} (cand/s)"] + [f"{v:.3f}" for v in result["candidates_per_second"][name]]
            + [f"{result['median'][name]:.3f}"] for name in names]
    rows.append([f"{result['workers']} workers / 1 worker"] + [f"{s:.2f}x" for s in result["speedup_per_round"]]
                + [f"{result['speedup_median']:.2f}x"])
    lines += markdown_lines(["setting"] + [f"round {r + 1}" for r in rounds] + ["median"], rows)
    return "\n".join(lines)


if __name__ == "__main__":
    main()
