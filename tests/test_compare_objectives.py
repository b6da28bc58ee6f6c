"""eval/compare_objectives.py on the pocket model: one search per objective, every set scored on
documents no search read, a rerun that resumes instead of searching again, and a set whose
factors changed measured again."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "eval"))

import compare_objectives  # noqa: E402
from ropesearch.data.samples import document_of  # noqa: E402
from ropesearch.errors import RopesearchError  # noqa: E402

ARGS = ["--model", "pocket", "--target", "512", "--max-evals", "6", "--samples", "1", "--eval-samples", "1",
        "--passkey-lengths", "300", "--passkey-trials", "1"]


def test_objectives_held_out_and_resumed(tmp_path):
    out = tmp_path / "cmp"
    document = compare_objectives.main(ARGS + ["--out", str(out)])
    assert document["sets"] == ["ntk", "yarn", "found:ppl", "found:ppl+needle"]
    held_out = {document_of(name) for name in document["held_out_windows"]}
    assert held_out and not held_out & set(document["searched_documents"])
    for objective in ("ppl", "ppl+needle"):
        history = (out / f"search-{objective}" / "history.jsonl").read_text().splitlines()
        assert len([h for h in history if json.loads(h).get("fidelity") == "full"]) == 6
        assert document["searches"][f"found:{objective}"]["full_evals"] == 6
    # the two objectives see different things: the needle term moves the needle perplexity
    assert document["needle_ppl"]["yarn"] != document["needle_ppl"]["ntk"]
    assert all(v > 0 for v in document["ppl"].values())
    assert set(document["original_window"]) == {"found:ppl", "found:ppl+needle"}
    assert set(document["passkey"]) == set(document["sets"])
    table = (out / "objectives.md").read_text()
    assert "| found:ppl+needle |" in table and "passkey@300" in table

    # the same command again: nothing searched or measured again, the same numbers
    before = {o: (out / f"search-{o}" / "history.jsonl").read_text() for o in ("ppl", "ppl+needle")}
    again = compare_objectives.main(ARGS + ["--out", str(out)])
    assert {o: (out / f"search-{o}" / "history.jsonl").read_text() for o in before} == before
    for key in ("ppl", "needle_ppl", "original_window", "passkey"):
        assert again[key] == document[key]

    # a passkey row kept for other factors (a search resumed with a larger budget) is measured again
    saved = json.loads((out / "passkey.json").read_text())
    saved["keys"]["yarn"] = "other factors"
    answers = saved["results"]["yarn"]["answers"]  # every key read back: 100% if these trials were kept
    saved["results"]["yarn"]["answers"] = {cell: [[key, key] for key, _ in trials] for cell, trials in answers.items()}
    (out / "passkey.json").write_text(json.dumps(saved))
    third = compare_objectives.main(ARGS + ["--out", str(out)])
    assert third["passkey"]["yarn"] == document["passkey"]["yarn"]


def test_spaces_are_compared_too(tmp_path):
    floor = tmp_path / "floored.yaml"  # fast with the untrained pairs floored at the scale
    floor.write_text("name: fast-floored\nfactors: {low: 1.0, high: 1.25, step: 0.01, monotone: true, floor_unturned: 1.0}\n")
    args = ["--model", "pocket", "--target", "512", "--max-evals", "4", "--samples", "1", "--eval-samples", "1",
            "--objectives", "ppl", "--spaces", f"fast,{floor}", "--out", str(tmp_path / "cmp")]
    document = compare_objectives.main(args)
    assert document["sets"] == ["ntk", "yarn", "found:ppl@fast", "found:ppl@fast-floored"]
    assert (tmp_path / "cmp" / "search-ppl@fast-floored" / "best.json").is_file()
    assert document["in_range"]["yarn"] == 1.0 and document["in_range"]["ntk"] < 1.0  # YaRN scales them by s
    assert document["in_range"]["found:ppl@fast-floored"] == 1.0
    with pytest.raises(RopesearchError, match="share a name"):
        compare_objectives.main(args[:-4] + ["--spaces", f"fast,{floor},{floor}", "--out", str(tmp_path / "x")])


def test_bad_options_are_named(tmp_path, capsys):
    with pytest.raises(SystemExit):
        compare_objectives.main(["--model", "pocket", "--target", "512", "--out", str(tmp_path)])
    assert "give a budget" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        compare_objectives.main(ARGS + ["--objectives", "ppl,nonsense", "--out", str(tmp_path)])
    assert "unknown nonsense" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        compare_objectives.main(ARGS + ["--objectives", "needle", "--pack", "--out", str(tmp_path)])
    assert "single documents" in capsys.readouterr().err
