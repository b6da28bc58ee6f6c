"""eval/bench_search.py's race: GPU seconds each run needs to match the reference's final best."""

import importlib.util
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location("bench_search", Path(__file__).parents[1] / "eval" / "bench_search.py")
bench_search = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench_search)


def points(*pairs):
    return [{"gpu_seconds": s, "best": b} for s, b in pairs]


def test_time_to_reach_the_reference_best():
    progress = {
        "reference": points((10, 40.0), (50, 35.0), (90, 33.0), (100, 33.0)),  # its best first at 90 s
        "quick": points((5, 36.0), (30, 32.9), (60, 32.0)),
        "slow": points((10, 38.0), (100, 34.0)),
    }
    race = bench_search.time_to_reach(progress, "reference")
    assert race["target"] == 33.0 and race["reference_seconds"] == 90
    assert race["runs"]["quick"]["seconds"] == 30 and race["runs"]["quick"]["fraction"] == pytest.approx(1 / 3)
    assert race["runs"]["slow"]["seconds"] is None and race["runs"]["slow"]["final_best"] == 34.0
    assert bench_search.time_to_reach(progress, "missing") is None
