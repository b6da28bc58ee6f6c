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
    assert saved["same_predictions"] is True
    off, on = (run["cell_seconds"] for run in saved["runs"])
    assert abs(saved["speedup"] - off / on) < 1e-9 and document["length"] == 2048
    assert "| 2 | on |" in out.with_suffix(".md").read_text()
