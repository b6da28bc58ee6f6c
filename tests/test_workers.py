"""Distributed evaluation on Ray: a two-node cluster simulated on this machine (a head and a second
`ray start --address` on other ports, loopback only), CPU workers holding the pocket model.

The search result must not depend on how many workers score it, nor on workers that die or hang
on the way; a driver killed mid-search resumes to the same result.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from ropesearch.errors import RopesearchError  # noqa: E402
from ropesearch.evaluate import TorchEvaluator  # noqa: E402
from ropesearch.evaluate.workers import WorkerOptions, WorkerPool  # noqa: E402
from ropesearch.models import load_model, load_tokenizer, resolve_model, rope_base  # noqa: E402
from ropesearch.rope import RopeBase, methods  # noqa: E402
from ropesearch.search import load_space  # noqa: E402
from ropesearch.search.session import SearchConfig, run_search, search_windows  # noqa: E402
from conftest import search_kwargs  # noqa: E402

TARGET = 512  # 2x the pocket model's window: seconds per search on two cores
ENV = {"RAY_AUTH_MODE": "disabled", "RAY_DISABLE_USAGE_STATS": "1"}  # a loopback-only test cluster


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    """Head + a second node, 4 logical CPUs each (workers share the two cores); yields the address. Stopped by pid at the end."""
    os.environ.update(ENV)
    ray_bin = str(Path(sys.executable).parent / "ray")
    port = _free_port()
    common = ["--block", "--disable-usage-stats", "--node-ip-address=127.0.0.1", "--num-gpus=0", "--num-cpus=4"]
    nodes = [subprocess.Popen([ray_bin, "start", "--head", f"--port={port}", "--include-dashboard=false",
                               f"--dashboard-agent-listen-port={_free_port()}", *common],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    address = f"127.0.0.1:{port}"
    try:
        _wait_for(lambda: _port_open(port), 90, "the Ray head")
        nodes.append(subprocess.Popen([ray_bin, "start", f"--address={address}",
                                       f"--dashboard-agent-listen-port={_free_port()}", *common],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        ray.init(address=address, _node_ip_address="127.0.0.1", log_to_driver=False)
        _wait_for(lambda: sum(n["Alive"] for n in ray.nodes()) == 2, 90, "the second Ray node")
        yield address
    finally:
        ray.shutdown()
        for node in reversed(nodes):
            node.terminate()
        for node in nodes:
            try:
                node.wait(timeout=60)
            except subprocess.TimeoutExpired:
                node.kill()


def _port_open(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _wait_for(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not come up in {seconds} s")
        time.sleep(0.3)


@pytest.fixture(scope="module")
def pocket():
    ref = resolve_model("pocket")
    return load_model(ref, device="cpu"), load_tokenizer(ref)


@pytest.fixture(scope="module")
def pool(cluster):
    """Two CPU workers, one per node; tasks over 8 s count as hung (a task here takes well under 1 s)."""
    with WorkerPool("pocket", WorkerOptions(count=2, address=cluster, task_timeout=8), progress=False) as pool:
        yield pool


def tiny_space():
    space = load_space("fast")
    return replace(space, budget=replace(space.budget, population=8, top_k=4, mutations=2, crossovers=2,
                                         generations=2))


def search(out, workers=None, loaded=None, **kwargs):
    config, runtime = search_kwargs(kwargs)
    return run_search(SearchConfig("pocket", "builtin", TARGET, space=tiny_space(), samples=2, workers=workers,
                                   **config),
                      
                      out, loaded=loaded, log=lambda m: None, **runtime)


def history(path, keep_worker=False):
    rows = [json.loads(line) for line in (Path(path) / "history.jsonl").read_text().splitlines()]
    for row in rows:
        row.pop("seconds")
        if not keep_worker:
            row.pop("worker", None)
    return rows


@pytest.fixture(scope="module")
def straight(pocket, tmp_path_factory):
    """The single-process search every distributed run must equal: its result, its history, and how many
    candidates it scored (more than the history holds: the short guard's grid and the baselines come first)."""
    out = tmp_path_factory.mktemp("straight") / "run"
    score, scored = TorchEvaluator.score, []

    def counting(self, candidates, *args, **kwargs):  # the real scoring, counted
        scored.append(len(candidates))
        return score(self, candidates, *args, **kwargs)

    TorchEvaluator.score = counting
    try:
        result = search(out, loaded=pocket)
    finally:
        TorchEvaluator.score = score
    return result, history(out), sum(scored)


def test_workers_score_like_one_process_in_candidate_order_on_both_nodes(pool, pocket):
    model, tokenizer = pocket
    base = rope_base(model.config)
    windows = search_windows(tokenizer, "builtin", TARGET, 2, 0, False)
    candidates = [methods.yarn(base, 2 + 0.25 * i) for i in range(5)] + [methods.ntk(base, 2), methods.pi(base, 2)]
    alone = TorchEvaluator(model, progress=False).score(candidates, windows, [256, TARGET])
    spread = pool.score(candidates, windows, [256, TARGET])
    assert [s.nll_sum for s in spread] == [s.nll_sum for s in alone]  # bit for bit, whatever the batching
    assert [s.factors for s in spread] == candidates
    assert len({w["node"] for w in pool.workers}) == 2, "one worker on each node of the cluster"
    assert {s.worker for s in spread} == {w["name"] for w in pool.workers}


def test_a_candidate_that_fails_is_retried_smaller_then_marked_failed_never_dropped(pool, pocket):
    model, tokenizer = pocket
    base = rope_base(model.config)
    windows = search_windows(tokenizer, "builtin", TARGET, 2, 0, False)
    wrong = methods.yarn(RopeBase(10_000.0, 32, 256), 2)  # made for another model: scoring it raises
    candidates = [methods.yarn(base, 2), wrong, methods.ntk(base, 2)]
    lost = pool.tasks_lost
    scores = pool.score(candidates, windows)
    assert pool.tasks_lost == lost and pool.alive == 2  # a failure is not a dead worker
    good = TorchEvaluator(model, progress=False).score([candidates[0], candidates[2]], windows)
    assert [scores[0].nll_sum, scores[2].nll_sum] == [good[0].nll_sum, good[1].nll_sum]
    assert scores[1].failed and "another model" in scores[1].failed and "1 row" in scores[1].failed
    assert scores[1].nll_sum == {}


def test_search_result_does_not_depend_on_the_number_of_workers(cluster, pool, straight, tmp_path):
    result, expected, scored = straight
    distributed = search(tmp_path / "two", workers=pool)
    assert distributed.factors == result.factors and distributed.values == result.values
    assert history(tmp_path / "two") == expected
    rows = history(tmp_path / "two", keep_worker=True)
    assert {r["worker"] for r in rows} == {w["name"] for w in pool.workers}  # the history says who scored what
    for count in (1, 4):
        out = tmp_path / f"w{count}"
        again = search(out, workers=WorkerOptions(count=count, address=cluster))
        assert again.factors == result.factors and again.values == result.values
        assert history(out) == expected


def _kill_when(pool, tasks_done: int, sig=signal.SIGKILL, slot: int = 0) -> threading.Thread:
    """From another thread: once the pool has finished `tasks_done` tasks, signal one worker's process."""

    def watch():
        while pool.tasks_done < tasks_done:
            time.sleep(0.01)
        os.kill(pool.slots[slot].info["pid"], sig)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_a_killed_and_a_hung_worker_cost_only_their_task_and_the_search_ends_the_same(pool, straight, tmp_path):
    result, expected, scored = straight
    before_done, before_lost = pool.tasks_done, pool.tasks_lost
    first = before_done + scored - len(expected)  # tasks done when generation 0 starts
    killer = _kill_when(pool, first + 3, signal.SIGKILL, slot=0)
    hanger = _kill_when(pool, first + 12, signal.SIGSTOP, slot=1)  # hung: stopped, never answers
    distributed = search(tmp_path / "faults", workers=pool)
    killer.join(1), hanger.join(1)
    assert distributed.factors == result.factors and distributed.values == result.values
    assert history(tmp_path / "faults") == expected
    # each lost worker cost exactly its one task in flight; every candidate was scored once more at most
    assert pool.tasks_lost - before_lost == 2
    assert pool.tasks_done - before_done == scored
    assert all(s.restarts == 1 and s.state != "dead" for s in pool.slots), "both were replaced"


def test_all_workers_gone_stops_with_a_clear_error_and_the_run_resumes(cluster, pool, straight, tmp_path):
    result, expected, scored = straight
    options = WorkerOptions(count=2, address=cluster, max_restarts=0)
    with WorkerPool("pocket", options, progress=False) as doomed:
        in_generation_1 = scored - len(expected) + 10  # after the guard, the baselines and generation 0
        killers = [_kill_when(doomed, in_generation_1, slot=0), _kill_when(doomed, in_generation_1, slot=1)]
        with pytest.raises(RopesearchError, match="all 2 workers are gone.*--resume"):
            search(tmp_path / "run", workers=doomed)
        [k.join(1) for k in killers]
    resumed = search(tmp_path / "run", workers=pool, resume=True)
    assert resumed.factors == result.factors and resumed.values == result.values
    assert history(tmp_path / "run") == expected


def test_a_killed_driver_resumes_to_the_same_result(cluster, pool, straight, tmp_path):
    """`ropesearch search --workers 2 --ray-address ...` killed (SIGKILL) after its first generation."""
    result, expected, scored = straight
    space = tmp_path / "space.yaml"
    from ropesearch.search.space import space_to_dict

    space.write_text(json.dumps(space_to_dict(tiny_space())))  # the same space, as a file
    out = tmp_path / "run"
    command = [sys.executable, "-m", "ropesearch.cli", "search", "--model", "pocket", "--target-length", str(TARGET),
               "--space", str(space), "--samples", "2", "--out", str(out), "--workers", "2", "--ray-address", cluster]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), **ENV)
    driver = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: (out / "progress.json").is_file() or driver.poll() is not None, 240, "the first generation")
        assert driver.poll() is None, driver.stderr.read()
        driver.send_signal(signal.SIGKILL)
    finally:
        driver.wait(timeout=30)
    assert len(json.loads((out / "progress.json").read_text())) < 3, "killed before it finished"
    resumed = run_search(SearchConfig("pocket", "builtin", TARGET, space=str(space), samples=2, workers=pool),
                         out, resume=True, log=lambda m: None)
    assert resumed.factors == result.factors and resumed.values == result.values
    assert history(out) == expected


def test_more_workers_than_the_cluster_holds_is_an_error_not_a_wait(cluster):
    with pytest.raises(RopesearchError, match="100 workers need 100 CPUs but the Ray cluster has 8"):
        WorkerPool("pocket", WorkerOptions(count=100, address=cluster))


def test_worker_options_are_checked_and_plain_runs_never_import_ray(tmp_path):
    with pytest.raises(RopesearchError, match="--workers must be a whole number >= 1"):
        WorkerOptions(count=0)
    with pytest.raises(RopesearchError, match="--task-timeout"):
        WorkerOptions(count=1, task_timeout=0)
    code = ("import sys; from ropesearch.cli import cli; "
            "cli(['eval', '--model', 'pocket', '--lengths', '256', '--method', 'none', '--samples', '1'], "
            "standalone_mode=False); assert 'ray' not in sys.modules, 'ray was imported'")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1])))
    assert run.returncode == 0, run.stderr[-2000:]


def test_the_objective_turns_a_failed_candidate_into_inf_with_its_reason(pocket):
    """What the search loop gets from a pool that marked a candidate failed: inf, and the reason for the history."""
    from ropesearch.evaluate import Score
    from ropesearch.search.objectives import Objective

    model, tokenizer = pocket
    base = rope_base(model.config)
    windows = search_windows(tokenizer, "builtin", TARGET, 1, 0, False)
    evaluator = TorchEvaluator(model, progress=False)

    class MarksTheSecondFailed:  # the pool's answer for a candidate that failed at one row per pass
        def score(self, candidates, windows, lengths=None):
            scores = evaluator.score(candidates, windows, lengths)
            scores[1] = Score(candidates[1], failed="OutOfMemoryError: at 512 tokens (also at 1 row per pass)")
            return scores

    objective = Objective(MarksTheSecondFailed(), windows, TARGET)
    values, seconds, notes = objective.score([methods.yarn(base, 2), methods.ntk(base, 2), methods.pi(base, 2)])
    assert np.isfinite(values[0, 0]) and values[1, 0] == np.inf and np.isfinite(values[2, 0])
    assert notes[1] == {"failed": "OutOfMemoryError: at 512 tokens (also at 1 row per pass)"} and notes[0] == {}


def test_a_worker_builds_its_evaluator_as_asked_sequence_chunk_and_dtype(pocket):
    """The pool hands evaluator options (the chunking of long windows) and --dtype to every worker."""
    import torch

    from ropesearch.evaluate.workers import ScoringWorker

    model, tokenizer = pocket
    base = rope_base(model.config)
    windows = search_windows(tokenizer, "builtin", TARGET, 1, 0, False)
    candidates = [methods.yarn(base, 2), methods.ntk(base, 2)]
    threads = torch.get_num_threads()
    try:  # in this process: a CPU worker sets torch's threads
        worker = ScoringWorker("pocket", "torch", 0, 1, TARGET, {"sequence_chunk": 100}, dtype=torch.bfloat16)
        outcome, scores = worker.score(candidates, windows, [256, TARGET], None)
    finally:
        torch.set_num_threads(threads)
    assert outcome == "ok" and worker.evaluator.sequence_chunk == 100  # (chunked scores equal whole ones here)
    in_bf16 = load_model(resolve_model("pocket"), device="cpu", dtype=torch.bfloat16)
    chunked = TorchEvaluator(in_bf16, progress=False, sequence_chunk=100).score(candidates, windows, [256, TARGET])
    assert [s.nll_sum for s in scores] == [s.nll_sum for s in chunked]
    whole = TorchEvaluator(model, progress=False).score(candidates, windows, [256, TARGET])  # float32
    assert [s.nll_sum for s in scores] != [s.nll_sum for s in whole]


def test_the_short_guard_counts_a_failed_candidate_as_outside_its_tolerance(pocket):
    """A pool may mark grid candidates failed: they cap the attention factor like a bad score would."""
    from ropesearch.evaluate import Score
    from ropesearch.search.short_guard import measure_guard

    model, tokenizer = pocket
    base = rope_base(model.config)
    windows = search_windows(tokenizer, "builtin", TARGET, 1, 0, False)
    evaluator = TorchEvaluator(model, progress=False)

    class FailsAbove:  # every candidate with an attention factor above `limit` failed on the workers
        def __init__(self, limit):
            self.limit = limit

        def score(self, candidates, windows, lengths=None):
            return [Score(c, failed="OutOfMemoryError") if c.attention_factor > self.limit
                    else evaluator.score([c], windows, lengths)[0] for c in candidates]

    free = measure_guard(evaluator, windows, base, TARGET, 0.5, 1.5)
    capped = measure_guard(FailsAbove(1.1), windows, base, TARGET, 0.5, 1.5)
    assert free.attention_cap > 1.1 >= capped.attention_cap
    with pytest.raises(RopesearchError, match="unscaled model could not be scored"):
        measure_guard(FailsAbove(0.5), windows, base, TARGET, 0.5, 1.5)


def test_out_of_memory_carries_its_row_count_to_the_pool(pocket, monkeypatch):
    """The torch evaluator raises a typed OutOfMemory with the pass's rows; a worker hands the count
    to the pool (which halves from it) as data, never parsed out of the message."""
    import pickle

    import torch

    from ropesearch.errors import OutOfMemory
    from ropesearch.evaluate.workers import ScoringWorker, _Failure

    model, tokenizer = pocket
    base = rope_base(model.config)
    windows = search_windows(tokenizer, "builtin", TARGET, 3, 0, False)
    evaluator = TorchEvaluator(model, progress=False)

    def out_of_memory(*args, **kwargs):  # what CUDA raises when a pass does not fit
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(evaluator, "_run_pass", out_of_memory)
    with pytest.raises(OutOfMemory) as raised:
        evaluator.score([methods.yarn(base, 2), methods.ntk(base, 2)], windows)
    assert (raised.value.length, raised.value.rows) == (TARGET, 6)
    copy = pickle.loads(pickle.dumps(raised.value))  # as Ray carries it
    assert (copy.length, copy.rows, str(copy)) == (TARGET, 6, str(raised.value))

    worker = ScoringWorker.__new__(ScoringWorker)  # its evaluator, without a Ray actor around it
    worker.evaluator = evaluator
    outcome, failure = worker.score([methods.yarn(base, 2)], windows, None, None)
    assert outcome == "failed" and failure == _Failure(f"OutOfMemory: {raised.value}".replace(" 6 row", " 3 row"), 3)


def test_the_torch_evaluator_and_the_pool_keep_one_contract(pool, pocket):
    """Both are Evaluators (results.py) and refuse a bad request with the same words, the pool
    before any task goes to a worker."""
    from ropesearch.data import Window
    from ropesearch.evaluate import Evaluator

    model, _ = pocket
    torch_evaluator = TorchEvaluator(model, progress=False)
    assert isinstance(torch_evaluator, Evaluator) and isinstance(pool, Evaluator)
    base = rope_base(model.config)
    rng = np.random.default_rng(0)
    uneven = [Window("a", rng.integers(0, 100, 64)), Window("b", rng.integers(0, 100, 32))]
    even = uneven[:1]
    for evaluator in (torch_evaluator, pool):
        for candidates, windows, lengths, message in (([], even, None, "nothing to score"),
                                                      ([methods.none(base)], uneven, None, "the same length"),
                                                      ([methods.none(base)], even, [128], r"lie in \[2, 64\]")):
            with pytest.raises(RopesearchError, match=message):
                evaluator.score(candidates, windows, lengths)
