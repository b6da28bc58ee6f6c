"""RULER prompts built ahead by a worker process: the same samples, errors that reach the user, and a
cell that starts answering before every task's prompts are made."""

import os
import signal

import pytest

from ropesearch.errors import RopesearchError
from ropesearch.evaluate.ruler import RulerSuite
from ropesearch.evaluate.ruler_eval import ruler_cell
from ropesearch.evaluate.ruler_prefetch import PrefetchedSuite, ruler_suite
from ropesearch.models import load_model, load_tokenizer, resolve_model

TASKS = ["niah_single_1", "niah_multikey_2", "vt", "cwe"]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(resolve_model("pocket"))


@pytest.fixture(scope="module")
def model():
    return load_model(resolve_model("pocket"), device="cpu")


def test_the_worker_makes_the_samples_this_process_makes(tokenizer):
    here = RulerSuite(tokenizer, seed=3)
    with PrefetchedSuite(tokenizer, seed=3) as ahead:
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


def test_a_killed_worker_is_one_clear_error(tokenizer):
    with PrefetchedSuite(tokenizer) as ahead:
        ahead.samples("vt", 1024, 1)  # started
        for pid in list(ahead._pool._processes):
            os.kill(pid, signal.SIGKILL)
        with pytest.raises(RopesearchError, match="the worker building RULER prompts stopped"):
            ahead.samples("cwe", 1024, 1)


def test_a_cell_scores_the_same_with_prompts_built_ahead(tokenizer, model):
    alone = ruler_cell(model, tokenizer, None, RulerSuite(tokenizer), TASKS, 1024, 2, max_new_tokens=3)
    with ruler_suite(tokenizer, prefetch=True) as ahead:
        assert isinstance(ahead, PrefetchedSuite)
        built_ahead = ruler_cell(model, tokenizer, None, ahead, TASKS, 1024, 2, max_new_tokens=3)
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
        ruler_cell(model, tokenizer, None, Logged(tokenizer), ["niah_single_1", "niah_single_2", "vt"], 1024, 2,
                   max_batch=2, max_new_tokens=2)
    finally:
        hook.remove()
    made = [task for kind, task in events if kind == "made"]
    assert made == ["niah_single_1", "niah_single_2", "vt"]  # each once
    first_forward = events.index(("forward", None))
    assert events[:first_forward] == [("made", "niah_single_1")]
