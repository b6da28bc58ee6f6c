"""What a search writes is never worse than the start at the original window, and the search says where
it stands: baselines before generation 0, the best as a ratio to YaRN, where every candidate came from."""

import json

import pytest

from ropesearch.evaluate import make_evaluator
from ropesearch.export import load_factors
from ropesearch.rope import make_factors
from ropesearch.search.session import run_search, search_windows
from ropesearch.search.short_guard import short_windows

TARGET = 1024


@pytest.fixture(scope="module")
def pocket():
    from ropesearch.models import load_model, load_tokenizer, resolve_model

    ref = resolve_model("pocket")
    return load_model(ref, device="cpu"), load_tokenizer(ref)


def original_window_ratio(pocket, factors):
    """Perplexity at the original window with these factors (transformers' switch) / unscaled."""
    model, tokenizer = pocket
    windows = short_windows(search_windows(tokenizer, "builtin", TARGET, 1, 0, False), 256)
    scores = make_evaluator(model, progress=False).score([make_factors("none", factors.base, 1), factors], windows, [256])
    return scores[1].ppl[256] / scores[0].ppl[256]


def test_guarded_search_keeps_the_original_window_and_reports_against_yarn(pocket, tmp_path):
    lines = []
    run_search("pocket", "builtin", TARGET, tmp_path / "guarded", samples=1, max_evals=12, loaded=pocket,
               log=lines.append)
    found = load_factors(tmp_path / "guarded" / "best.json")
    guard = json.loads((tmp_path / "guarded" / "config.json").read_text())["short_guard"]
    assert found.short_factor == (1.0,) * found.base.n_factors and found.attention_factor <= guard["attention_cap"]
    assert original_window_ratio(pocket, found) <= 1.01
    # said before generation 0 finished: the guard, then PI / NTK / YaRN at the target
    assert lines[0].startswith("short guard") and lines[1].startswith("baselines at 1024 tokens")
    assert "YaRN" in lines[1] and lines[2].startswith("gen   0") and "x YaRN)" in lines[2]
    rows = [json.loads(line) for line in (tmp_path / "guarded" / "history.jsonl").read_text().splitlines()]
    assert {"seed:pi", "seed:ntk", "seed:yarn"} <= {r["origin"] for r in rows}
    progress = json.loads((tmp_path / "guarded" / "progress.json").read_text())
    assert progress[-1]["evaluator_seconds"] > 0 and "gpu_seconds" not in progress[-1]


def test_unguarded_search_is_worse_at_the_original_window(pocket, tmp_path):
    """The check above can fail: without the guard the found factors cost well over 1% at 256 tokens."""
    run_search("pocket", "builtin", TARGET, tmp_path / "free", samples=1, max_evals=12, loaded=pocket,
               log=lambda m: None, short_tolerance=None)
    found = load_factors(tmp_path / "free" / "best.json")
    assert found.short_factor == found.long_factor
    assert original_window_ratio(pocket, found) > 1.01
