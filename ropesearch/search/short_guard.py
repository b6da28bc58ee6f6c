"""Never worse than the start: keep the original window within a tolerance of the unscaled model.

transformers switches to `short_factor` at or below the original window but applies the
attention factor at every length, so a found model is the unscaled one there only if
short_factor is all 1 and the attention factor is close to 1 (on the pocket model an attention
factor of 1.17 alone costs 7% at 256 tokens; no short factors undo it). The guard measures the
largest attention factor that stays within a margin of the tolerance on many windows of the
original length cut from the search windows, and the search then keeps short_factor = 1 and the
attention factor below it.

Why many windows and a margin: the cost of an attention factor varies a lot from one text to
another (on the pocket model at 1.035: from -3.5% to +3.4% on single 256-token windows of the
built-in corpus), so a cap measured at the full tolerance on the two windows' starts kept those
within 1% (0.9%) and held-out documents not (1.1%). Windows cut end to end from the search
windows estimate the mean better without reading any other text, and the margin leaves room for
held-out text that costs more than the mean (results/demo-quickstart/guard-margin.md).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np

from ropesearch.data import Window
from ropesearch.errors import RopesearchError
from ropesearch.rope import RopeBase, methods
from ropesearch.search.encoding import ATTENTION_STEP  # the cap lies on the gene's grid, so repair keeps it

GUARD_MARGIN = 0.75  # the cap keeps the guard's windows within this fraction of the tolerance
GUARD_WINDOWS = 32  # windows of the original length at most (cheap: the original window is short)


@dataclass(frozen=True)
class ShortGuard:
    tolerance: float  # relative perplexity allowed above the unscaled model at the original window
    length: int  # the original window
    unscaled_ppl: float
    attention_cap: float  # the largest attention factor found within margin x tolerance
    capped_ppl: float  # perplexity at the original window with that attention factor
    margin: float | None = None  # None: a run from before the margin (cap at the full tolerance)
    windows: int | None = None  # how many windows it measured on (None: the search windows' starts)

    def describe(self) -> str:
        within = (f"{self.tolerance:.0%}" if self.margin is None else
                  f"{self.margin * self.tolerance:.2%} ({self.margin:g} of the {self.tolerance:.0%} tolerance, "
                  "a margin for other text)")
        where = "" if self.windows is None else f" on {self.windows} windows of the search text"
        return (f"short guard: short_factor = 1 and attention factor <= {self.attention_cap:.3f} keep "
                f"{self.length} tokens within {within} of the unscaled model{where} "
                f"({self.unscaled_ppl:.3f} -> {self.capped_ppl:.3f})")

    def as_dict(self) -> dict:
        # fields a run from before them lacks stay out, so its config is the same on resume
        return {k: v for k, v in asdict(self).items() if v is not None}


def guard_windows(windows: list[Window], length: int, count: int = GUARD_WINDOWS) -> list[Window]:
    """Plain windows of the original length cut end to end from the search windows (needle windows
    lose their needle markers), at most `count` of them spread evenly over all."""
    pieces = [Window(f"{w.name}+{start}", w.ids[start : start + length], None)
              for w in windows for start in range(0, w.length - length + 1, length)]
    if len(pieces) <= count:
        return pieces
    return [pieces[i] for i in np.linspace(0, len(pieces) - 1, count).round().astype(int)]


def measure_guard(evaluator, windows: list[Window], base: RopeBase, target: int, tolerance: float,
                  highest: float, steps: int = 12, margin: float = GUARD_MARGIN) -> ShortGuard:
    """The attention cap: a grid over [1, highest], then a finer grid between the last good and first bad."""
    length = base.original_context
    windows = guard_windows(windows, length)
    allowed = margin * tolerance
    unscaled = methods.none(base)
    low, high = 1.0, max(1.0, highest)
    reference = None
    good = (1.0, None)
    for _ in range(2):
        grid = np.linspace(low, high, steps)
        candidates = [replace(unscaled, attention_factor=float(a), target_context=target) for a in grid]
        scores = evaluator.score(([unscaled] if reference is None else []) + candidates, windows, [length])
        if reference is None:
            if scores[0].failed:  # a worker could not score it (see Score.failed)
                raise RopesearchError(f"the unscaled model could not be scored at {length} tokens for the short "
                                      f"guard: {scores[0].failed}")
            reference, scores = scores[0].ppl[length], scores[1:]
        ppl = [math.inf if s.failed else s.ppl[length] for s in scores]  # a failed one is outside the tolerance
        within = [i for i, p in enumerate(ppl) if p <= reference * (1 + allowed)]
        if not within:
            break
        last = max(within)
        if good[1] is None or grid[last] >= good[0]:
            good = (float(grid[last]), ppl[last])
        if last == len(grid) - 1:
            break
        low, high = grid[last], grid[last + 1]
    cap, capped = good
    if capped is None:  # not even attention 1 (should not happen: it is the unscaled model)
        cap, capped = 1.0, reference
    cap = round(math.floor(cap / ATTENTION_STEP + 1e-9) * ATTENTION_STEP, 10)
    return ShortGuard(tolerance, length, float(reference), cap, float(capped), margin=margin, windows=len(windows))


def guarded_space(space, cap: float):
    """The space with its attention factor kept at or below the cap (a gene of [low, cap], or cap fixed)."""
    if space.attention_factor is None:
        return replace(space, attention_factor=(cap, cap))
    low, high = space.attention_factor
    return replace(space, attention_factor=(min(low, cap), min(high, cap)))
