"""How well the cheap screen ranks what the full evaluation would say, and when to stop trusting it.

Every candidate scored both ways (screened, then promoted to a full score) is one point; the
rank correlation over those points tells whether a short-fidelity screen (e.g. 128k tokens
for a 1M-token target) picks the right candidates. Promotion keeps only the screen's best, so
the points cover the top of the screen's ranking: read the figure as "within the promising
candidates", not over the whole population.

The search measures it after every screening generation and acts on it: once `MIN_PAIRS`
points exist and even the 95% upper confidence bound of Spearman's rho is below `MIN_RANK`,
screening stops for the rest of the run and every new candidate is scored in full (a bound, not
the point value: over 8 pairs rho is known to about +-0.4, and judging that early would stop a
screen on noise). From `SETTLED_PAIRS` points on, rho is known to about +-0.2 and the point value
itself must reach `MIN_RANK`: a screen at 0.45 over 200 pairs may not be confidently below 0.5,
but it is not known to rank as well as a screen that stays on should.

Why stop rather than promote more or screen longer: a screen that does not rank throws away the
candidates it should keep, and promoting more of a wrong ranking still loses the ones it ranks
last; a longer screen costs nearly what the full score costs (the fast space screens one of two
windows at half length, so at full length it would save nothing). Full scoring is what the screen approximates, so it is the safe fallback.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

MIN_PAIRS = 8  # points before the screen is judged (two generations of the fast space's promotions)
MIN_RANK = 0.5  # screening stops once the screen's rho is confidently (95%, one-sided) below this
SETTLED_PAIRS = 32  # from this many points on, screening stops once rho itself is below MIN_RANK
CONFIDENCE_Z = 1.645


def rank_correlation(pairs: list[tuple[float, float]]) -> dict:
    """{"pairs": n, "spearman": rho, "kendall": tau} (3 decimals; None below 3 points or without
    variation) over (screen, full) score pairs; non-finite scores (failed candidates) are left out."""
    from scipy.stats import kendalltau, spearmanr

    finite = [(s, f) for s, f in pairs if math.isfinite(s) and math.isfinite(f)]
    result = {"pairs": len(finite), "spearman": None, "kendall": None}
    if len(finite) >= 3 and len({s for s, _ in finite}) > 1 and len({f for _, f in finite}) > 1:
        x, y = zip(*finite)
        # 3 decimals: a rank correlation over a few dozen pairs is not known better than that
        result["spearman"] = round(float(spearmanr(x, y).statistic), 3)
        result["kendall"] = round(float(kendalltau(x, y).statistic), 3)
    return result


def cache_pairs(screen_cache: Mapping[str, float], cache: Mapping[str, list]) -> list[tuple[float, float]]:
    """(screen, first full objective) of every genome a search scored both ways."""
    return [(float(screen_cache[k]), float(cache[k][0])) for k in sorted(set(screen_cache) & set(cache))]


def screen_rank_correlation(history: Iterable[dict]) -> dict:
    """`rank_correlation` over the genomes of a history with a screen and a full score."""
    screened, full = {}, {}
    for record in history:
        if record.get("failed") or "genome" not in record:  # failed: no measurement, its values are inf
            continue
        key = tuple(record["genome"])
        metrics = record.get("metrics", {})
        if record.get("fidelity") == "screen" and metrics.get("screen_ppl") is not None:
            screened[key] = metrics["screen_ppl"]
        elif record.get("fidelity") == "full" and metrics:
            full[key] = next(iter(metrics.values()))
    return rank_correlation([(screened[k], full[k]) for k in sorted(set(screened) & set(full))])


def rank_upper_bound(rho: float, pairs: int) -> float:
    """One-sided 95% upper confidence bound of a Spearman rho over `pairs` points (Fisher's z with
    the Bonett-Wright standard error for Spearman, sqrt(1.06 / (n - 3)))."""
    z = math.atanh(min(max(rho, -0.999), 0.999))
    return math.tanh(z + CONFIDENCE_Z * math.sqrt(1.06 / (pairs - 3)))


def stop_screening(rank: dict) -> str | None:
    """Why screening should stop (a sentence), or None while the screen may still rank well enough:
    once even the upper confidence bound of its rho is below `MIN_RANK`, or, from `SETTLED_PAIRS`
    points on, once rho itself is."""
    rho = rank["spearman"]
    if rank["pairs"] < MIN_PAIRS or rho is None:
        return None
    upper = rank_upper_bound(rho, rank["pairs"])
    agrees = f"the screen's ranking agrees with the full scores at Spearman {rho:.2f} over {rank['pairs']} promoted candidates"
    if upper < MIN_RANK:
        return f"{agrees} (95% upper bound {upper:.2f}, below {MIN_RANK}), so it would keep the wrong ones"
    if rank["pairs"] >= SETTLED_PAIRS and rho < MIN_RANK:
        return (f"{agrees}, below {MIN_RANK} with {SETTLED_PAIRS} or more pairs: it ranks too loosely to choose "
                "which candidates are scored")
    return None
