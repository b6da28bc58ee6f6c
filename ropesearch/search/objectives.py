"""What a search minimises: perplexity at the target, needle perplexity, or (target, original window)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ropesearch.data import Window
from ropesearch.evaluate.runs import prefix_windows
from ropesearch.rope import RopeFactors

OBJECTIVES = ("ppl", "needle", "ppl+short")  # what users choose; "short" is the recover-short stage's


@dataclass
class Objective:
    """Scores candidates in full (`score`) or cheaply for screening (`screen`).

    For "ppl+short" every candidate's factors serve every length (as vLLM applies
    long_factor everywhere), and the second objective is the perplexity at the original window.
    "short" (short-context recovery) scores the geometric mean perplexity over `short_lengths`.
    """

    kind: str
    evaluator: object
    windows: list[Window]
    target: int
    short_length: int | None = None
    screen_windows: list[Window] | None = None
    short_lengths: tuple[int, ...] = ()

    @property
    def names(self) -> list[str]:
        if self.kind == "short":
            return ["ppl@" + "+".join(str(n) for n in self.short_lengths)]
        first = f"{'needle_ppl' if self.kind == 'needle' else 'ppl'}@{self.target}"
        return [first, f"ppl@{self.short_length}"] if self.kind == "ppl+short" else [first]

    @property
    def n_obj(self) -> int:
        return len(self.names)

    def score(self, candidates: Sequence[RopeFactors]) -> tuple[np.ndarray, list[float], list[dict]]:
        """Objective values [n, n_obj], the GPU seconds spent on each candidate, and what the history
        adds for each (which worker scored it; why it failed: a failed candidate's values are inf)."""
        if self.kind == "short":
            scores = self.evaluator.score(list(candidates), prefix_windows(self.windows, max(self.short_lengths)),
                                          self.short_lengths)
            values = np.array([[np.exp(np.mean([s.nll[n] for n in self.short_lengths])) if not s.failed else np.inf]
                               for s in scores])
            return values, [s.seconds for s in scores], _notes(scores)
        lengths = [self.short_length, self.target] if self.kind == "ppl+short" else [self.target]
        scores = self.evaluator.score(list(candidates), self.windows, lengths)
        values = np.array([[s.ppl[self.target]] + ([s.ppl[self.short_length]] if self.short_length else [])
                           if not s.failed else [np.inf] * self.n_obj for s in scores])
        return values, [s.seconds for s in scores], _notes(scores)

    def screen(self, candidates: Sequence[RopeFactors]) -> tuple[np.ndarray, list[float], list[dict]]:
        """One cheap value per candidate (first objective on the screening windows), seconds and notes as `score`."""
        length = self.screen_windows[0].length
        scores = self.evaluator.score(list(candidates), self.screen_windows, [length])
        values = np.array([s.ppl[length] if not s.failed else np.inf for s in scores])
        return values, [s.seconds for s in scores], _notes(scores)


def _notes(scores) -> list[dict]:
    """History fields beyond the metrics: the worker that scored a candidate, or why it failed."""
    return [{k: v for k, v in (("worker", s.worker), ("failed", s.failed)) if v is not None} for s in scores]


def screening_windows(windows: list[Window], samples: int, length_fraction: float) -> list[Window]:
    """The first `samples` search windows, cut to a fraction of their length (needle windows keep their end)."""
    chosen = windows[:samples]
    length = max(2, int(chosen[0].length * length_fraction))
    if chosen[0].scored is None:
        return prefix_windows(chosen, length)
    # a needle window shortened from the middle of its haystack keeps needle, question and answer
    cut = chosen[0].length - length
    shortened = []
    for w in chosen:
        keep = np.ones(w.length, dtype=bool)
        first_scored = int(w.scored[0])
        drop_end = first_scored - 64  # keep the question intact
        keep[max(0, drop_end - cut) : drop_end] = False
        shortened.append(Window(w.name, w.ids[keep], w.scored - cut))
    return shortened
