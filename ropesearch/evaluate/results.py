"""What an evaluation returns (per candidate, summed NLL and token counts per length), and the
contract every evaluator keeps (`Evaluator`: the torch and vLLM backends and the Ray worker pool)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from ropesearch.errors import RopesearchError

from ropesearch.rope.factors import RopeFactors


@dataclass
class Score:
    """One candidate's result. Perplexity at a length = exp(total NLL / total scored tokens)."""

    factors: RopeFactors
    nll_sum: dict[int, float] = field(default_factory=dict)
    tokens: dict[int, int] = field(default_factory=dict)
    window_nll: dict[int, list[float]] = field(default_factory=dict)  # mean NLL of each window
    seconds: float = 0.0
    worker: str | None = None  # which worker scored it (distributed evaluation), host:pid
    failed: str | None = None  # why it could not be scored (the workers' deterministic failure); no metrics then

    def add(self, length: int, nll_sum: float, tokens: int) -> None:
        self.nll_sum[length] = self.nll_sum.get(length, 0.0) + nll_sum
        self.tokens[length] = self.tokens.get(length, 0) + tokens
        self.window_nll.setdefault(length, []).append(nll_sum / tokens)

    @property
    def nll(self) -> dict[int, float]:
        return {length: self.nll_sum[length] / self.tokens[length] for length in sorted(self.nll_sum)}

    @property
    def ppl(self) -> dict[int, float]:
        return {length: math.exp(value) for length, value in self.nll.items()}

    def to_dict(self) -> dict:
        return {
            "method": self.factors.method,
            "target_context": self.factors.target_context,
            "ppl": {str(k): v for k, v in self.ppl.items()},
            "nll": {str(k): v for k, v in self.nll.items()},
            "tokens": {str(k): v for k, v in self.tokens.items()},
            "window_nll": {str(k): v for k, v in self.window_nll.items()},
            "seconds": self.seconds,
        }


@runtime_checkable
class Evaluator(Protocol):
    """What scores candidates: TorchEvaluator, VllmEvaluator and WorkerPool alike."""

    def score(self, candidates: Sequence[RopeFactors], windows: Sequence, lengths: Sequence[int] | None = None
              ) -> list[Score]:
        """One Score per candidate, in order: its NLL at every length of `lengths` (prefixes of the
        windows; default the window length). Windows of one call share their length."""
        ...

    def close(self) -> None:
        """Free what the evaluator holds (workers, an engine); a closed evaluator scores no more."""
        ...


def checked_lengths(candidates: Sequence, windows: Sequence, lengths: Sequence[int] | None,
                    longest: int | None = None) -> list[int]:
    """The request every evaluator refuses alike, checked; returns the lengths sorted. `longest`:
    the most tokens a window may have on this evaluator (a vLLM engine's)."""
    if not candidates or not windows:
        raise RopesearchError("nothing to score: give at least one candidate and one window")
    window_length = windows[0].length
    if any(w.length != window_length for w in windows):
        raise RopesearchError("all windows of one evaluation must have the same length")
    lengths = sorted(set(lengths or [window_length]))
    if lengths[-1] > window_length or lengths[0] < 2:
        raise RopesearchError(f"lengths must lie in [2, {window_length}] (the window length), got {lengths}")
    if longest is not None and window_length > longest:
        raise RopesearchError(f"windows of {window_length} tokens are longer than the {longest} this evaluator "
                              "was built for")
    if windows[0].scored is not None and lengths != [window_length]:
        raise RopesearchError("needle windows are scored at their full length only")
    return lengths
