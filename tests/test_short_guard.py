"""What a search writes is never worse than the start at the original window, and the search says where
it stands: baselines before generation 0, the best as a ratio to YaRN, where every candidate came from."""

import json
import math
from dataclasses import replace

import numpy as np
import pytest

from ropesearch.data import Window
from ropesearch.evaluate import Score, make_evaluator
from ropesearch.evaluate.runs import WindowSpec, prefix_windows, setup
from ropesearch.export import load_factors
from ropesearch.models import rope_base
from ropesearch.rope import RopeBase, make_factors
from ropesearch.search.session import SearchConfig, run_search, search_windows
from ropesearch.search.short_guard import GUARD_MARGIN, guard_windows, measure_guard

TARGET = 1024


@pytest.fixture(scope="module")
def pocket():
    from ropesearch.models import load_model, load_tokenizer, resolve_model

    ref = resolve_model("pocket")
    return load_model(ref, device="cpu"), load_tokenizer(ref)


def original_window_ratio(pocket, factors):
    """Perplexity at the original window with these factors (transformers' switch) / unscaled, on the
    text the guard measures: every 256-token window of the search window."""
    model, tokenizer = pocket
    windows = guard_windows(search_windows(tokenizer, "builtin", TARGET, 1, 0, False), 256)
    scores = make_evaluator(model, progress=False).score([make_factors("none", factors.base, 1), factors], windows, [256])
    return scores[1].ppl[256] / scores[0].ppl[256]


def test_guarded_search_keeps_the_original_window_and_reports_against_yarn(pocket, tmp_path):
    lines = []
    run_search(SearchConfig("pocket", "builtin", TARGET, samples=1, max_evals=12),
               tmp_path / "guarded", loaded=pocket, log=lines.append)
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
    run_search(SearchConfig("pocket", "builtin", TARGET, samples=1, max_evals=12, short_tolerance=None),
               tmp_path / "free", loaded=pocket, log=lambda m: None)
    found = load_factors(tmp_path / "free" / "best.json")
    assert found.short_factor == found.long_factor
    assert original_window_ratio(pocket, found) > 1.01


def test_the_guard_keeps_held_out_documents_within_its_tolerance(pocket):
    """The demo's setting (two 2048-token search windows): the cap is measured on every 256-token
    window of them, within a margin of the tolerance, and the documents the evaluate stage holds out
    stay within the tolerance at it: their starts (what the demo's table scores) and every 256
    tokens of their first 2048."""
    model, tokenizer = pocket
    base = rope_base(model.config)
    windows = search_windows(tokenizer, "builtin", 2048, 2, 0, False)
    evaluator = make_evaluator(model, progress=False)
    guard = measure_guard(evaluator, windows, base, 2048, 0.01, 1.5)
    assert guard.windows == 16 and guard.margin == GUARD_MARGIN < 1
    assert guard.capped_ppl <= guard.unscaled_ppl * (1 + GUARD_MARGIN * 0.01)
    searched = sorted({w.name.rsplit("@", 1)[0] for w in windows})
    held_out = setup("pocket", WindowSpec(samples=6, exclude=searched), 2048, loaded=pocket).windows
    capped = replace(make_factors("none", base, 1), attention_factor=guard.attention_cap)
    starts = prefix_windows(held_out, 256)
    spread = [Window(f"{w.name}+{at}", w.ids[at : at + 256]) for w in held_out for at in range(0, 2048, 256)]
    for text in (starts, spread):
        unscaled, found = evaluator.score([make_factors("none", base, 1), capped], text, [256])
        assert found.ppl[256] <= unscaled.ppl[256] * 1.01, (len(text), found.ppl[256] / unscaled.ppl[256])


def test_the_cap_is_measured_at_a_margin_of_the_tolerance():
    """A model whose perplexity at the original window grows 1% per 0.05 of attention factor: at a
    tolerance of 2% the cap is where the cost is the margin's share of 2%, not 2% itself."""
    base = RopeBase(10_000.0, 8, 64)

    class Linear:
        def score(self, candidates, windows, lengths):
            scores = []
            for candidate in candidates:
                score = Score(candidate)
                ppl = 10 * (1 + 0.2 * (candidate.attention_factor - 1))
                score.add(64, math.log(ppl) * 63, 63)
                scores.append(score)
            return scores

    windows = [Window(f"doc@{k}", np.arange(256) % 50) for k in range(2)]
    guard = measure_guard(Linear(), windows, base, 256, 0.02, 1.5)
    expected = 1 + GUARD_MARGIN * 0.02 / 0.2
    assert expected - 0.011 <= guard.attention_cap <= expected + 1e-9
    assert guard.windows == 8 and guard.as_dict()["margin"] == GUARD_MARGIN
    assert "margin" in guard.describe() and "8 windows" in guard.describe()


@pytest.mark.parametrize("field, value", [("attention_cap", "x"), ("length", 2.5), ("unscaled_ppl", None),
                                          ("bogus", 1)])
def test_a_hand_edited_guard_in_the_config_is_one_error_on_resume(pocket, tmp_path, field, value):
    from ropesearch.errors import RopesearchError

    out = tmp_path / "run"
    run_search(SearchConfig("pocket", "builtin", TARGET, samples=1, max_evals=3),
               out, loaded=pocket, log=lambda *_: None)
    config = json.loads((out / "config.json").read_text())
    config["short_guard"][field] = value
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(RopesearchError, match=f"short_guard.{field}"):
        run_search(SearchConfig("pocket", "builtin", TARGET, samples=1, max_evals=6),
                   out, loaded=pocket, log=lambda *_: None, resume=True)
