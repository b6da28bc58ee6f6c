"""RULER prompts built ahead by a worker process: the same samples, errors that reach the user, and a
cell that starts answering before every task's prompts are made."""

import json
import os
import signal
import time

import pytest

from ropesearch.errors import RopesearchError
from ropesearch.tasks.ruler import RulerSuite
from ropesearch.tasks.ruler_eval import Answerer, ruler_cell
from ropesearch.tasks.ruler_prefetch import PrefetchedSuite, ruler_suite
from ropesearch.models import load_model, load_tokenizer, resolve_model

TASKS = ["niah_single_2", "niah_multikey_2", "vt", "cwe"]  # an essay haystack among them


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(resolve_model("pocket"))


@pytest.fixture(scope="module")
def model():
    return load_model(resolve_model("pocket"), device="cpu")


def test_the_worker_makes_the_samples_this_process_makes(tokenizer, tmp_path):
    # the user's essays (a field of its own) and seed reach the worker
    rows = [{"body": f"Document {i}. " + "The lighthouse keeper counted the ships at dawn. " * 200} for i in range(3)]
    (tmp_path / "essays.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    data = str(tmp_path / "essays.jsonl")
    here = RulerSuite(tokenizer, data, text_field="body", seed=3)
    assert "lighthouse" in here.sample("niah_single_2", 1024, 0).prompt
    with PrefetchedSuite(tokenizer, data, text_field="body", seed=3) as ahead:
        ahead.plan((task, length, 2) for length in (1024, 2000) for task in TASKS)
        for length in (1024, 2000):
            for task in TASKS:
                assert ahead.samples(task, length, 2) == here.samples(task, length, 2), (task, length)
        # unplanned, and one alone (its own seed)
        assert ahead.sample("niah_multivalue", 1500, 4) == here.sample("niah_multivalue", 1500, 4)


def test_a_bad_request_is_the_users_error_from_the_worker(tokenizer):
    with PrefetchedSuite(tokenizer) as ahead:
        with pytest.raises(RopesearchError, match="too short for this task"):
            ahead.samples("niah_multikey_3", 140, 1)
        # the worker goes on with the next request
        assert ahead.samples("vt", 1024, 1) == RulerSuite(tokenizer).samples("vt", 1024, 1)


def test_a_killed_worker_leaves_the_building_to_this_process(tokenizer):
    with PrefetchedSuite(tokenizer) as ahead:
        ahead.samples("vt", 1024, 1)  # started
        for pid in list(ahead._pool._processes):
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)  # the pool has seen it: submitting raises too
        with pytest.warns(RuntimeWarning, match="the worker building RULER prompts stopped"):
            ahead.plan([("cwe", 1024, 1)])
        assert ahead.samples("cwe", 1024, 1) == RulerSuite(tokenizer).samples("cwe", 1024, 1)
    with PrefetchedSuite(tokenizer) as ahead:  # killed while a planned build is pending
        ahead.plan([("vt", 1024, 1), ("cwe", 1024, 1)])
        ahead.samples("vt", 1024, 1)
        for pid in list(ahead._pool._processes):
            os.kill(pid, signal.SIGKILL)
        with pytest.warns(RuntimeWarning, match="building them here"):
            assert ahead.samples("fwe", 1024, 1) == RulerSuite(tokenizer).samples("fwe", 1024, 1)


def test_a_cell_scores_the_same_with_prompts_built_ahead(tokenizer, model):
    alone = ruler_cell(Answerer(model, tokenizer, max_new_tokens=1), None, RulerSuite(tokenizer), TASKS, 1024, 2)
    with ruler_suite(tokenizer, prefetch=True) as ahead:
        assert isinstance(ahead, PrefetchedSuite)
        built_ahead = ruler_cell(Answerer(model, tokenizer, max_new_tokens=1), None, ahead, TASKS, 1024, 2)
    assert built_ahead["predictions"] == alone["predictions"] and built_ahead["scores"] == alone["scores"]
    assert isinstance(ruler_suite(tokenizer), RulerSuite)


def test_a_cell_starts_answering_before_the_later_tasks_are_made(tokenizer, model):
    events = []

    class Logged(RulerSuite):
        def _make(self, task, length, count, first):
            events.append(("made", task))
            return super()._make(task, length, count, first)

    hook = model.register_forward_pre_hook(lambda module, args: events.append(("forward", None)))
    try:
        # the two NIAH tasks share generate calls of 2 samples: the first call holds the first task's alone
        ruler_cell(Answerer(model, tokenizer, max_batch=2, max_new_tokens=2), None, Logged(tokenizer),
                   ["niah_single_1", "niah_single_2", "vt"], 1024, 2)
    finally:
        hook.remove()
    made = [task for kind, task in events if kind == "made"]
    assert made == ["niah_single_1", "niah_single_2", "vt"]  # each once
    first_forward = events.index(("forward", None))
    assert events[:first_forward] == [("made", "niah_single_1")]


def test_the_cli_with_prompts_built_ahead_writes_what_it_writes_without(tmp_path):
    from click.testing import CliRunner

    from ropesearch.cli import cli

    args = ["ruler", "--model", "pocket", "--lengths", "600,700", "--tasks", "niah_single_1,niah_multikey_1", "--samples", "2",
            "--methods", "none,yarn", "--max-new-tokens", "1"]
    documents = []
    for flag in ("--no-prefetch", "--prefetch"):
        path = tmp_path / f"{flag}.json"
        result = CliRunner().invoke(cli, args + [flag, "--json", str(path)])
        assert result.exit_code == 0, result.output
        documents.append(json.loads(path.read_text())["ruler"])
    for name in ("none", "yarn"):
        assert documents[0][name]["predictions"] == documents[1][name]["predictions"]
        assert documents[0][name]["scores"] == documents[1][name]["scores"]


def test_pending_tasks_are_those_a_factor_set_lacks():
    from ropesearch.tasks.ruler_eval import pending_tasks

    results = {"yarn": {"scores": {"vt": {"600": 0.5}, "cwe": {"600": 1.0}}}, "ntk": {"scores": {"vt": {"600": 0.0}}}}
    assert pending_tasks(results, ["yarn", "ntk"], ["vt", "cwe", "fwe"], 600) == ["cwe", "fwe"]
    assert pending_tasks(results, ["yarn"], ["vt", "cwe"], 600) == []
    assert pending_tasks(results, ["yarn", "none"], ["vt"], 600) == ["vt"]  # a set not in the JSON yet
