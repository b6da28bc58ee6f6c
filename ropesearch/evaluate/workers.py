"""Distributed evaluation: the evaluator's `score()` served by a pool of Ray actors.

Each worker is a Ray actor that loads the model once (on K GPUs, or on the CPU) and keeps it.
A `score()` call is cut into tasks of a few candidates (the same cut whatever the number of
workers, so scores do not depend on it); each worker has at most one task in flight, and the
results come back in candidate order. A worker that dies, or hangs past the task timeout, is
replaced where the cluster has room and its task goes back to the queue, so a lost worker costs
its one in-flight task. A task whose scoring raises (e.g. out of memory at its batch size) is
split into single candidates and retried with fewer rows per pass; a candidate that still fails
comes back as a Score with `failed` set: never dropped. If every worker is gone the call raises,
and a search resumes later from its checkpoint. Ray is imported only when a pool is started.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from ropesearch.errors import OutOfMemory, RopesearchError
from ropesearch.evaluate.backends import local_evaluator
from ropesearch.evaluate.results import Score, checked_lengths
from ropesearch.models import load_for_backend, resolve_model


@dataclass(frozen=True)
class WorkerOptions:
    """How many workers, where, and on what.

    count: workers (None: every GPU of the cluster / gpus_per_worker).
    address: None starts a local Ray instance; "auto", "HOST:PORT" or "ray://HOST:PORT" joins a cluster.
    gpus_per_worker: GPUs per worker (a model that does not fit one is spread over them);
        None: 1 where the cluster has GPUs, else CPU workers.
    threads: torch threads of a CPU worker (and the Ray CPUs it reserves).
    task_timeout: seconds a task may run before its worker counts as hung (None: ten times the
        slowest task so far, at least 10 minutes; the first task waits as long as it takes).
    candidates_per_task: candidates per task; small tasks balance load and bound what a lost worker costs.
    max_restarts: replacements per worker slot before the slot is given up.
    dtype: the torch dtype each worker loads the model in (None: bfloat16 on a GPU, float32 on the CPU).
    """

    count: int | None = None
    address: str | None = None
    gpus_per_worker: int | None = None
    threads: int = 1
    task_timeout: float | None = None
    candidates_per_task: int = 1
    max_restarts: int = 3
    start_timeout: float = 1800.0  # seconds a worker may take to start (load the model)
    dtype: object = None

    def __post_init__(self):
        checks = [("--workers", self.count, 1), ("--gpus-per-worker", self.gpus_per_worker, 0),
                  ("threads", self.threads, 1), ("candidates_per_task", self.candidates_per_task, 1),
                  ("max_restarts", self.max_restarts, 0)]
        for name, value, low in checks:
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
                raise RopesearchError(f"{name} must be a whole number >= {low}, got {value!r}")
        if self.task_timeout is not None and not self.task_timeout > 0:
            raise RopesearchError(f"--task-timeout must be a number of seconds > 0, got {self.task_timeout!r}")


def worker_options(workers: int | None = None, ray_address: str | None = None, gpus_per_worker: int | None = None,
                   task_timeout: float | None = None, dtype=None) -> WorkerOptions | None:
    """WorkerOptions from the CLI flags or plan keys, or None when none is given (one process, no Ray).
    `dtype` (--dtype) alone starts no workers."""
    if workers is None and ray_address is None and gpus_per_worker is None and task_timeout is None:
        return None
    return WorkerOptions(count=workers, address=ray_address, gpus_per_worker=gpus_per_worker,
                         task_timeout=task_timeout, dtype=dtype)


class ScoringWorker:
    """One model replica. Runs inside a Ray actor; `score` never raises for a scoring failure."""

    def __init__(self, model_spec: str, backend: str, gpus: int, threads: int, max_length: int | None,
                 evaluator_options: dict, dtype=None):
        import torch

        if not gpus:
            torch.set_num_threads(threads)
        device = "cpu" if not gpus else ("cuda" if gpus == 1 else "auto")  # auto: spread over the K GPUs
        loaded = load_for_backend(resolve_model(model_spec), backend, device=device, dtype=dtype)
        self.evaluator = local_evaluator(loaded, backend=backend, model_spec=model_spec, max_length=max_length,
                                         progress=False, **evaluator_options)
        self.name = f"{socket.gethostname()}:{os.getpid()}"

    def describe(self) -> dict:
        import ray

        return {"name": self.name, "pid": os.getpid(), "node": ray.get_runtime_context().get_node_id()}

    def score(self, candidates, windows, lengths, max_batch: int | None):
        default = getattr(self.evaluator, "max_batch", None)
        try:
            if max_batch is not None:
                self.evaluator.max_batch = max_batch
            return "ok", self.evaluator.score(candidates, windows, lengths)
        except Exception as exc:  # noqa: BLE001 - a deterministic failure: the pool retries it smaller
            _free_gpu_memory()
            reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            return "failed", _Failure(reason, exc.rows if isinstance(exc, OutOfMemory) else None)
        finally:
            if max_batch is not None:
                self.evaluator.max_batch = default


def _free_gpu_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@dataclass
class _Task:
    indices: list[int]  # candidate positions in the score() call
    max_batch: int | None = None  # rows per pass (None: the worker's default)
    deaths: int = 0  # workers lost while holding this task


@dataclass
class _Slot:
    number: int
    actor: object = None
    ready_ref: object = None  # pending while the actor starts (loads the model)
    started: float = 0.0
    name: str = ""
    restarts: int = 0
    state: str = "starting"  # starting, idle, busy, dead
    info: dict = field(default_factory=dict)


class WorkerPool:
    """score(candidates, windows, lengths) -> list[Score], like TorchEvaluator, on N Ray actors.

    Counters for tests and progress: `tasks_done`, `tasks_lost` (in flight on a worker that died
    or hung), `candidates_done`, and `status()` for the progress line.
    """

    TASK_DEATHS = 3  # a task that kills this many workers is marked failed (it may be what kills them)

    def __init__(self, model_spec: str, options: WorkerOptions, backend: str = "torch", max_length: int | None = None,
                 evaluator_options: dict | None = None, progress: bool = True, log=None):
        try:
            import ray
        except ImportError:
            raise RopesearchError("--workers needs Ray: pip install 'ropesearch[ray]'") from None
        self.ray = ray
        self.model_spec = model_spec
        self.options = options
        self.progress = progress
        self.log = log or (lambda message: print(message, file=sys.stderr))
        self._owns_ray = False
        self.slots: list[_Slot] = []
        self.tasks_done = self.tasks_lost = self.candidates_done = 0
        self._slowest = 0.0
        gpus = self._connect()
        try:
            self._start_workers(gpus, backend, max_length, evaluator_options)
        except BaseException:
            self.close()  # workers started so far, and a Ray instance we started
            raise
        self._rate_mark = (time.perf_counter(), 0)

    def _start_workers(self, gpus: float, backend: str, max_length: int | None, evaluator_options: dict | None):
        ray, options, model_spec = self.ray, self.options, self.model_spec
        self.gpus_per_worker = options.gpus_per_worker if options.gpus_per_worker is not None else (1 if gpus else 0)
        count = options.count
        if count is None:
            if not gpus or not self.gpus_per_worker:
                raise RopesearchError("the Ray cluster has no GPUs: give --workers N for CPU workers")
            count = max(1, int(gpus) // self.gpus_per_worker)
        if self.gpus_per_worker > gpus:
            raise RopesearchError(f"--gpus-per-worker {self.gpus_per_worker} but the Ray cluster has {gpus:g} GPU(s)")
        resources = {"num_gpus": self.gpus_per_worker, "num_cpus": 1 if self.gpus_per_worker else options.threads}
        cluster = ray.cluster_resources()
        for kind, name in (("num_gpus", "GPU"), ("num_cpus", "CPU")):
            if count * resources[kind] > cluster.get(name, 0):  # the workers would wait for room forever
                raise RopesearchError(f"{count} workers need {count * resources[kind]:g} {name}s but the Ray cluster "
                                      f"has {cluster.get(name, 0):g}: lower --workers")
        self._actor_class = ray.remote(ScoringWorker).options(scheduling_strategy="SPREAD", max_restarts=0,
                                                              **resources)
        self._actor_args = (model_spec, backend, self.gpus_per_worker, options.threads, max_length,
                            dict(evaluator_options or {}), options.dtype)
        self.slots = [_Slot(number) for number in range(count)]
        for slot in self.slots:
            self._start(slot)
        self.log(f"starting {count} workers (each loads {model_spec})")
        self._wait_until_ready()

    # ---- cluster and workers -------------------------------------------------------------
    def _connect(self) -> float:
        ray = self.ray
        if not ray.is_initialized():
            if self.options.address:
                # a cluster on this machine's loopback (tests, one-machine clusters): join it there too
                local = self.options.address.split("://")[-1].split(":")[0] in ("127.0.0.1", "localhost")
                try:
                    ray.init(address=self.options.address, log_to_driver=False,
                             **({"_node_ip_address": "127.0.0.1"} if local else {}))
                except (ConnectionError, ValueError, RuntimeError) as exc:
                    raise RopesearchError(f"cannot join the Ray cluster at --ray-address {self.options.address}: "
                                          f"{str(exc).splitlines()[0]}") from None
            else:
                # a local instance: logical CPUs enough for the workers asked for (they share the cores)
                cpus = max(os.cpu_count() or 1, (self.options.count or 1) * self.options.threads)
                ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False)
            self._owns_ray = True
        return float(ray.cluster_resources().get("GPU", 0))

    def _start(self, slot: _Slot) -> None:
        slot.actor = self._actor_class.remote(*self._actor_args)
        slot.ready_ref = slot.actor.describe.remote()
        slot.started = time.perf_counter()
        slot.state = "starting"

    def _replace(self, slot: _Slot, why: str) -> None:
        """Kill the slot's actor (dead or hung) and start another unless the slot used its restarts."""
        try:
            self.ray.kill(slot.actor, no_restart=True)
        except Exception:  # noqa: BLE001 - already gone
            pass
        if slot.restarts >= self.options.max_restarts:
            slot.state = "dead"
            self.log(f"worker {slot.number} ({slot.name}) {why}; no restarts left")
            return
        slot.restarts += 1
        self.log(f"worker {slot.number} ({slot.name}) {why}; restarting it ({slot.restarts}/{self.options.max_restarts})")
        self._start(slot)

    def _wait_until_ready(self) -> None:
        """Block until every worker has loaded its model (or failed to)."""
        while any(s.state == "starting" for s in self.slots):
            self._poll_starting(timeout=1.0)
        if self.alive == 0:
            raise RopesearchError(f"none of the {len(self.slots)} workers started: {self._last_start_error}")

    _last_start_error = "no reason reported"

    def _poll_starting(self, timeout: float) -> None:
        starting = {s.ready_ref: s for s in self.slots if s.state == "starting"}
        if not starting:
            return
        ready, _ = self.ray.wait(list(starting), num_returns=len(starting), timeout=timeout)
        for ref in ready:
            slot = starting[ref]
            try:
                slot.info = self.ray.get(ref)
                slot.name, slot.state = slot.info["name"], "idle"
            except self.ray.exceptions.RayError as exc:
                self._last_start_error = _reason(exc)
                self._replace(slot, f"failed to start ({self._last_start_error})")
        now = time.perf_counter()
        for slot in starting.values():
            if slot.state == "starting" and now - slot.started > self.options.start_timeout:
                self._replace(slot, f"did not start within {self.options.start_timeout:g} s")

    @property
    def alive(self) -> int:
        return sum(s.state in ("idle", "busy") for s in self.slots)

    @property
    def workers(self) -> list[dict]:
        """What each live worker is: name (host:pid), pid, Ray node id."""
        return [s.info for s in self.slots if s.state in ("idle", "busy")]

    def status(self) -> str:
        """'workers 2/2, 1.8 cand/s' since the previous call."""
        now, done = time.perf_counter(), self.candidates_done
        then, before = self._rate_mark
        self._rate_mark = (now, done)
        rate = (done - before) / (now - then) if now > then else 0.0
        return f"workers {self.alive}/{len(self.slots)}, {rate:.2f} cand/s"

    def _timeout(self) -> float | None:
        if self.options.task_timeout is not None:
            return self.options.task_timeout
        return max(600.0, 10 * self._slowest) if self._slowest else None

    # ---- the score() contract ---------------------------------------------------------------
    def score(self, candidates: Sequence, windows: Sequence, lengths: Sequence[int] | None = None) -> list[Score]:
        """Evaluator.score, on the workers."""
        from tqdm.auto import tqdm

        checked_lengths(candidates, windows, lengths)
        ray = self.ray
        candidates = list(candidates)
        lengths = list(lengths) if lengths else None
        windows_ref = ray.put(list(windows))
        per = self.options.candidates_per_task
        queue = deque(_Task(list(range(i, min(i + per, len(candidates))))) for i in range(0, len(candidates), per))
        results: list[Score | None] = [None] * len(candidates)
        running: dict = {}  # result ref -> (slot, task, started)
        bar = tqdm(total=len(candidates), unit="cand", desc="scoring", leave=False,
                   disable=None if self.progress else True)
        try:
            while queue or running:
                for slot in self.slots:
                    if slot.state == "idle" and queue:
                        task = queue.popleft()
                        ref = slot.actor.score.remote([candidates[i] for i in task.indices], windows_ref, lengths,
                                                      task.max_batch)
                        running[ref] = (slot, task, time.perf_counter())
                        slot.state = "busy"
                if not running and not any(s.state == "starting" for s in self.slots):
                    raise RopesearchError(
                        f"all {len(self.slots)} workers are gone ({self._last_start_error}); "
                        f"{sum(r is None for r in results)} candidates unscored: start workers again and resume "
                        "(a search continues from its last generation with --resume)")
                ready, _ = ray.wait(list(running), num_returns=1, timeout=0.5)
                for ref in ready:
                    slot, task, started = running.pop(ref)
                    self._finish(ref, slot, task, started, candidates, queue, results)
                self._poll_starting(timeout=0)
                self._check_hung(running, queue)
                bar.n = sum(r is not None for r in results)
                bar.set_postfix_str(self.status_brief(), refresh=False)
                bar.refresh()
        finally:
            bar.close()
        return results

    def status_brief(self) -> str:
        return f"workers {self.alive}/{len(self.slots)}"

    def _finish(self, ref, slot: _Slot, task: _Task, started: float, candidates, queue, results) -> None:
        ray = self.ray
        try:
            outcome, value = ray.get(ref)
        except ray.exceptions.RayTaskError as exc:  # not raised by the scoring itself: treat it as a failure
            outcome, value = "failed", _Failure(_reason(exc))
        except ray.exceptions.RayError as exc:  # the worker died (its process, or its node)
            self.tasks_lost += 1
            task.deaths += 1
            self._last_start_error = _reason(exc)
            self._replace(slot, "died")
            if task.deaths >= self.TASK_DEATHS:
                self._fail(task, f"{task.deaths} workers died while scoring it", candidates, results)
            else:
                queue.appendleft(task)
            return
        slot.state = "idle"
        seconds = time.perf_counter() - started
        if outcome == "ok":
            self._slowest = max(self._slowest, seconds)
            self.tasks_done += 1
            self.candidates_done += len(task.indices)
            for index, score in zip(task.indices, value):
                score.worker = slot.name
                results[index] = score
        elif len(task.indices) > 1:  # find which candidate fails: one at a time
            queue.extendleft(reversed([replace(task, indices=[i]) for i in task.indices]))
        elif (failing := task.max_batch or value.rows or 2) > 1:  # fewer rows per pass: halve down to one
            queue.appendleft(replace(task, max_batch=failing // 2))  # (2 where unknown: the retry uses 1)
        else:
            self._fail(task, f"{value.reason} (also at 1 row per pass)", candidates, results)

    def _fail(self, task: _Task, reason: str, candidates, results) -> None:
        self.log(f"candidate {task.indices[0]} failed: {reason}")
        for index in task.indices:
            results[index] = Score(candidates[index], failed=reason)
            self.candidates_done += 1

    def _check_hung(self, running: dict, queue) -> None:
        timeout = self._timeout()
        if timeout is None:
            return
        now = time.perf_counter()
        for ref, (slot, task, started) in list(running.items()):
            if now - started > timeout:
                running.pop(ref)
                self.tasks_lost += 1
                task.deaths += 1
                self._replace(slot, f"hung (task over {timeout:g} s)")
                queue.appendleft(task)

    def close(self) -> None:
        for slot in self.slots:
            if slot.actor is not None and slot.state != "dead":
                self.ray.kill(slot.actor, no_restart=True)
            slot.state = "dead"
        if self._owns_ray:
            self.ray.shutdown()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@dataclass(frozen=True)
class _Failure:
    """Why a task's scoring failed, and the rows of the pass that ran out of memory (if that was it)."""

    reason: str
    rows: int | None = None


def _reason(exc: BaseException) -> str:
    """The last line of a Ray error (where Ray puts the cause), shortened."""
    text = str(exc).strip()
    return text.splitlines()[-1][:300] if text else type(exc).__name__
