"""The whole RoPE setting of a model as plain numbers.

`RopeBase` is what a pretrained model brings (base, rotary dims, trained window);
`RopeFactors` is one complete rescaling of it: per-dimension factors λ_i for the long and
the short regime, the attention factor, the start tokens n̂ and the target window.
Dimension i (0 <= i < rotary_dim/2) rotates with inverse frequency
    θ_i = 1 / (λ_i · rope_theta^(2i/d)),
so λ_i = 1 is the original RoPE and λ_i = s is position interpolation by s.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ropesearch.errors import RopesearchError
from ropesearch.units import MAX_TOKENS

MAX_FACTOR = float(1 << 16)  # a rescale factor: LongRoPE's reach at the largest scale is 1.25 x 1024
MAX_ATTENTION_FACTOR = 16.0  # logits x 256; YaRN at scale 1024 is 1.69


@dataclass(frozen=True)
class RopeBase:
    """The pretrained RoPE of a model, the starting point of every rescaling."""

    rope_theta: float
    rotary_dim: int  # rotated dims per head: head_dim * partial_rotary_factor
    original_context: int  # the window the model was trained at

    def __post_init__(self):
        if not (math.isfinite(self.rope_theta) and self.rope_theta > 1):
            raise RopesearchError(f"rope_theta must be a finite number > 1, got {self.rope_theta}")
        if self.rotary_dim < 2 or self.rotary_dim % 2:
            raise RopesearchError(f"rotary_dim must be an even number >= 2, got {self.rotary_dim}")
        if not 1 <= self.original_context <= MAX_TOKENS:
            raise RopesearchError(f"original_context must be between 1 and {MAX_TOKENS} tokens, got "
                                  f"{self.original_context}")

    @property
    def n_factors(self) -> int:
        return self.rotary_dim // 2

    def exponents(self) -> np.ndarray:
        """2i/d for every rotary dimension pair i."""
        return np.arange(0, self.rotary_dim, 2, dtype=np.float64) / self.rotary_dim

    def inv_freq(self) -> np.ndarray:
        """Unscaled inverse frequencies θ_i = rope_theta^(-2i/d), float64."""
        return 1.0 / self.rope_theta ** self.exponents()

    def wavelengths(self) -> np.ndarray:
        """Tokens per full turn of each dimension pair, unscaled."""
        return 2 * math.pi / self.inv_freq()


def _as_factor_tuple(name: str, values: Sequence[float], n: int) -> tuple[float, ...]:
    values = tuple(float(v) for v in values)
    if len(values) != n:
        raise RopesearchError(f"{name} has {len(values)} values but this model needs {n} (one per rotary dim pair)")
    for i, v in enumerate(values):
        if not 0 < v <= MAX_FACTOR:
            raise RopesearchError(f"{name}[{i}] is {v}: factors must be > 0 and at most {MAX_FACTOR:g}")
    return values


@dataclass(frozen=True)
class RopeFactors:
    """One complete rescaled RoPE setting.

    `long_factor` is used above the original window and `short_factor` at or below it,
    as transformers' longrope does. Baseline methods use the same factors at every length.
    `dynamic_factor`, when set, marks dynamic NTK: the long factors are recomputed from the
    sequence length at run time with this factor (the stored ones are those at the target).
    """

    base: RopeBase
    long_factor: tuple[float, ...]
    short_factor: tuple[float, ...]
    target_context: int
    attention_factor: float = 1.0
    start_tokens: int = 0
    method: str = "longrope"
    params: Mapping[str, object] = field(default_factory=dict)
    dynamic_factor: float | None = None

    def __post_init__(self):
        n = self.base.n_factors
        object.__setattr__(self, "long_factor", _as_factor_tuple("long_factor", self.long_factor, n))
        object.__setattr__(self, "short_factor", _as_factor_tuple("short_factor", self.short_factor, n))
        object.__setattr__(self, "params", dict(self.params))
        if not 0 < self.attention_factor <= MAX_ATTENTION_FACTOR:
            raise RopesearchError(f"attention_factor must be > 0 and at most {MAX_ATTENTION_FACTOR:g}, got "
                                  f"{self.attention_factor}")
        if int(self.start_tokens) != self.start_tokens or self.start_tokens < 0:
            raise RopesearchError(f"start_tokens must be a whole number >= 0, got {self.start_tokens}")
        if int(self.target_context) != self.target_context or not 1 <= self.target_context <= MAX_TOKENS:
            raise RopesearchError(f"target_context must be a whole number of tokens between 1 and {MAX_TOKENS}, "
                                  f"got {self.target_context}")
        if self.dynamic_factor is not None and not (math.isfinite(self.dynamic_factor) and self.dynamic_factor >= 1):
            raise RopesearchError(f"dynamic_factor must be >= 1, got {self.dynamic_factor}")

    @property
    def scale(self) -> float:
        """Extension ratio s = target / original window."""
        return self.target_context / self.base.original_context

    @property
    def same_at_all_lengths(self) -> bool:
        return self.long_factor == self.short_factor and self.dynamic_factor is None

    def factors_for_length(self, seq_len: int) -> np.ndarray:
        """The factors a forward pass over `seq_len` positions uses (the longrope switch, dynamic NTK)."""
        if self.dynamic_factor is not None:
            return dynamic_ntk_factors(self.base, self.dynamic_factor, seq_len)
        if seq_len > self.base.original_context:
            return np.asarray(self.long_factor)
        return np.asarray(self.short_factor)

    def is_monotone(self) -> bool:
        """Whether long_factor never decreases from high to low frequency."""
        return bool(np.all(np.diff(self.long_factor) >= 0))


def dynamic_ntk_factors(base: RopeBase, factor: float, seq_len: int) -> np.ndarray:
    """transformers' dynamic NTK as factors: base' = base·r^(d/(d-2)), r = max(f·T/L - (f-1), 1).

    Then θ'_i = θ_i / r^(2i/(d-2)), so λ_i = r^(2i/(d-2)).
    """
    d = base.rotary_dim
    ratio = max(factor * seq_len / base.original_context - (factor - 1), 1.0)
    return ratio ** (np.arange(0, d, 2, dtype=np.float64) / (d - 2))
