"""Every RoPE extension method as per-dimension factors: one small pure function each.

Each constructor takes the model's `RopeBase` and the extension ratio `scale` (target
window / original window) and returns a `RopeFactors`. The formulas equal transformers'
`ROPE_INIT_FUNCTIONS` for the same settings (tests/test_rope_methods.py checks them).
`METHODS` is the table of baseline methods: name, constructor, parameters, transformers rope_type;
the CLI's choices and options, the seed check and `--method as-is` all derive from it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ropesearch.errors import RopesearchError
from ropesearch.rope.factors import RopeBase, RopeFactors, dynamic_ntk_factors
from ropesearch.units import MAX_SCALE


def target_for(base: RopeBase, scale: float) -> int:
    if not (math.isfinite(scale) and scale >= 1):
        raise RopesearchError(f"scale must be a number >= 1, got {scale}")
    return int(round(base.original_context * scale))


def _same_everywhere(base, factors, scale, method, attention_factor=1.0, **params) -> RopeFactors:
    factors = tuple(float(f) for f in factors)
    return RopeFactors(
        base=base,
        long_factor=factors,
        short_factor=factors,
        target_context=target_for(base, scale),
        attention_factor=float(attention_factor),
        method=method,
        params={"scale": scale, **params},
    )


def none(base: RopeBase, scale: float = 1.0) -> RopeFactors:
    """The original RoPE, unscaled (what the model does past its window without help)."""
    return _same_everywhere(base, np.ones(base.n_factors), scale, "none")


def pi(base: RopeBase, scale: float) -> RopeFactors:
    """Position interpolation: every frequency divided by s."""
    return _same_everywhere(base, np.full(base.n_factors, float(scale)), scale, "pi")


def ntk(base: RopeBase, scale: float) -> RopeFactors:
    """Static NTK-aware scaling: rope_theta multiplied by s^(d/(d-2)), so λ_i = s^(2i/(d-2))."""
    return _same_everywhere(base, dynamic_ntk_factors(base, 1.0, target_for(base, scale)), scale, "ntk")


def dynamic_ntk(base: RopeBase, scale: float) -> RopeFactors:
    """Dynamic NTK (transformers' "dynamic"): NTK with a ratio that grows with the sequence length."""
    target = target_for(base, scale)
    factors = tuple(dynamic_ntk_factors(base, scale, target))
    return RopeFactors(
        base=base,
        long_factor=factors,
        short_factor=factors,
        target_context=target,
        method="dynamic-ntk",
        params={"scale": scale},
        dynamic_factor=float(scale),
    )


def yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    """YaRN's attention temperature: 0.1·mscale·ln(s) + 1 (1 when s <= 1)."""
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def yarn(
    base: RopeBase,
    scale: float,
    beta_fast: float = 32.0,
    beta_slow: float = 1.0,
    mscale: float | None = None,
    mscale_all_dim: float | None = None,
    attention_factor: float | None = None,
    truncate: bool = True,
) -> RopeFactors:
    """YaRN: interpolate the slow dimensions by s, keep the fast ones, ramp in between."""
    d, theta, original = base.rotary_dim, base.rope_theta, base.original_context

    def correction_dim(rotations: float) -> float:
        # the dimension whose wavelength makes `rotations` turns over the original window
        wavelength = original / (rotations * 2 * math.pi) if rotations > 0 else math.nan
        if not (math.isfinite(wavelength) and wavelength > 0):  # 1e308 turns: a wavelength of 0
            raise RopesearchError(f"YaRN beta_fast/beta_slow {rotations:g} is out of range: give a number of "
                                  "rotations > 0 (YaRN's defaults: 32 and 1)")
        return d * math.log(wavelength) / (2 * math.log(theta))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, d - 1)
    if low == high:
        high += 0.001  # as transformers: avoid a zero-width ramp
    ramp = np.clip((np.arange(base.n_factors, dtype=np.float64) - low) / (high - low), 0.0, 1.0)
    # transformers mixes θ/s (weight ramp) and θ (weight 1 - ramp); as a factor that is:
    factors = 1.0 / (ramp / scale + (1.0 - ramp))
    if attention_factor is None:
        if mscale and mscale_all_dim:
            attention_factor = yarn_mscale(scale, mscale) / yarn_mscale(scale, mscale_all_dim)
        else:
            attention_factor = yarn_mscale(scale)
    params = {"beta_fast": beta_fast, "beta_slow": beta_slow, "truncate": truncate}
    params.update({k: v for k, v in (("mscale", mscale), ("mscale_all_dim", mscale_all_dim)) if v is not None})
    return _same_everywhere(base, factors, scale, "yarn", attention_factor, **params)


def llama3(base: RopeBase, scale: float, low_freq_factor: float = 1.0, high_freq_factor: float = 4.0) -> RopeFactors:
    """Llama 3.1: slow dimensions by s, fast ones kept, a smooth blend between the two wavelengths."""
    original = base.original_context
    wavelen = base.wavelengths()
    smooth = (original / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    blended = 1.0 / ((1 - smooth) / scale + smooth)
    factors = np.where(wavelen > original / low_freq_factor, float(scale), blended)
    factors = np.where(wavelen < original / high_freq_factor, 1.0, factors)
    return _same_everywhere(
        base, factors, scale, "llama3", low_freq_factor=low_freq_factor, high_freq_factor=high_freq_factor
    )


def longrope_mscale(scale: float, original_context: int) -> float:
    """LongRoPE's attention factor: sqrt(1 + ln(s) / ln(L_original)), 1 when s <= 1."""
    return 1.0 if scale <= 1 else math.sqrt(1 + math.log(scale) / math.log(original_context))


def longrope(
    base: RopeBase,
    long_factor: Sequence[float],
    short_factor: Sequence[float] | None = None,
    *,
    scale: float | None = None,
    target_context: int | None = None,
    attention_factor: float | None = None,
    start_tokens: int = 0,
    **params,
) -> RopeFactors:
    """LongRoPE from given factors. Without short factors, the long ones serve every length."""
    if (scale is None) == (target_context is None):
        raise RopesearchError("longrope() needs exactly one of scale or target_context")
    target = target_for(base, scale) if target_context is None else int(target_context)
    ratio = target / base.original_context
    return RopeFactors(
        base=base,
        long_factor=tuple(long_factor),
        short_factor=tuple(long_factor if short_factor is None else short_factor),
        target_context=target,
        attention_factor=longrope_mscale(ratio, base.original_context) if attention_factor is None else attention_factor,
        start_tokens=start_tokens,
        method="longrope",
        params=params,
    )


def critical_dimension(base: RopeBase) -> int:
    """LongRoPE2's theoretical critical dimension d_tcd = 2·ceil(d/2 · log_θ(L/2π)).

    Dimension pairs from d_tcd/2 on have wavelengths longer than the original window: they
    never completed a turn in training. Returned as a count of rotary dims (even); the first
    factor index at or beyond it is d_tcd // 2.
    """
    d, original = base.rotary_dim, base.original_context
    value = 2 * math.ceil(d / 2 * math.log(original / (2 * math.pi)) / math.log(base.rope_theta))
    return int(min(max(value, 0), d))


def unturned(base: RopeBase, reference: RopeFactors | None = None) -> np.ndarray:
    """Which dimension pairs never completed a turn in the window the model was trained at: the
    original window, or, for a model fine-tuned with `reference` factors, its target with those
    factors applied. Angles past the ones such a pair saw in training are out of distribution, so
    beyond `in_range_length` the model reads positions it was never shown (LongRoPE2's argument
    for factors >= s past the critical dimension)."""
    if reference is None:
        return base.original_context * base.inv_freq() < 2 * math.pi
    return reference.target_context * base.inv_freq() / np.asarray(reference.long_factor) < 2 * math.pi


def in_range_length(factors: RopeFactors, reference: RopeFactors | None = None) -> float:
    """The longest sequence over which every unturned pair (see `unturned`) stays inside the angles
    it saw in training under `factors`' long factors (inf when none is unturned); longer windows
    show the model angles it never saw. `reference`: the factors the model was fine-tuned with."""
    base = factors.base
    mask = unturned(base, reference)
    window = base.original_context if reference is None else reference.target_context
    ratio = np.asarray(factors.long_factor) / (1.0 if reference is None else np.asarray(reference.long_factor))
    return float(np.min(window * ratio[mask])) if mask.any() else math.inf


@dataclass(frozen=True)
class Param:
    """One tunable of a method: its keyword, the values it accepts and a line of help.

    `kind` is "positive" (a number > 0), "non-negative" (>= 0) or "flag" (true/false); the CLI
    builds one option per name from these (`--beta-fast`), shared by the methods that take it.
    """

    name: str
    help: str
    kind: str = "positive"


@dataclass(frozen=True)
class Method:
    """A baseline RoPE method: the one table every other module derives what it knows from.

    build(base, scale, **params) -> RopeFactors; `spoken` names it in sentences and plots;
    `rope_type` is the transformers rope_type it reads back as (`eval --method as-is`), with the
    `params` that transformers stores under the same names; `seeds` says whether its factors may
    start a search's population (a dynamic method has no single set of factors to start from).
    """

    name: str
    build: Callable[..., RopeFactors]
    spoken: str
    params: tuple[Param, ...] = ()
    rope_type: str | None = None
    seeds: bool = True


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("none", none, "the unscaled model"),
    Method("pi", pi, "PI", rope_type="linear"),
    Method("ntk", ntk, "NTK"),
    Method("dynamic-ntk", dynamic_ntk, "dynamic NTK", rope_type="dynamic", seeds=False),
    Method("yarn", yarn, "YaRN", rope_type="yarn", params=(
        Param("beta_fast", "rotations above which dims are kept (default 32)"),
        Param("beta_slow", "rotations below which dims are interpolated (default 1)"),
        Param("mscale", "mscale (with --mscale-all-dim)"),
        Param("mscale_all_dim", "mscale_all_dim", "non-negative"),
        Param("attention_factor", "attention factor, also for longrope (default: the method's)"),
        Param("truncate", "round the ramp's ends to whole dims as transformers does (default on)", "flag"),
    )),
    Method("llama3", llama3, "Llama 3", rope_type="llama3", params=(
        Param("low_freq_factor", "low_freq_factor (default 1)"),
        Param("high_freq_factor", "high_freq_factor (default 4)"),
    )),
)}


def method_params() -> dict[str, tuple[Param, list[str]]]:
    """Every parameter any method takes, with the methods that take it (for one CLI option each)."""
    table: dict[str, tuple[Param, list[str]]] = {}
    for method in METHODS.values():
        for param in method.params:
            table.setdefault(param.name, (param, []))[1].append(method.name)
    return table


def make_factors(method: str, base: RopeBase, scale: float, **params) -> RopeFactors:
    """A baseline method by name (see METHODS); unknown names and parameters are clear errors."""
    if method not in METHODS:
        raise RopesearchError(f"unknown method {method!r}: choose one of {', '.join(METHODS)}")
    known = [p.name for p in METHODS[method].params]
    foreign = sorted(set(params) - set(known))
    if foreign:
        raise RopesearchError(f"method {method!r} takes no parameter {foreign[0]!r} "
                              f"({'its parameters: ' + ', '.join(known) if known else 'it takes none'})")
    if not 0 < scale <= MAX_SCALE:  # also nan
        raise RopesearchError(f"scale {scale:g} for method {method!r} is out of range: give at most {MAX_SCALE}")
    try:
        return METHODS[method].build(base, scale, **params)
    except TypeError as exc:
        raise RopesearchError(f"bad parameters for method {method!r}: {exc}") from None
