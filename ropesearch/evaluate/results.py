"""What an evaluation returns: per candidate, summed NLL and token counts per length."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

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
