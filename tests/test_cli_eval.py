"""`ropesearch eval` and `ropesearch baselines` end to end on a tiny model with a real tokenizer."""

import json
import math

from click.testing import CliRunner

from ropesearch.cli import cli


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_baselines_table_and_json(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("ROPESEARCH_CACHE", str(tmp_path / "cache"))
    model, docs = tiny_model_dir
    out = tmp_path / "table.json"
    result = run("baselines", "--model", model, "--data", docs, "--lengths", "64,256", "--samples", 2,
                 "--methods", "none,pi,yarn", "--json", out)
    assert result.exit_code == 0, result.output
    header = result.stdout.splitlines()[0].split()
    assert header == ["length", "x_window", "none@x1", "pi@x4", "yarn@x4"]
    table = json.loads(out.read_text())
    assert table["lengths"] == [64, 256] and len(table["windows"]) == 2
    assert table["scales"] == {"none": 1.0, "pi": 4.0, "yarn": 4.0}
    # one model per column: PI x4 is not the plain model at the original window either
    assert table["ppl"]["pi"]["64"] != table["ppl"]["none"]["64"]
    assert table["ppl"]["pi"]["256"] != table["ppl"]["none"]["256"]
    # per-length rescaling only on request, and labelled so: then PI at 64 tokens is the plain model
    result = run("baselines", "--model", model, "--data", docs, "--lengths", "64,256", "--samples", 2,
                 "--methods", "none,pi", "--per-length-scale", "--json", tmp_path / "per.json")
    per = json.loads((tmp_path / "per.json").read_text())
    assert result.stdout.splitlines()[0].split()[2:] == ["none@x1", "pi@per-length"]
    assert per["ppl"]["pi@per-length"]["64"] == per["ppl"]["none"]["64"]
    assert per["ppl"]["pi@per-length"]["256"] == table["ppl"]["pi"]["256"]
    assert table["environment"]["device"].startswith("cpu") and "command" in table

    # a factor file through eval gives the same number as the baseline column
    factors = tmp_path / "yarn4.json"
    assert run("factors", "yarn", "--model", model, "--scale", 4, "--out", factors).exit_code == 0
    result = run("eval", "--model", model, "--data", docs, "--lengths", "256", "--samples", 2, "--factors", factors,
                 "--json", tmp_path / "e.json")
    assert result.exit_code == 0, result.output
    value = json.loads((tmp_path / "e.json").read_text())["ppl"]["yarn4.json"]["256"]
    assert math.isclose(value, table["ppl"]["yarn"]["256"], rel_tol=1e-6)
    # two files of the same name keep two columns, named by their folders; LABEL=PATH names one;
    # a file worse than the unscaled model at the original window is warned about
    for run_dir in ("runA", "runB"):
        (tmp_path / run_dir).mkdir()
        (tmp_path / run_dir / "best.json").write_text(factors.read_text())
    result = run("baselines", "--model", model, "--data", docs, "--lengths", "128", "--samples", 2, "--methods", "none",
                 "--factors", tmp_path / "runA" / "best.json", "--factors", tmp_path / "runB" / "best.json",
                 "--factors", f"mine={factors}", "--json", tmp_path / "files.json")
    assert result.exit_code == 0, result.output
    files = json.loads((tmp_path / "files.json").read_text())
    assert list(files["ppl"]) == ["none", "runA", "runB", "mine"]
    assert "warning: mine is" in result.output and "worse than the unscaled model" in result.output
    assert files["original_window"]["mine"]["ratio"] > 1.01
    # the method form: one factor set (scale 4 = 256/64) at both lengths
    result = run("eval", "--model", model, "--data", docs, "--lengths", "128,256", "--samples", 2, "--method", "yarn")
    assert result.exit_code == 0 and result.stdout.splitlines()[-1].split()[-1] == f"{value:.2f}"


def test_eval_errors(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("ROPESEARCH_CACHE", str(tmp_path / "cache"))
    model, docs = tiny_model_dir
    result = run("eval", "--model", model, "--data", docs, "--lengths", "256")
    assert result.exit_code == 1 and "give either --method" in result.output
    result = run("eval", "--model", model, "--data", docs, "--lengths", "10000000", "--method", "pi")
    assert result.exit_code == 1 and "documents have at least 10000000 tokens" in result.output
    result = run("baselines", "--model", model, "--data", docs, "--lengths", "12x")
    assert result.exit_code == 1 and "--lengths must be comma-separated" in result.output
    result = run("baselines", "--model", model, "--data", docs, "--lengths", "128", "--methods", "pi,bogus")
    assert result.exit_code == 1 and "unknown method 'bogus'" in result.output


def test_vllm_backend_errors_are_clear(tiny_model_dir, tmp_path, monkeypatch):
    import importlib.util

    monkeypatch.setenv("ROPESEARCH_CACHE", str(tmp_path / "cache"))
    model, docs = tiny_model_dir
    result = run("eval", "--model", model, "--data", docs, "--lengths", 256, "--samples", 1, "--method", "yarn",
                 "--backend", "vllm")
    assert result.exit_code == 1 and result.output.startswith("Error:")
    if importlib.util.find_spec("vllm") is None:  # the main environment; tests_vllm/ covers the engine itself
        assert "vLLM is not installed" in result.output
    result = run("search", "--model", model, "--data", docs, "--target-length", 256, "--out", tmp_path / "s",
                 "--backend", "tensorrt")
    assert result.exit_code == 1 and "tensorrt" in result.output  # one line, like every bad value


def test_vllm_backend_loads_only_the_config(tiny_model_dir):
    """vLLM loads the weights itself: a torch copy would take the GPU memory the engine claims."""
    import torch

    from ropesearch.evaluate.runs import WindowSpec, environment, setup
    from ropesearch.models import load_for_backend, resolve_model

    model, docs = tiny_model_dir
    ref = resolve_model(model)
    for_torch, for_vllm = load_for_backend(ref, "torch", device="cpu"), load_for_backend(ref, "vllm")
    assert isinstance(for_torch, torch.nn.Module) and not isinstance(for_vllm, torch.nn.Module)
    assert for_vllm.to_dict() == for_torch.config.to_dict()
    torch_run, vllm_run = (setup(model, WindowSpec(docs, samples=1), 128, backend=b, device="cpu") for b in ("torch", "vllm"))
    assert not isinstance(vllm_run.model, torch.nn.Module) and vllm_run.base == torch_run.base
    assert [w.name for w in vllm_run.windows] == [w.name for w in torch_run.windows]
    assert environment(vllm_run.model)["dtype"] == environment(torch_run.model)["dtype"] == "float32"


def test_the_original_window_warning_names_the_remedy_for_a_guarded_and_an_unguarded_file(tiny_model_dir, tmp_path,
                                                                                          monkeypatch):
    """A guarded search's file needs a tighter guard (recover-short cannot undo an attention factor);
    a file from an unguarded search, or from no search, needs the guard or recover-short."""
    monkeypatch.setenv("ROPESEARCH_CACHE", str(tmp_path / "cache"))
    model, docs = tiny_model_dir
    free = tmp_path / "free.json"
    assert run("factors", "yarn", "--model", model, "--scale", 4, "--out", free).exit_code == 0
    document = json.loads(free.read_text())
    document["provenance"]["short_guard"] = {"tolerance": 0.01, "length": 64, "unscaled_ppl": 9.0,
                                             "attention_cap": 1.02, "capped_ppl": 9.06, "margin": 0.75, "windows": 16}
    guarded = tmp_path / "guarded.json"
    guarded.write_text(json.dumps(document))
    result = run("baselines", "--model", model, "--data", docs, "--lengths", "128", "--samples", 2, "--methods", "none",
                 "--factors", f"free={free}", "--factors", f"guarded={guarded}")
    assert result.exit_code == 0, result.output
    lines = {line.split()[1]: line for line in result.output.splitlines() if line.startswith("warning:")}
    assert "smaller --short-tolerance" in lines["guarded"] and "16 windows" in lines["guarded"]
    assert "recover-short" not in lines["guarded"] and "search with the short guard" not in lines["guarded"]
    assert "not found by a guarded search" in lines["free"] and "recover-short stage" in lines["free"]
