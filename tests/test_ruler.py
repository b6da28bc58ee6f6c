"""RULER-style suite: generators (needles, answers, exact lengths, seeds), scoring, CLI, lm-eval, offline."""

import json
import re
import socket
from collections import Counter
from unittest import mock

import numpy as np
import pytest
from click.testing import CliRunner

from ropesearch.cli import cli
from ropesearch.errors import RopesearchError
from ropesearch.tasks.ruler import TASKS, RulerSuite, score, string_match_all, string_match_part
from ropesearch.models import load_tokenizer, resolve_model

LENGTHS = (1024, 3000, 4500)  # below and above 4k (cwe switches to RULER's long settings there)


@pytest.fixture(scope="module")
def suite():
    return RulerSuite(load_tokenizer(resolve_model("pocket")))


@pytest.fixture(scope="module")
def samples(suite):
    return {(task, length): suite.sample(task, length, 3) for task in TASKS for length in LENGTHS}


def _needles(prompt: str) -> list[tuple[str, str]]:
    return re.findall(r"One of the special magic \w+ for (\S+) is: (\S+)\.", prompt)


def test_every_prompt_is_exactly_its_length_in_the_models_tokens(suite, samples):
    for (task, length), sample in samples.items():
        assert sample.prompt_tokens == length - TASKS[task].max_new_tokens, (task, length)
        ids = suite.tokenizer(sample.prompt)["input_ids"]  # as lm-eval and generation read it
        assert len(ids) == sample.prompt_tokens, (task, length)


def test_niah_needles_are_there_once_and_answer_the_question(samples):
    for (task, length), sample in samples.items():
        if TASKS[task].family != "niah":
            continue
        options = TASKS[task].options
        needles = _needles(sample.prompt)
        body, question = sample.prompt.rsplit("\nWhat", 1)
        queried = re.search(r"for (.+?) mentioned", question).group(1).replace(", and ", ", ").split(", ")
        assert len(queried) == options["queries"]
        # the answers are exactly the values the queried keys' needles hold, each written once
        recovered = [value for key in queried for k, value in needles if k == key]
        assert sorted(recovered) == sorted(sample.answers), task
        assert len(sample.answers) == options["queries"] * options["values"]
        for answer in sample.answers:
            assert body.count(answer) == 1, (task, answer)
        for key in queried:
            assert sum(k == key for k, _ in needles) == options["values"], (task, key)
        if options["haystack"] == "needle":  # distractors: many other needles, none with a queried key
            assert len(needles) > 5
        else:
            assert len(needles) == options["keys"] * options["values"]


def test_variable_tracking_chain_leads_from_the_value_to_exactly_the_answers(samples):
    for length in LENGTHS:
        sample = samples["vt", length]
        question = sample.prompt.rsplit("Question:", 1)[1]
        value = re.search(r"assigned the value (\d+)", question).group(1)
        task_text = sample.prompt.rsplit("Memorize and track", 1)[1]  # after the one-shot example
        assignments = re.findall(r"VAR (\w+) = (?:VAR )?(\w+)", task_text)
        found, frontier = set(), {value}
        while frontier:
            frontier = {name for name, source in assignments if source in frontier} - found
            found |= frontier
        assert sorted(found) == sorted(sample.answers) and len(found) == 5


def test_common_words_are_the_most_frequent_of_the_list(samples):
    for length in LENGTHS:
        sample = samples["cwe", length]
        listing = sample.prompt.rsplit("Memorize the ones that appear most often.\n", 1)[1].split("\nQuestion:")[0]
        words = re.findall(r"\d+\. (\S+)", listing)
        counts = Counter(words)
        repeats = 6 if length < 4096 else 30
        assert all(counts[w] == repeats for w in sample.answers), length
        assert max(c for w, c in counts.items() if w not in sample.answers) <= (1 if length < 4096 else 3) + 1
        numbers = [int(n) for n in re.findall(r"(\d+)\. ", listing)]
        assert numbers == list(range(1, len(numbers) + 1))


def test_frequent_words_are_the_three_most_frequent_coded_words(samples):
    for length in LENGTHS:
        sample = samples["fwe", length]
        text = sample.prompt.split("coded words. ", 1)[1].split("\nQuestion:")[0]
        counts = Counter(w for w in text.split() if w != "...")
        top = [w for w, _ in counts.most_common(3)]
        assert sorted(top) == sorted(sample.answers)
        assert counts.most_common(4)[2][1] > counts.most_common(4)[3][1]


def test_seeds_reproduce_each_sample_alone_and_differ_across_seeds(suite, samples):
    again = RulerSuite(suite.tokenizer).sample("niah_multikey_2", 3000, 3)
    assert again == samples["niah_multikey_2", 3000]
    other = RulerSuite(suite.tokenizer, seed=1).sample("niah_multikey_2", 3000, 3)
    assert other.prompt != again.prompt and other.answers != again.answers
    assert suite.samples("vt", 1024, 4)[3] == samples["vt", 1024]  # index 3 does not depend on 0-2


def test_essay_haystack_comes_from_the_users_documents(tmp_path, suite):
    (tmp_path / "essay.txt").write_text("Quiet zebras paint the harbour every spring. " * 400)
    sample = RulerSuite(suite.tokenizer, str(tmp_path)).sample("niah_single_2", 2048, 0)
    assert sample.prompt.count("Quiet zebras paint the harbour") > 50
    assert sample.prompt_tokens == 2048 - 128
    with pytest.raises(RopesearchError, match="too short"):
        suite.sample("cwe", 300, 0)


def test_rulers_scoring():
    assert string_match_all("The numbers are 123 and 456.", ["123", "456", "789"]) == pytest.approx(2 / 3)
    assert string_match_part("it is 456", ["123", "456"]) == 1.0
    assert string_match_part("nothing", ["123", "456"]) == 0.0
    assert score("all", "  Apple-Pie\x00 ", ["apple-pie"]) == 1.0  # case-insensitive, control chars cleaned


def test_smollm2_tokenizer_exact_at_64k(smollm2_tokenizer):
    suite = RulerSuite(smollm2_tokenizer)
    for task in TASKS:
        sample = suite.sample(task, 65536, 0)
        assert len(smollm2_tokenizer(sample.prompt)["input_ids"]) == 65536 - TASKS[task].max_new_tokens, task


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    return load_tokenizer(resolve_model("smollm2-135m"))


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network use: {args}")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_tasks_with_one_answer_budget_share_generate_calls_and_each_keeps_its_answers(suite):
    from ropesearch.tasks.ruler_eval import Answerer, ruler_cell
    from ropesearch.models import load_model

    model = load_model(resolve_model("pocket"), device="cpu")
    tasks = ["niah_single_1", "niah_single_2", "vt", "niah_multikey_1"]  # NIAH: 128 new tokens, vt: 30
    alone = ruler_cell(Answerer(model, suite.tokenizer, max_batch=1, max_new_tokens=4), None, suite, tasks, 1000, 3)
    saved, answerer = [], Answerer(model, suite.tokenizer, max_batch=4, max_new_tokens=4)
    shared = ruler_cell(answerer, None, suite, tasks, 1000, 3,
                        on_task=lambda task, value, outputs: saved.append((task, outputs)))
    sizer = answerer.sizer
    # the two neighbouring NIAH tasks ran as calls of 4 + 2 samples, vt and the last NIAH task alone (3 each)
    assert sizer.used == {2, 3, 4}
    assert shared["predictions"] == alone["predictions"] and shared["scores"] == alone["scores"]
    assert saved == [(task, alone["predictions"][task]) for task in tasks]  # saved one task at a time, in order
    # each sample keeps its score of the whole answer: they make the task's score
    assert all(abs(np.mean([row[2] for row in alone["predictions"][t]]) - alone["scores"][t]) < 1e-12 for t in tasks)


def test_paired_difference_of_two_factor_sets_on_the_same_samples():
    from ropesearch.tasks.ruler_eval import paired_difference

    def result(rows):  # rows per task: (answer, kept output, score or None: saved before scores were kept)
        predictions = {t: {"9000": [[[a], o] + ([v] if v is not None else []) for a, o, v in r]}
                       for t, r in rows.items()}
        scores = {t: {"9000": float(np.mean([v if v is not None else float(a in o) for a, o, v in r]))}
                  for t, r in rows.items()}
        return {"tasks": list(rows), "samples": 4, "predictions": predictions, "scores": scores}

    mine = result({"niah_single_1": [("1", "", 1.0), ("2", "", 1.0), ("3", "", 0.0), ("4", "", 0.0)],
                   "fwe": [("a", "", 1.0), ("b", "", 0.0), ("c", "", 0.0), ("d", "", 0.0)]})
    other = result({"niah_single_1": [("1", "", 0.0), ("2", "x", None), ("3", "", 0.0), ("4", "", 0.0)],
                    "fwe": [("a", "a", None), ("b", "", 0.0), ("c", "", 0.0), ("d", "", 0.0)]})
    # by hand: niah diffs 1,1,0,0 (mean 1/2, variance 1/3, of the mean 1/12); fwe diffs all 0
    difference, error = paired_difference(mine, other, 9000)
    assert abs(difference - 0.25) < 1e-12 and abs(error - (1 / 12) ** 0.5 / 2) < 1e-12
    assert paired_difference(mine, other, 8192) is None  # no such length
    other["predictions"]["fwe"]["9000"][0][0] = ["z"]  # not the same samples: nothing to pair
    assert paired_difference(mine, other, 9000) is None


def test_cli_ruler_table_json_resume_and_report(tmp_path, no_network):
    out = tmp_path / "run" / "ruler.json"
    args = ["ruler", "--model", "pocket", "--lengths", "640", "--tasks", "niah_single_1,fwe", "--samples", "2",
            "--methods", "yarn", "--scale", "4", "--max-new-tokens", "3", "--json", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    document = json.loads(out.read_text())
    yarn = document["ruler"]["yarn"]
    assert set(yarn["scores"]) == {"niah_single_1", "fwe"} and yarn["lengths"] == [640]
    assert all(0 <= yarn["scores"][t]["640"] <= 1 for t in yarn["scores"])
    assert len(yarn["predictions"]["fwe"]["640"]) == 2 and yarn["batch_sizes"] == {"640": [1]}  # CPU: one a call
    here = document["environment"]["device"]
    assert here.startswith("cpu") and yarn["devices"] == {"640": [here]}
    assert "average:" in result.output and "niah_single_1:" in result.output
    # the result on stdout is the table alone: the per-length progress line goes to stderr
    assert "yarn  640:" not in result.stdout and "yarn  640:" in result.stderr
    # --resume keeps what is there: all of it, so no model is even loaded (a GPU command that only
    # passes over finished cells costs no load), the table and heatmaps still come ...
    with mock.patch("ropesearch.evaluate.comparison.load_model", side_effect=AssertionError("model loaded")):
        result = CliRunner().invoke(cli, args + ["--resume", "--plots", str(tmp_path / "plots")])
    assert result.exit_code == 0, result.output
    assert "nothing left to run" in result.output and "average:" in result.output
    assert (tmp_path / "plots" / "ruler-yarn.png").stat().st_size > 10_000
    assert json.loads(out.read_text())["ruler"]["yarn"]["seconds"] == yarn["seconds"]
    # (a factor set or length not in the JSON yet does load it: a pending cell is never skipped)
    with mock.patch("ropesearch.evaluate.comparison.load_model", side_effect=AssertionError("model loaded")):
        for more in (["--methods", "yarn,ntk"], ["--lengths", "640,700"]):
            result = CliRunner().invoke(cli, args + more + ["--resume"])
            assert isinstance(result.exception, AssertionError), result.output
    # as if killed after the first task of the length: only the second runs again
    partial = json.loads(out.read_text())
    kept = partial["ruler"]["yarn"]
    del kept["scores"]["fwe"]["640"], kept["predictions"]["fwe"]["640"], kept["average"]["640"]
    kept["lengths"] = []
    kept["predictions"]["niah_single_1"]["640"] = [[["x"], "kept"], [["x"], "kept"]]
    del kept["devices"]  # as saved before devices were kept per cell, by a run on another machine
    partial["environment"]["device"] = "NVIDIA H100 80GB HBM3"
    out.write_text(json.dumps(partial))
    result = CliRunner().invoke(cli, args + ["--resume"])
    assert result.exit_code == 0, result.output
    again = json.loads(out.read_text())["ruler"]["yarn"]
    assert again["predictions"]["niah_single_1"]["640"] == [[["x"], "kept"], [["x"], "kept"]]
    assert again["predictions"]["fwe"]["640"] == yarn["predictions"]["fwe"]["640"]
    assert again["average"] == yarn["average"] and again["lengths"] == [640]
    assert again["seconds"]["640"] > yarn["seconds"]["640"]  # the earlier session's seconds count too
    assert again["devices"] == {"640": sorted(["NVIDIA H100 80GB HBM3", here])}  # the cell ran on both
    # ... and refuses other settings
    result = CliRunner().invoke(cli, [a if a != "2" else "3" for a in args] + ["--resume"])
    assert result.exit_code == 1 and "--samples" in result.output
    result = CliRunner().invoke(cli, args + ["--resume", "--seed", "1"])
    assert result.exit_code == 1 and "seed 0" in result.output
    result = CliRunner().invoke(cli, ["report", str(out.parent)])
    assert result.exit_code == 0, result.output
    report = (out.parent / "report" / "report.md").read_text()
    assert "RULER (ruler.json)" in report and "ruler-ruler-yarn.png" in report
    assert (out.parent / "report" / "ruler-ruler-yarn.png").stat().st_size > 10_000
    # a run killed in its first cell reports its table, and no heatmap until a length is complete
    (out.parent / "killed.json").write_text(json.dumps(partial))
    result = CliRunner().invoke(cli, ["report", str(out.parent)])
    assert result.exit_code == 0, result.output
    report = (out.parent / "report" / "report.md").read_text()
    assert "RULER (killed.json)" in report and "ruler-killed-yarn.png" not in report
    assert not (out.parent / "report" / "ruler-killed-yarn.png").exists()


def test_lm_eval_runs_the_whole_suite_offline_at_exact_lengths(tmp_path, no_network):
    from ropesearch.tasks.lm_eval_bridge import OfflineTasks, run_lm_eval
    from ropesearch.tasks.ruler_tasks import scores_by_length
    from ropesearch.models import load_model, rope_base
    from ropesearch.rope import make_factors

    ref = resolve_model("pocket")
    model, tokenizer = load_model(ref, device="cpu"), load_tokenizer(ref)
    factors = make_factors("yarn", rope_base(model.config), 4)
    results = run_lm_eval(model, tokenizer, factors, ["ropesearch_ruler"], tmp_path,
                          OfflineTasks(lengths=[1024], limit=1, ruler_samples=1, ruler_max_new_tokens=2))
    table = scores_by_length(results["results"])
    assert set(table) == {f"ropesearch_ruler_{t}" for t in TASKS} | {"ropesearch_ruler"}
    assert all(set(v) == {"1024"} and 0 <= v["1024"] <= 1 for v in table.values())
    # every prompt reached the model whole, at RULER's length: 1024 minus the task's answer budget
    assert results["generation_context_tokens"] == sorted({1024 - spec.max_new_tokens for spec in TASKS.values()})
