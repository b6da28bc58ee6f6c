"""`ropesearch report` draws every plot from a CPU run directory; the test opens them as images."""

import json

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from matplotlib.image import imread

from ropesearch.cli import cli


@pytest.fixture(scope="module")
def run_dir(tiny_model_dir, tmp_path_factory):
    import os

    root = tmp_path_factory.mktemp("report")
    os.environ["ROPESEARCH_CACHE"] = str(root / "cache")
    model, docs = tiny_model_dir
    space = yaml.safe_load(open("search_spaces/fast.yaml"))
    space["budget"].update(population=6, top_k=3, generations=2)
    (root / "space.yaml").write_text(yaml.safe_dump(space))
    run = root / "run"
    invoke = lambda *args: CliRunner().invoke(cli, [str(a) for a in args])  # noqa: E731
    result = invoke("search", "--model", model, "--data", docs, "--target-length", 256, "--space", root / "space.yaml",
                    "--out", run, "--samples", 1)
    assert result.exit_code == 0, result.output
    result = invoke("baselines", "--model", model, "--data", docs, "--lengths", "64,128,256", "--samples", 1,
                    "--heldout-of", run, "--factors", run / "best.json", "--json", run / "heldout.json")
    assert result.exit_code == 0, result.output
    result = invoke("passkey", "--model", model, "--lengths", "320", "--depths", "0.2,0.8", "--trials", 1,
                    "--methods", "none,yarn", "--factors", run / "best.json", "--json", run / "passkey.json")
    assert result.exit_code == 0, result.output
    result = invoke("lm-eval", "--model", model, "--tasks", "ropesearch_passkey,ropesearch_ppl", "--data", docs,
                    "--lengths", "320", "--limit", 2, "--doc-tokens", 600, "--factors", run / "best.json", "--methods", "",
                    "--workdir", root / "lm-eval", "--json", run / "lm-eval.json")
    assert result.exit_code == 0, result.output
    result = invoke("report", run)
    assert result.exit_code == 0, result.output
    return run


def test_every_plot_is_a_real_picture(run_dir):
    report = (run_dir / "report" / "report.md").read_text()
    expected = ["factors.png", "progress.png", "ppl-heldout.png", "ppl-relative-heldout.png", "passkey-passkey-best.json.png",
                "passkey-passkey-none.png", "passkey-passkey-yarn.png"]
    for name in expected:
        path = run_dir / "report" / name
        assert path.is_file(), name
        assert f"]({name})" in report
        image = imread(path)
        assert image.shape[0] > 200 and image.shape[1] > 300
        # a drawn figure: many distinct colours, not a blank canvas
        assert len(np.unique(image.reshape(-1, image.shape[-1]), axis=0)) > 50


def test_report_text_has_every_section(run_dir):
    report = (run_dir / "report" / "report.md").read_text()
    for fragment in ("Scores on the search windows", "full evaluations", "tokens (the target) the found factors score",
                     "(the original window)", "the unscaled model (", "Perplexity (heldout.json)",
                     "Passkey retrieval (passkey.json)", "lm-eval (lm-eval.json)", "ropesearch_ppl", "bits_per_byte"):
        assert fragment in report, fragment
    passkey = json.loads((run_dir / "passkey.json").read_text())["passkey"]
    assert set(passkey) == {"none", "yarn", "best.json"}


def test_report_of_an_empty_folder_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(cli, ["report", str(tmp_path)])
    assert result.exit_code == 1 and "holds nothing to report" in result.output


def test_perplexity_plots_speak_tokens_and_label_the_windows(tmp_path):
    from ropesearch.report.plots import _token_axis, token_label

    assert [token_label(n) for n in (256, 1000, 1024, 32768, 1 << 20, 3 << 19)] == ["256", "1000", "1k", "32k", "1M", "1536k"]
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots()
    lengths = [256, 1024, 2048]
    axis.plot(lengths, [1, 2, 3])
    _token_axis(axis, lengths, {"original_context": 256, "scales": {"none": 1.0, "yarn": 8.0}})
    figure.canvas.draw()
    assert [t.get_text() for t in axis.get_xticklabels()] == ["256", "1k", "2k"]
    assert [line.get_label() for line in axis.lines[1:]] == ["original window (256)", "target window (2k)"]
    assert not axis.texts  # named in the legend, outside the axes: no text over the points
    plt.close(figure)
    from ropesearch.report.plots import plot_relative

    table = {"lengths": lengths, "original_context": 256, "scales": {"yarn": 8.0, "found": 8.0},
             "ppl": {"yarn": {"256": 30.0, "1024": 24.0, "2048": 21.0}, "found": {"256": 24.0, "1024": 23.0, "2048": 21.5}}}
    assert plot_relative(table, tmp_path / "relative.png").is_file()
    assert plot_relative({**table, "ppl": {"found": table["ppl"]["found"]}}, tmp_path / "none.png") is None


# ---- plots a reader understands at a glance (issue 34) ---------------------------------------------------

TABLE = {"lengths": [256, 512, 1024, 2048], "original_context": 256,
         "scales": {"none": 1.0, "pi": 8.0, "ntk": 8.0, "yarn": 8.0, "found": 8.0},
         "ppl": {"none": {"256": 23.63, "512": 51.35, "1024": 115.06, "2048": 164.55},
                 "pi": {"256": 129.52, "512": 123.95, "1024": 99.39, "2048": 98.19},
                 "ntk": {"256": 26.02, "512": 24.43, "1024": 26.33, "2048": 77.51},
                 "yarn": {"256": 29.22, "512": 28.38, "1024": 23.93, "2048": 20.84},
                 "found": {"256": 23.77, "512": 27.02, "1024": 23.01, "2048": 20.65}}}
PROGRESS = [{"full_evals": 15 * g, "screen_evals": 0, "elapsed": 20.0 * g, "evaluator_seconds": 25.0 * g,
             "best": {"ppl@2048": 14.81 - 0.1 * g}} for g in range(1, 5)]


@pytest.fixture
def figures(monkeypatch, tmp_path):
    """Every report plot drawn from a demo-like run, kept open as figures instead of saved."""
    import matplotlib.pyplot as plt

    from ropesearch.report import plots
    from ropesearch.rope import RopeBase, make_factors

    drawn = {}
    monkeypatch.setattr(plots, "_save", lambda figure, path: drawn.setdefault(path.stem, figure) and path)
    base = RopeBase(rope_theta=10000.0, rotary_dim=64, original_context=256)
    sets = {f"{m} x8": make_factors(m, base, 8.0) for m in ("pi", "ntk", "yarn")}
    plots.plot_factors({"found": make_factors("yarn", base, 8.0), **sets}, tmp_path / "factors.png")
    plots.plot_perplexity(TABLE, tmp_path / "ppl.png")
    plots.plot_relative(TABLE, tmp_path / "relative.png")
    plots.plot_progress(PROGRESS, tmp_path / "progress.png", "ppl@2048", {"pi": 85.3, "ntk": 59.0, "yarn": 14.01})
    for figure in drawn.values():
        figure.tight_layout()
        figure.canvas.draw()
    yield drawn
    for figure in drawn.values():
        plt.close(figure)


def _labelled_lines(figure):
    return [line for axis in figure.axes for line in axis.lines if not line.get_label().startswith("_")]


def test_each_method_has_one_colour_in_every_plot(figures):
    from matplotlib.colors import to_hex

    from ropesearch.report.plots import METHOD_COLORS, method_color, method_of
    from ropesearch.rope import METHODS

    seen = {}
    for name, figure in figures.items():
        for line in _labelled_lines(figure):
            method = method_of(line.get_label())
            if method in METHOD_COLORS:
                seen.setdefault(method, set()).add(to_hex(line.get_color()))
    assert {"found", "none", "pi", "ntk", "yarn"} <= set(seen)
    assert all(len(colours) == 1 for colours in seen.values()), seen
    assert len({next(iter(c)) for c in seen.values()}) == len(seen)  # and no two methods share one
    assert set(METHODS) <= set(METHOD_COLORS)
    assert method_color("best.json") == method_color("found") == method_color("found (short)")
    others = [method_color(f"stage{i}.json") for i in range(3)]
    assert len(set(others)) == 3 and not set(others) & set(METHOD_COLORS.values())
    assert method_color("stage1.json") == others[1]  # asked again, from another plot: the same


def _numbers(labels):
    return [float(t.get_text()) for t in labels if t.get_text()]


def test_log_axes_are_labelled_in_plain_numbers_past_every_point(figures):
    import re

    for name in ("factors", "ppl", "relative"):
        axis = figures[name].axes[0]
        labels = [t.get_text() for t in axis.get_yticklabels()]
        assert labels and all(re.fullmatch(r"[0-9]+(\.[0-9]+)?", t) for t in labels), (name, labels)
        values = np.concatenate([line.get_ydata() for line in axis.lines  # data lines, not the window lines
                                 if line.get_transform() == axis.transData])
        ticks = _numbers(axis.get_yticklabels())
        assert min(ticks) <= values.min() and max(ticks) >= values.max(), (name, ticks)
        assert not [t for t in axis.yaxis.get_minorticklabels() if t.get_text()]
    ppl = _numbers(figures["ppl"].axes[0].get_yticklabels())
    assert [t for t in ppl if t > 100], ppl  # points at 129 and 165 read against a label above 100


def test_log_ticks_pick_a_readable_ladder():
    from ropesearch.report.plots import log_ticks

    assert log_ticks(1.0, 10.0) == [1, 2, 5, 10]
    assert log_ticks(20.65, 164.55) == [20, 50, 100, 200]
    assert log_ticks(15.09, 213.5) == [15, 20, 30, 50, 70, 100, 150, 200, 300]
    narrow = log_ticks(14.4, 14.9)
    assert narrow[0] <= 14.4 and narrow[-1] >= 14.9 and len(narrow) >= 3
    assert log_ticks(1.0, 1.0)[0] <= 1.0 <= log_ticks(1.0, 1.0)[-1]


def test_progress_plot_draws_yarn_and_ntk_and_keeps_them_in_view(figures):
    from ropesearch.report.plots import method_color

    for axis in figures["progress"].axes:
        lines = {line.get_label(): line for line in axis.lines}
        yarn = next(line for label, line in lines.items() if label.startswith("YaRN"))
        ntk = next(line for label, line in lines.items() if label.startswith("NTK"))
        assert list(yarn.get_ydata()) == [14.01, 14.01] and list(ntk.get_ydata()) == [59.0, 59.0]
        assert yarn.get_color() == method_color("yarn") and ntk.get_color() == method_color("ntk")
        low, high = axis.get_ylim()
        assert low < 14.01 and high > 59.0
        assert not [label for label in lines if label.startswith("PI")]  # far off: it would flatten the curve
    assert "1.0" in figures["progress"]._suptitle.get_text() and "x YaRN" in figures["progress"]._suptitle.get_text()


def _inside(value, limits):
    """A tick matplotlib draws: one in the view (the locator also names ticks past the limits)."""
    return min(limits) <= value <= max(limits)


def test_no_label_covers_data(figures):
    """Legends lie outside every axes, and no title, axis label, legend or tick label overlaps another."""
    for name, figure in figures.items():
        renderer = figure.canvas.get_renderer()
        areas = [axis.get_window_extent(renderer) for axis in figure.axes]
        texts = [figure._suptitle] if figure._suptitle else []
        for axis in figure.axes:
            assert not axis.texts, (name, [t.get_text() for t in axis.texts])
            legend = axis.get_legend()
            if legend:
                box = legend.get_window_extent(renderer)
                assert not any(box.overlaps(area) for area in areas), name
                texts.append(legend)
            texts += [axis.title, axis.xaxis.label, axis.yaxis.label]
            texts += [t for t in axis.get_xticklabels() if t.get_text() and _inside(t.get_position()[0], axis.get_xlim())]
            texts += [t for t in axis.get_yticklabels() if t.get_text() and _inside(t.get_position()[1], axis.get_ylim())]
        boxes = [(t, t.get_window_extent(renderer)) for t in texts if not hasattr(t, "get_text") or t.get_text()]
        for i, (first, a) in enumerate(boxes):
            for second, b in boxes[i + 1:]:
                assert not a.overlaps(b), (name, str(first), str(second))


def test_report_says_in_words_whether_the_found_model_beats_each_baseline():
    from ropesearch.report.build import verdict_lines

    text = " ".join(verdict_lines(TABLE))
    target, original = text.split("; ")
    assert target.startswith("At 2048 tokens (the target) the found factors score 20.65: below YaRN (20.84, 0.991x), "
                             "below NTK (77.51, 0.266x), below PI (98.19, 0.210x) and below the unscaled model "
                             "(164.55, 0.125x)")
    assert original.startswith("at 256 tokens (the original window) the found factors score 23.77: above the "
                               "unscaled model (23.63, 1.006x), below YaRN (29.22, 0.813x)")
    worse = {**TABLE, "ppl": {**TABLE["ppl"], "found": {**TABLE["ppl"]["found"], "2048": 21.34}}}
    assert "above YaRN (20.84, 1.024x)" in " ".join(verdict_lines(worse))
    assert verdict_lines({**TABLE, "ppl": {k: v for k, v in TABLE["ppl"].items() if k != "found"}}) == []


def test_progress_baselines_come_from_the_run(tmp_path):
    from ropesearch.report.build import search_baselines

    rows = [{"origin": "seed:pi", "fidelity": "full", "metrics": {"ppl@2048": 85.3}},
            {"origin": "seed:yarn", "fidelity": "full", "metrics": {"ppl@2048": 14.8}},
            {"origin": "mutant of seed:yarn", "fidelity": "full", "metrics": {"ppl@2048": 14.2}},
            {"origin": "seed:ntk", "fidelity": "screen", "metrics": {"ppl@512": 3.0}},
            {"origin": "seed:ntk", "fidelity": "full", "metrics": {"ppl@2048": 59.0}}]
    (tmp_path / "history.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert search_baselines(tmp_path) == {"pi": 85.3, "yarn": 14.8, "ntk": 59.0}  # a run that scored no baselines
    (tmp_path / "best.json").write_text(json.dumps({"provenance": {"baselines": {"yarn": 14.01, "ntk": 58.97}}}))
    assert search_baselines(tmp_path) == {"yarn": 14.01, "ntk": 58.97}  # the true methods, when it scored them
