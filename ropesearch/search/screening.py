"""How well the cheap screen ranks what the full evaluation would say.

Every candidate scored both ways (screened, then promoted to a full score) is one point; the
rank correlation over those points tells whether a short-fidelity screen (e.g. 128k tokens
for a 1M-token target) picks the right candidates. Promotion keeps only the screen's best, so
the points cover the top of the screen's ranking: read the figure as "within the promising
candidates", not over the whole population.
"""

from __future__ import annotations

from collections.abc import Iterable


def screen_rank_correlation(history: Iterable[dict]) -> dict:
    """{"pairs": n, "spearman": rho, "kendall": tau} (rounded to 3 decimals) over genomes with a screen and
    a full score."""
    from scipy.stats import kendalltau, spearmanr

    screened, full = {}, {}
    for record in history:
        if record.get("failed") or "genome" not in record:  # failed: no measurement, its values are inf
            continue
        key = tuple(record["genome"])
        metrics = record.get("metrics", {})
        if record.get("failed"):  # no score to rank
            continue
        if record.get("fidelity") == "screen" and metrics.get("screen_ppl") is not None:
            screened[key] = metrics["screen_ppl"]
        elif record.get("fidelity") == "full" and metrics:
            full[key] = next(iter(metrics.values()))
    both = sorted(set(screened) & set(full))
    result = {"pairs": len(both), "spearman": None, "kendall": None}
    if len(both) >= 3:
        x, y = [screened[k] for k in both], [full[k] for k in both]
        # 3 decimals: a rank correlation over a few dozen pairs is not known better than that
        result["spearman"] = round(float(spearmanr(x, y).statistic), 3)
        result["kendall"] = round(float(kendalltau(x, y).statistic), 3)
    return result
