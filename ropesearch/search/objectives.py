"""What a search minimises: perplexity at the target, needle perplexity, or (target, original window)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ropesearch.data import Window
from ropesearch.rope import RopeFactors, methods

@dataclass
class Objective:
    """What a search minimises: perplexity at the target (`ppl`, the base class), and its kinds
    below. Each knows its name, the lengths it scores, how it scores in full (`score`) and cheaply
    for screening (`screen`), what it measures before generation 0 (`start`) and which member of
    a population is the best (`best_index`). To add one: a subclass here and an entry in OBJECTIVES.
    """

    evaluator: object
    windows: list[Window]
    target: int
    short_length: int | None = None  # the original window (kinds that score it)
    screen_windows: list[Window] | None = None
    short_lengths: tuple[int, ...] = ()  # recover-short: the lengths it averages over
    reference: float | None = None  # what `start` measured (kept in the checkpoint, restored on resume)
    needle_windows: list[Window] | None = None  # kinds that plant needles: `windows` with a needle each
    needle_screen_windows: list[Window] | None = None  # and `screen_windows` with a needle each

    kind: ClassVar[str] = "ppl"
    help: ClassVar[str] = "perplexity at the target"
    needle: ClassVar[bool] = False  # its windows carry a needle (only the answer is scored)
    plants_needles: ClassVar[bool] = False  # it also scores `windows` with a needle planted in each
    guarded: ClassVar[bool] = True  # the short guard applies (short_factor = 1, attention factor capped)

    @property
    def names(self) -> list[str]:
        return [f"ppl@{self.target}"]

    @property
    def n_obj(self) -> int:
        return len(self.names)

    @property
    def algorithm(self) -> str | None:
        """The survival it needs ("nsga2" for two objectives), or None: the space's."""
        return "nsga2" if self.n_obj > 1 else None

    def lengths(self) -> list[int]:
        return [self.target]

    def values(self, score) -> list[float]:
        return [score.ppl[self.target]]

    def score(self, candidates: Sequence[RopeFactors]) -> tuple[np.ndarray, list[float], list[dict]]:
        """Objective values [n, n_obj], the evaluator seconds spent on each candidate, and what the
        history adds for each (which worker scored it; why it failed: a failed candidate's values are inf)."""
        scores = self.evaluator.score(list(candidates), self.windows, self.lengths())
        values = np.array([self.values(s) if not s.failed else [np.inf] * self.n_obj for s in scores])
        return values, [s.seconds for s in scores], _notes(scores)

    def screen(self, candidates: Sequence[RopeFactors]) -> tuple[np.ndarray, list[float], list[dict]]:
        """One cheap value per candidate (first objective on the screening windows), seconds and notes as `score`."""
        length = self.screen_windows[0].length
        scores = self.evaluator.score(list(candidates), self.screen_windows, [length])
        values = np.array([s.ppl[length] if not s.failed else np.inf for s in scores])
        return values, [s.seconds for s in scores], _notes(scores)

    def start(self, base) -> float:
        """Measures `reference` once before generation 0 (nothing here); returns the evaluator seconds."""
        return 0.0

    def best_index(self, F: np.ndarray) -> int:
        """The best member of a population with objective values F [n, n_obj]."""
        return int(np.argmin(F[:, 0]))


@dataclass
class NeedleObjective(Objective):
    kind: ClassVar[str] = "needle"
    help: ClassVar[str] = "needle-driven perplexity (only the answer to a needle placed early is scored)"
    needle: ClassVar[bool] = True

    @property
    def names(self) -> list[str]:
        return [f"needle_ppl@{self.target}"]


@dataclass
class PplNeedleObjective(Objective):
    """Perplexity at the target and the needle-driven perplexity on the same windows with a needle
    planted in each (plant_needle), as one value: exp((1 - w)·nll + w·needle nll), the geometric
    mix with weight `needle_weight`. Plain perplexity at 1M barely sees whether a number stated
    early can be read back; the needle term does, at the cost of a second pass."""

    needle_weight: float = 0.5

    kind: ClassVar[str] = "ppl+needle"
    help: ClassVar[str] = "perplexity mixed with the needle perplexity of the same windows (two passes)"
    plants_needles: ClassVar[bool] = True

    @property
    def names(self) -> list[str]:
        return [f"ppl+needle@{self.target}"]

    def score(self, candidates: Sequence[RopeFactors]) -> tuple[np.ndarray, list[float], list[dict]]:
        values, seconds, notes = self._mix(candidates, self.windows, self.needle_windows)
        return values[:, None], seconds, notes

    def screen(self, candidates: Sequence[RopeFactors]) -> tuple[np.ndarray, list[float], list[dict]]:
        """The same mix on the screening windows, each with its own needle (one a screen: a needle of
        the full window may lie in the part a screen cuts away)."""
        return self._mix(candidates, self.screen_windows, self.needle_screen_windows)

    def _mix(self, candidates, windows: list[Window], planted: list[Window]):
        length = windows[0].length
        plain = self.evaluator.score(list(candidates), windows, [length])
        needle = self.evaluator.score(list(candidates), planted, [length])
        w = self.needle_weight
        values = np.array([np.exp((1 - w) * p.nll[length] + w * n.nll[length]) if not (p.failed or n.failed) else np.inf
                           for p, n in zip(plain, needle)])
        notes = [{**n, **p} for p, n in zip(_notes(plain), _notes(needle))]  # a failure of either is kept
        return values, [p.seconds + n.seconds for p, n in zip(plain, needle)], notes


@dataclass
class WithShortObjective(Objective):
    """Perplexity at the target and at the original window, one factor set for every length (as vLLM
    applies long_factor everywhere); the best keeps the original window within `tolerance` of the
    unscaled model, which `start` measures."""

    tolerance: float = 0.02  # reference: the unscaled model's perplexity at the original window

    kind: ClassVar[str] = "ppl+short"
    help: ClassVar[str] = "also the original window, one factor set for every length (NSGA-II)"
    guarded: ClassVar[bool] = False  # the second objective is the guard

    @property
    def names(self) -> list[str]:
        return [f"ppl@{self.target}", f"ppl@{self.short_length}"]

    def lengths(self) -> list[int]:
        return [self.short_length, self.target]

    def values(self, score) -> list[float]:
        return [score.ppl[self.target], score.ppl[self.short_length]]

    def start(self, base) -> float:
        unscaled = self.evaluator.score([methods.none(base)], [w.prefix(self.short_length) for w in self.windows])
        self.reference = unscaled[0].ppl[self.short_length]
        return unscaled[0].seconds

    def best_index(self, F: np.ndarray) -> int:
        """The lowest target perplexity among those that keep the original window within tolerance."""
        ok = F[:, 1] <= self.reference * (1 + self.tolerance)
        return int(np.argmin(np.where(ok, F[:, 0], np.inf))) if ok.any() else int(np.argmin(F[:, 1]))


@dataclass
class ShortObjective(Objective):
    """Short-context recovery (the recover-short stage): the geometric mean perplexity over `short_lengths`."""

    kind: ClassVar[str] = "short"
    help: ClassVar[str] = "geometric mean perplexity over the short lengths"

    @property
    def names(self) -> list[str]:
        return ["ppl@" + "+".join(str(n) for n in self.short_lengths)]

    def score(self, candidates: Sequence[RopeFactors]) -> tuple[np.ndarray, list[float], list[dict]]:
        longest = max(self.short_lengths)
        scores = self.evaluator.score(list(candidates), [w.prefix(longest) for w in self.windows], self.short_lengths)
        values = np.array([[np.exp(np.mean([s.nll[n] for n in self.short_lengths])) if not s.failed else np.inf]
                           for s in scores])
        return values, [s.seconds for s in scores], _notes(scores)


# what users choose (--objective, a space's or a plan's objective); ShortObjective is the recover-short stage's
OBJECTIVES: dict[str, type[Objective]] = {kind.kind: kind for kind in (Objective, NeedleObjective, PplNeedleObjective,
                                                                          WithShortObjective)}


def _notes(scores) -> list[dict]:
    """History fields beyond the metrics: the worker that scored a candidate, or why it failed."""
    return [{k: v for k, v in (("worker", s.worker), ("failed", s.failed)) if v is not None} for s in scores]


def screening_windows(windows: list[Window], samples: int, length_fraction: float) -> list[Window]:
    """The first `samples` search windows, cut to a fraction of their length (needle windows keep their end)."""
    chosen = windows[:samples]
    length = max(2, int(chosen[0].length * length_fraction))
    if chosen[0].scored is None:
        return [w.prefix(length) for w in chosen]
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
