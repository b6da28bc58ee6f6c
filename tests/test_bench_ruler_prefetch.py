"""eval/bench_ruler_prefetch.py --quick: a cell with and without the prompt worker, the same answers, JSON and markdown."""

import importlib.util
import json
from pathlib import Path

spec = importlib.util.spec_from_file_location("bench_ruler_prefetch",
                                              Path(__file__).parents[1] / "eval" / "bench_ruler_prefetch.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_quick_run_times_both_ways_with_the_same_answers(tmp_path):
    out = tmp_path / "prefetch.json"
    document = bench.main(["--quick", "--data", "builtin", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert [run["prefetch"] for run in saved["runs"]] == [False, True]
    assert all(run["cell_seconds"] > 0 and run["wall_seconds"] >= run["cell_seconds"] for run in saved["runs"])
    assert saved["same_predictions"] is True and saved["same_batches"] is True
    assert document["length"] == 2048 and len(saved["runs"][0]["batch_sizes"]) >= 1
    assert "| 2 | on |" in out.with_suffix(".md").read_text()


def test_rounds_alternate_which_way_runs_first_and_pairs_give_their_ratio():
    assert bench.run_order(1) == [False, True]
    assert bench.run_order(3) == [False, True, True, False, False, True]
    runs = [{"prefetch": p, "cell_seconds": s} for p, s in zip(bench.run_order(2), (10.0, 8.0, 9.0, 12.0))]
    mean, speedup, pairs = bench.speedups(runs)
    assert mean == {False: 11.0, True: 8.5} and speedup == 11.0 / 8.5 and pairs == [10.0 / 8.0, 12.0 / 9.0]


def test_prompts_only_compares_every_task_built_both_ways(tmp_path):
    out = tmp_path / "prompts.json"
    document = bench.main(["--quick", "--prompts-only", "--data", "builtin", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["same_prompts"] == {task: True for task in bench.TASKS} == document["same_prompts"]
    assert saved["command"].endswith("--quick --prompts-only --data builtin --out " + str(out))
