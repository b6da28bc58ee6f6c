"""The search measures how well its cheap screen ranks candidates, reports it every generation,
and stops screening when the screen does not rank (issue 37, item 1)."""

import json
from dataclasses import replace

import numpy as np
import pytest

from conftest import search_kwargs, tiny_model, tiny_tokenizer
from ropesearch.search import load_space, objectives
from ropesearch.search.screening import MIN_RANK, cache_pairs, rank_correlation, stop_screening
from ropesearch.search.session import SearchConfig, run_search

TARGET = 256


@pytest.fixture(scope="module")
def loaded():
    tokenizer = tiny_tokenizer()
    return tiny_model("llama", vocab_size=len(tokenizer)), tokenizer


def space(generations=4):
    fast = load_space("fast")
    return replace(fast, budget=replace(fast.budget, generations=generations))


def search(loaded, out, logged=None, **kwargs):
    config, runtime = search_kwargs(kwargs)
    return run_search(SearchConfig("tiny", "builtin", TARGET, space=space(), short_tolerance=None, **config), out,
                      loaded=loaded, log=(logged.append if logged is not None else lambda m: None), **runtime)


@pytest.fixture
def screen_says(monkeypatch):
    """Replace the screen by a function of the candidate's true full score: an honest screen (the
    full score itself) or a lying one (its negation), so the test knows what the screen is worth."""
    def install(sign):
        def screen(self, candidates):
            values, seconds, notes = self.score(candidates)
            return sign * values[:, 0], seconds, notes
        monkeypatch.setattr(objectives.Objective, "screen", screen)
    return install


def progress(run):
    return json.loads((run / "progress.json").read_text())


def history(run):
    return [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]


def test_a_lying_screen_is_detected_and_abandoned(loaded, tmp_path, screen_says):
    screen_says(-1)
    logged = []
    result = search(loaded, tmp_path / "run", logged)
    entries = progress(tmp_path / "run")
    judged = [e for e in entries if e["screen"]["spearman"] is not None]
    assert judged and judged[0]["screen"]["spearman"] < MIN_RANK and not judged[0]["screen"]["on"]
    stopped = judged[0]["generation"]
    # after the generation that judged it, nothing is screened and every new offspring is scored in full
    later = [r for r in history(tmp_path / "run") if r["generation"] > stopped]
    assert later and all(r["fidelity"] == "full" for r in later)
    assert all(not e["screen"]["on"] for e in entries if e["generation"] >= stopped)
    assert result.state.screen_off and "Spearman -1.00" in result.state.screen_off
    assert any("screening stops after generation" in line for line in logged)
    assert any("screen rho -1.00" in line and "(off)" in line for line in logged)


def test_an_honest_screen_stays_on_and_its_rank_is_reported(loaded, tmp_path, screen_says):
    screen_says(+1)
    result = search(loaded, tmp_path / "run")
    entries = progress(tmp_path / "run")
    assert result.state.screen_off is None
    assert [e["screen"]["spearman"] for e in entries[1:]] == [1.0] * (len(entries) - 1)
    assert all(e["screen"]["on"] for e in entries)
    assert [e["screen"]["pairs"] for e in entries] == sorted(e["screen"]["pairs"] for e in entries)
    assert entries[-1]["screen"]["pairs"] >= 8
    screened_late = [r for r in history(tmp_path / "run") if r["fidelity"] == "screen" and r["generation"] == 3]
    assert screened_late


def test_a_stopped_screen_stays_stopped_on_resume(loaded, tmp_path, screen_says):
    screen_says(-1)
    straight = search(loaded, tmp_path / "straight")
    search(loaded, tmp_path / "resumed", stop_after=2)
    resumed = search(loaded, tmp_path / "resumed", resume=True)
    assert resumed.state.screen_off == straight.state.screen_off is not None
    assert resumed.factors == straight.factors and resumed.values == straight.values
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(history(tmp_path / "resumed")) == strip(history(tmp_path / "straight"))


def test_rank_correlation_leaves_out_failed_candidates_and_needs_enough_points():
    pairs = [(1.0, 10.0), (2.0, 20.0), (3.0, 30.0), (np.inf, 5.0), (4.0, np.inf)]
    assert rank_correlation(pairs) == {"pairs": 3, "spearman": 1.0, "kendall": 1.0}
    assert rank_correlation(pairs[:2])["spearman"] is None
    assert rank_correlation([(1.0, 1.0)] * 4)["spearman"] is None  # no variation: no ranking to judge
    reversed_ = [(float(i), float(-i)) for i in range(8)]
    assert stop_screening(rank_correlation(reversed_[:7])) is None  # too few points yet
    assert "Spearman -1.00 over 8" in stop_screening(rank_correlation(reversed_))
    # a weak rho over few pairs is noise, not a verdict; the same rho over many pairs is
    assert stop_screening({"pairs": 8, "spearman": 0.14}) is None
    assert "upper bound 0.3" in stop_screening({"pairs": 100, "spearman": 0.14})
    # could still be 0.5, but from 32 pairs on the point value itself must reach it
    assert stop_screening({"pairs": 31, "spearman": 0.45}) is None
    assert "below 0.5 with 32 or more pairs" in stop_screening({"pairs": 32, "spearman": 0.45})
    assert "below 0.5 with 32 or more pairs" in stop_screening({"pairs": 300, "spearman": 0.45})
    assert stop_screening({"pairs": 300, "spearman": 0.5}) is None
    assert cache_pairs({"a": 1.0, "b": 2.0}, {"b": [5.0, 9.0], "c": [1.0]}) == [(2.0, 5.0)]
