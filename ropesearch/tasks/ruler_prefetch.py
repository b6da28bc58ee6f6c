"""RULER prompts built by a worker process ahead of their use, so the GPU does not wait for them.

Building a task's samples is CPU work (haystack assembly, token counting, a batched check by the
tokenizer): on an H100's 16-core host about 45 s for the 11 tasks x 20 samples of a 64k length,
during which the GPU would be idle. `PrefetchedSuite` hands the same work to one spawned worker (a
forked one would share the parent's CUDA state) that runs through the requests in the order they
are planned: while the GPU answers one task, the worker builds the next ones. The samples are the
same as `RulerSuite`'s (each comes from its own seed), so results do not depend on the choice.
"""

from __future__ import annotations

import multiprocessing
import signal
import warnings
from collections.abc import Iterable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from ropesearch.tasks.ruler import RulerSample, RulerSuite

_worker_suite: RulerSuite | None = None  # the worker process's own suite (its caches live there)


def _start(tokenizer, data: str, text_field: str, seed: int) -> None:
    global _worker_suite
    # a Ctrl-C or `timeout -s INT` reaches the whole process group: the parent stops the worker
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _worker_suite = RulerSuite(tokenizer, data, text_field=text_field, seed=seed)


def _build(task: str, length: int, count: int, first: int) -> list[RulerSample]:
    return _worker_suite._make(task, length, count, first)


class PrefetchedSuite:
    """RulerSuite's `samples` (and `tokenizer`), built by a worker: `plan(requests)` queues
    (task, length, count) builds in order; `samples` waits for one (queuing it first if unplanned).
    Use as a context manager, or `close()` it: the worker stops with it. Should the worker die,
    this process builds the rest (a warning says so)."""

    def __init__(self, tokenizer, data: str = "builtin", text_field: str = "text", seed: int = 0):
        self.tokenizer, self.data, self.text_field, self.seed = tokenizer, data, text_field, seed
        self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=_start,
                                         initargs=(tokenizer, data, text_field, seed))
        self._futures: dict[tuple, Future] = {}
        self._taken: set[int] = set()  # lengths whose samples were handed out
        self._local: RulerSuite | None = None  # where the worker died: this process builds

    def plan(self, requests: Iterable[tuple[str, int, int]]) -> None:
        for task, length, count in requests:
            self._submit((task, length, count, 0))

    def _submit(self, key: tuple) -> Future | None:
        if self._local is None and key not in self._futures:
            try:
                self._futures[key] = self._pool.submit(_build, *key)
            except BrokenProcessPool as error:
                self._stopped(error)
        return self._futures.get(key)

    def _stopped(self, error: Exception) -> None:
        """The worker died (killed, out of memory): this process builds the rest (the same samples)."""
        if self._local is None:
            warnings.warn(f"the worker building RULER prompts stopped ({error}); building them here from now on",
                          RuntimeWarning, stacklevel=3)
            self._local = RulerSuite(self.tokenizer, self.data, text_field=self.text_field, seed=self.seed)
            self._futures.clear()

    def samples(self, task: str, length: int, count: int, first: int = 0) -> list[RulerSample]:
        key = (task, length, count, first)
        future = self._submit(key)
        # those of lengths already used and left behind are dropped (every factor set runs one length,
        # then the next); planned lengths not reached yet are kept
        for old in [k for k in self._futures if k[1] != length and k[1] in self._taken]:
            del self._futures[old]
        self._taken.add(length)
        if future is not None:
            try:
                return future.result()
            except BrokenProcessPool as error:
                self._stopped(error)
        return self._local.samples(task, length, count, first)

    def sample(self, task: str, length: int, index: int) -> RulerSample:
        return self.samples(task, length, 1, first=index)[0]

    def close(self) -> None:
        """Stops the worker at once, in the middle of a build (a run ends or is interrupted): the
        worker first, with Ctrl-C held back meanwhile (`timeout -s INT` can send it twice), so none
        is left building while this process exits."""
        held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            if hasattr(self._pool, "terminate_workers"):  # Python >= 3.14
                self._pool.terminate_workers()
            else:
                for worker in list((self._pool._processes or {}).values()):
                    worker.terminate()
                self._pool.shutdown(wait=False, cancel_futures=True)
            self._futures.clear()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)

    def __enter__(self) -> PrefetchedSuite:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def ruler_suite(tokenizer, data: str = "builtin", text_field: str = "text", seed: int = 0,
                prefetch: bool = False) -> RulerSuite | PrefetchedSuite:
    """The suite for a run: built ahead by a worker where the model answers on a GPU (`prefetch`),
    in this process otherwise (on a CPU the worker would take the cores the model runs on)."""
    if prefetch:
        return PrefetchedSuite(tokenizer, data, text_field=text_field, seed=seed)
    return RulerSuite(tokenizer, data, text_field=text_field, seed=seed)


__all__ = ["PrefetchedSuite", "ruler_suite"]
