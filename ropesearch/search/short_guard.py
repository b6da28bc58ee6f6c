"""Never worse than the start: keep the original window within a tolerance of the unscaled model.

transformers switches to `short_factor` at or below the original window but applies the
attention factor at every length, so a found model is the unscaled one there only if
short_factor is all 1 and the attention factor is close to 1 (on the pocket model an attention
factor of 1.17 alone costs 7% at 256 tokens; no short factors undo it). The guard measures, on
the search windows cut to the original window, the largest attention factor that stays within
the tolerance, and the search then keeps short_factor = 1 and the attention factor below it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from ropesearch.data import Window
from ropesearch.errors import RopesearchError
from ropesearch.rope import RopeBase, methods
from ropesearch.search.encoding import ATTENTION_STEP  # the cap lies on the gene's grid, so repair keeps it


@dataclass(frozen=True)
class ShortGuard:
    tolerance: float  # relative perplexity allowed above the unscaled model at the original window
    length: int  # the original window
    unscaled_ppl: float
    attention_cap: float  # the largest attention factor found within the tolerance
    capped_ppl: float  # perplexity at the original window with that attention factor

    def describe(self) -> str:
        return (f"short guard: short_factor = 1 and attention factor <= {self.attention_cap:.3f} keep "
                f"{self.length} tokens within {self.tolerance:.0%} of the unscaled model "
                f"({self.unscaled_ppl:.3f} -> {self.capped_ppl:.3f})")

    def as_dict(self) -> dict:
        return {"tolerance": self.tolerance, "length": self.length, "unscaled_ppl": self.unscaled_ppl,
                "attention_cap": self.attention_cap, "capped_ppl": self.capped_ppl}


def short_windows(windows: list[Window], length: int) -> list[Window]:
    """Plain-perplexity windows of the original length (needle windows lose their needle markers)."""
    return [Window(w.name, w.ids[:length], None) for w in windows]


def measure_guard(evaluator, windows: list[Window], base: RopeBase, target: int, tolerance: float,
                  highest: float, steps: int = 12) -> ShortGuard:
    """The attention cap: a grid over [1, highest], then a finer grid between the last good and first bad."""
    length = base.original_context
    windows = short_windows(windows, length)
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
        within = [i for i, p in enumerate(ppl) if p <= reference * (1 + tolerance)]
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
    return ShortGuard(tolerance, length, float(reference), round(math.floor(cap / ATTENTION_STEP + 1e-9) * ATTENTION_STEP, 10), float(capped))


def guarded_space(space, cap: float):
    """The space with its attention factor kept at or below the cap (a gene of [low, cap], or cap fixed)."""
    if space.attention_factor is None:
        return replace(space, attention_factor=(cap, cap))
    low, high = space.attention_factor
    return replace(space, attention_factor=(min(low, cap), min(high, cap)))
