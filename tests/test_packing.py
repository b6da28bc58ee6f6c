"""Packed windows (documents joined with EOS), held-out splits, and plans that pack: names,
offsets, exclusion, determinism, screening then promotion, resume."""

import json

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from ropesearch.cli import cli
from ropesearch.data import Document, Window, pack_windows, split_holdout
from ropesearch.data.tokens import TokenizedDocument
from ropesearch.errors import RopesearchError
from ropesearch.evaluate.runs import searched_documents
from ropesearch.search.screening import screen_rank_correlation

EOS = 2


def documents(lengths):
    return [TokenizedDocument(f"doc{i}", np.arange(n, dtype=np.int32) + 100 * (i + 1)) for i, n in enumerate(lengths)]


def test_packed_windows_are_exact_disjoint_and_recorded():
    docs = documents([30, 50, 20, 80, 40])
    windows = pack_windows(docs, 64, 2, seed=3, separator=EOS)
    assert [w.length for w in windows] == [64, 64]
    seen = []
    for window in windows:
        for name, offset, tokens, at in window.parts:
            source = next(d for d in docs if d.name == name)
            assert offset == 0  # every document is read from its start
            np.testing.assert_array_equal(window.ids[at : at + tokens], source.ids[:tokens])
            if at:
                assert window.ids[at - 1] == EOS  # the separator between two documents
            seen.append(name)
        assert window.name == "+".join(f"{name}@0" for name, *_ in window.parts)
        assert window.documents == tuple(p[0] for p in window.parts)
    assert len(seen) == len(set(seen))  # no document in two windows
    again = pack_windows(docs, 64, 2, seed=3, separator=EOS)
    assert [w.name for w in again] == [w.name for w in windows]
    assert all((a.ids == b.ids).all() for a, b in zip(again, windows))
    other = pack_windows(docs, 64, 2, seed=4, separator=EOS)
    assert [w.name for w in other] != [w.name for w in windows]


def test_packing_too_little_text_is_one_clear_error():
    with pytest.raises(RopesearchError, match="too few for 2 packed window"):
        pack_windows(documents([30, 20]), 64, 2, separator=EOS)


def test_prefix_of_a_packed_window_keeps_the_parts_it_reaches():
    (window,) = pack_windows(documents([30, 50, 40]), 100, 1, seed=0, separator=EOS)
    first = window.parts[0]
    cut = window.prefix(first[2] - 5)
    assert cut.length == first[2] - 5
    assert cut.parts == ((first[0], 0, first[2] - 5, 0),)
    assert window.prefix(window.length) is window


def test_holdout_split_is_seeded_disjoint_and_sized():
    docs = [Document(f"d{i}.txt", "x" * (100 * (i + 1))) for i in range(8)]
    used, held = split_holdout(docs, 0.4, seed=0)
    assert {d.name for d in used}.isdisjoint({d.name for d in held})
    assert len(used) + len(held) == len(docs) and used and held
    total = sum(len(d.text) for d in docs)
    assert sum(len(d.text) for d in held) >= 0.4 * total
    assert split_holdout(list(reversed(docs)), 0.4, seed=0) == (used, held)  # listing order does not matter
    assert split_holdout(docs, 0.4, seed=1) != (used, held)
    with pytest.raises(RopesearchError, match="strictly between 0 and 1"):
        split_holdout(docs, 1.0)


def test_screen_rank_correlation_pairs_screen_and_full_scores():
    history = [{"genome": [i], "fidelity": "screen", "metrics": {"screen_ppl": float(i)}} for i in range(6)]
    history += [{"genome": [i], "fidelity": "full", "metrics": {"ppl@9": float(10 - i)}} for i in range(4)]
    rank = screen_rank_correlation(history)
    assert rank["pairs"] == 4 and rank["spearman"] == pytest.approx(-1.0)
    # a candidate the Ray workers could not score (inf, with its reason) is no point of the correlation
    history += [{"genome": [g], "fidelity": "full", "metrics": {"ppl@9": float("inf")}, "failed": "OutOfMemoryError"}
                for g in (4, 5)]
    assert screen_rank_correlation(history)["pairs"] == 4


@pytest.fixture
def short_docs(tmp_path):
    """Eight documents of a few hundred tokens: a 2048-token window needs several of them."""
    from conftest import stdlib_text

    folder = tmp_path / "short-docs"
    folder.mkdir()
    for name in ("typing.py", "inspect.py", "tarfile.py", "subprocess.py", "argparse.py", "doctest.py",
                 "pydoc.py", "turtle.py"):
        (folder / name.replace(".py", ".txt")).write_text(stdlib_text(name)[:2500])
    return folder


@pytest.fixture
def million_space(tmp_path):
    space = yaml.safe_load(open("search_spaces/million.yaml"))
    space["budget"].update(population=6, top_k=3, mutations=3, crossovers=1, generations=2)
    space["fidelity"].update(promote_max=1)
    path = tmp_path / "million-tiny.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


def test_packed_search_screens_short_promotes_few_and_resumes_exactly(tiny_model_dir, short_docs, million_space,
                                                                       tmp_path, monkeypatch):
    monkeypatch.setenv("ROPESEARCH_CACHE", str(tmp_path / "cache"))
    model, docs = tiny_model_dir[0], short_docs
    args = ["search", "--model", str(model), "--data", str(docs), "--target-length", "2048", "--space",
            str(million_space), "--pack", "--device", "cpu"]
    whole = CliRunner().invoke(cli, args + ["--out", str(tmp_path / "whole")])
    assert whole.exit_code == 0, whole.output
    config = json.loads((tmp_path / "whole" / "config.json").read_text())
    parts = config["window_parts"][0]
    assert config["pack"] and len(parts) >= 2 and sum(p["tokens"] for p in parts) + len(parts) - 1 == 2048
    history = [json.loads(line) for line in (tmp_path / "whole" / "history.jsonl").read_text().splitlines()]
    for generation in range(3):
        rows = [r for r in history if r["generation"] == generation]
        assert len([r for r in rows if r["fidelity"] == "full"]) <= 1  # promote_max
        assert all(r["fidelity"] == "screen" for r in rows[: len(rows) - 1])  # the initial population too
    assert set(searched_documents(tmp_path / "whole")) == {p["document"] for p in parts}

    # a session stopped after one generation, then resumed: the same result
    from ropesearch.search.session import SearchConfig, run_search

    partial = run_search(SearchConfig(str(model), str(docs), 2048, space=str(million_space), pack=True, device="cpu"),
                         tmp_path / "split", stop_after=1, log=lambda m: None)
    assert partial.state.generation == 1
    resumed = CliRunner().invoke(cli, args + ["--out", str(tmp_path / "split"), "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert json.loads((tmp_path / "split" / "best.json").read_text())["rope"] == \
        json.loads((tmp_path / "whole" / "best.json").read_text())["rope"]


def test_heldout_of_twice_leaves_out_both_runs_documents(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("ROPESEARCH_CACHE", str(tmp_path / "cache"))
    model, docs = tiny_model_dir
    runs = []
    for name, document in (("a", "typing.txt"), ("b", "inspect.txt")):
        run = tmp_path / name
        run.mkdir()
        (run / "config.json").write_text(json.dumps({"windows": [f"{document}@0"]}))
        runs += ["--heldout-of", str(run)]
    out = tmp_path / "table.json"
    result = CliRunner().invoke(cli, ["baselines", "--model", str(model), "--data", str(docs), "--lengths", "64",
                                      "--samples", "1", *runs, "--methods", "none", "--device", "cpu",
                                      "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["options"]["excluded_documents"] == ["inspect.txt", "typing.txt"]
    assert f"held out of {tmp_path / 'a'} and {tmp_path / 'b'}" in result.output


def test_heldout_of_a_packed_search_keeps_its_documents_out(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("ROPESEARCH_CACHE", str(tmp_path / "cache"))
    model, docs = tiny_model_dir
    run = tmp_path / "run"
    run.mkdir()
    parts = [[{"document": "typing.txt", "offset": 0, "tokens": 10, "at": 0},
              {"document": "inspect.txt", "offset": 0, "tokens": 10, "at": 11}]]
    (run / "config.json").write_text(json.dumps({"windows": ["typing.txt@0+inspect.txt@0"], "window_parts": parts}))
    out = tmp_path / "table.json"
    result = CliRunner().invoke(cli, ["baselines", "--model", str(model), "--data", str(docs), "--lengths", "64,1024",
                                      "--samples", "1", "--pack", "--heldout-of", str(run), "--methods", "none,yarn",
                                      "--native", "--device", "cpu", "--json", str(out)])
    assert result.exit_code == 0, result.output
    table = json.loads(out.read_text())
    used = {p["document"] for p in table["window_parts"][0]}
    assert used == {"tarfile.txt", "subprocess.txt"} or used <= {"tarfile.txt", "subprocess.txt"}
    assert table["options"]["excluded_documents"] == ["inspect.txt", "typing.txt"]
    native = table["ppl"]["none (64 windows)"]
    assert set(native) == {"64", "1024"}
    # at the trained window the native column is the unscaled model itself
    assert native["64"] == pytest.approx(table["ppl"]["none"]["64"], rel=1e-5)


def test_a_packed_plan_with_holdout_keeps_evaluation_apart_and_rebuilds_fine_tuning(tiny_model_dir, short_docs,
                                                                                    million_space, tmp_path,
                                                                                    monkeypatch):
    monkeypatch.setenv("ROPESEARCH_CACHE", str(tmp_path / "cache"))
    model, docs = tiny_model_dir[0], short_docs
    fast = yaml.safe_load(open("search_spaces/fast.yaml"))
    fast["budget"].update(population=4, top_k=2, mutations=2, crossovers=1, generations=1)
    (tmp_path / "fast-tiny.yaml").write_text(yaml.safe_dump(fast))
    plan = {
        "name": "tiny-1m", "model": str(model), "data": str(docs), "pack": True,
        "holdout": {"fraction": 0.3, "seed": 0},
        "stages": [
            {"search": {"target": 256, "space": str(tmp_path / "fast-tiny.yaml"), "samples": 1}},
            {"finetune": {"length": 256, "steps": 2, "global_batch": 1, "micro_batch": 1, "lr": 1e-3,
                          "trainable": ["q_proj", "k_proj", "norm"], "length_warmup": 0.5}},
            {"search": {"target": 1024, "relative": True, "space": str(million_space), "max_evals": 2}},
            {"evaluate": {"lengths": [64, 1024], "methods": ["yarn"], "samples": 1, "native": True}},
        ],
    }
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan))
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["run", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    trained_on = set(searched_documents(out))
    finetune = json.loads((out / "02-finetune" / "done.json").read_text())["outputs"]
    assert set(finetune["documents"]) <= trained_on
    table = json.loads((out / "04-evaluate" / "perplexity.json").read_text())
    evaluated = {p["document"] for parts in table["window_parts"] for p in parts}
    assert evaluated and evaluated.isdisjoint(trained_on)
    assert "none (64 windows)" in table["ppl"] and "found" in table["ppl"]

    # only q/k projections and norms were trained, and they alone rebuild the model folder
    from safetensors.torch import load_file

    # the plan's run directory answers --heldout-of from wherever it is moved to
    import shutil

    moved = tmp_path / "elsewhere"
    out.rename(moved)
    assert searched_documents(moved) == sorted(trained_on)
    moved.rename(out)
    trained = load_file(out / "02-finetune" / "trained.safetensors")
    assert trained and all(("q_proj" in k or "k_proj" in k or "norm" in k) for k in trained)
    original = load_file(out / "02-finetune" / "model" / "model.safetensors")
    # as committed under results/: the folder kept, its weights left out
    (out / "02-finetune" / "model" / "model.safetensors").unlink()
    (out / "04-evaluate" / "done.json").unlink()
    result = CliRunner().invoke(cli, ["run", str(path), "--out", str(out), "--resume"])
    assert result.exit_code == 0, result.output
    rebuilt = load_file(out / "02-finetune" / "model" / "model.safetensors")
    assert rebuilt.keys() == original.keys()
    assert all(np.array_equal(rebuilt[k].numpy(), original[k].numpy()) for k in original)
    again = json.loads((out / "04-evaluate" / "perplexity.json").read_text())
    assert again["ppl"]["found"] == table["ppl"]["found"]

    # a damaged trained.safetensors is one line saying how to continue, and nothing is rebuilt from it
    shutil.rmtree(out / "02-finetune" / "model")
    blob = (out / "02-finetune" / "trained.safetensors").read_bytes()
    (out / "02-finetune" / "trained.safetensors").write_bytes(blob[: len(blob) // 2])
    result = CliRunner().invoke(cli, ["run", str(path), "--out", str(out), "--resume"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    error = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and "trained.safetensors" in error[0] and "run the fine-tuning again" in error[0]
    assert not (out / "02-finetune" / "model").exists()


def test_passkey_memory_grows_linearly_with_the_prompt():
    """Generation keeps a KV cache and no length x length mask: what lets a 1M-token prompt fit."""
    from conftest import tiny_model, tiny_tokenizer
    from ropesearch.evaluate.memory import PeakMemory
    from ropesearch.tasks.passkey import passkey_accuracy
    from ropesearch.models import rope_base
    from ropesearch.rope import make_factors

    tokenizer = tiny_tokenizer()
    model = tiny_model("llama", vocab_size=len(tokenizer))
    peaks = {}
    for length in (2048, 8192):
        factors = make_factors("yarn", rope_base(model.config), length / 64)
        with PeakMemory("cpu") as peak:
            passkey_accuracy(model, tokenizer, factors, [length], [0.5], 1)
        peaks[length] = peak.bytes
    assert peaks[8192] < 6 * peaks[2048]  # 4x the tokens; a quadratic mask would make it ~16x


def test_passkey_hides_the_key_in_packed_documents(tiny_model_dir, short_docs, tmp_path, monkeypatch):
    monkeypatch.setenv("ROPESEARCH_CACHE", str(tmp_path / "cache"))
    model, docs = tiny_model_dir[0], short_docs
    out = tmp_path / "passkey.json"
    result = CliRunner().invoke(cli, ["passkey", "--model", str(model), "--lengths", "4000", "--depths", "0.5",
                                      "--trials", "1", "--data", str(docs), "--pack", "--device", "cpu",
                                      "--json", str(out)])
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text())
    assert len(record["haystack"]["parts"]) >= 2 and record["data"] == str(docs)
    from ropesearch.tasks.passkey import passkey_prompt
    from ropesearch.models import load_tokenizer, resolve_model

    tokenizer = load_tokenizer(resolve_model(str(model)))
    haystack = np.arange(3000, dtype=np.int32) % 200 + 3
    prompt = passkey_prompt(tokenizer, 1500, 0.5, "12345", haystack)
    assert len(prompt.ids) == 1500
    assert np.isin(haystack[:1000], prompt.ids).all()
    with pytest.raises(RopesearchError, match="haystack holds"):
        passkey_prompt(tokenizer, 1500, 0.5, "12345", haystack[:100])
    lone = CliRunner().invoke(cli, ["passkey", "--model", str(model), "--lengths", "300", "--pack"])
    assert lone.exit_code == 1 and "--pack joins the documents of --data" in lone.output
