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
    for fragment in ("Scores on the search windows", "full evaluations", "Perplexity (heldout.json)",
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
    assert [t.get_text() for t in axis.texts] == ["original window (256)", "target window (2k)"]
    plt.close(figure)
    from ropesearch.report.plots import plot_relative

    table = {"lengths": lengths, "original_context": 256, "scales": {"yarn": 8.0, "found": 8.0},
             "ppl": {"yarn": {"256": 30.0, "1024": 24.0, "2048": 21.0}, "found": {"256": 24.0, "1024": 23.0, "2048": 21.5}}}
    assert plot_relative(table, tmp_path / "relative.png").is_file()
    assert plot_relative({**table, "ppl": {"found": table["ppl"]["found"]}}, tmp_path / "none.png") is None
