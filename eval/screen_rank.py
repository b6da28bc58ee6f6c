"""Does a search's screen rank its candidates? Measured over the whole range, not only the top.

    python eval/screen_rank.py RUN --audit 64 --json results/screen-rank/pocket-fast.json

A search promotes only the screen's best candidates to a full score, so the pairs it sees
(screen, full) cover the top of the screen's ranking. This script scores a seeded sample of the
candidates the screen turned away in full too, on the run's own windows, and reports in one run:
- Spearman's rho over the promoted pairs (what the search measures as it goes);
- rho over promoted and turned-away candidates together (the screen's ranking over its range);
- whether the screen's choice beats a random one: the median full score of the promoted against
  the turned-away, and how many of the best half by full score the screen had promoted.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ropesearch.evaluate import make_evaluator  # noqa: E402
from ropesearch.evaluate.runs import environment, save_json  # noqa: E402
from ropesearch.models import load_model, load_tokenizer, resolve_model, rope_base  # noqa: E402
from ropesearch.models.loading import config_of  # noqa: E402
from ropesearch.rope import methods  # noqa: E402
from ropesearch.search.screening import rank_correlation  # noqa: E402
from ropesearch.search.session import search_windows  # noqa: E402


def candidates_of(run: Path) -> tuple[dict, dict]:
    """{genome: (screen, record)} and {genome: full score} from the run's history."""
    screened, full = {}, {}
    for line in (run / "history.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record.get("failed"):
            continue
        key = json.dumps(record["genome"])
        if record["fidelity"] == "screen":
            screened[key] = (record["metrics"]["screen_ppl"], record)
        else:
            full[key] = next(iter(record["metrics"].values()))
    return screened, full


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a search run directory (with screening)")
    parser.add_argument("--audit", type=int, default=64, help="turned-away candidates to score in full")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", required=True)
    args = parser.parse_args()

    config = json.loads((args.run / "config.json").read_text())
    target = config["target_length"]
    ref = resolve_model(config["model"])
    model, tokenizer = load_model(ref), load_tokenizer(ref)
    base = rope_base(config_of(model))
    windows = search_windows(tokenizer, config["data"], target, config["samples"], config["seed"],
                             config["objective"] == "needle", pack=bool(config.get("pack")))
    screened, full = candidates_of(args.run)
    promoted = sorted(k for k in screened if k in full)
    away = sorted(k for k in screened if k not in full)
    rng = np.random.default_rng(args.seed)
    audited = [away[i] for i in sorted(rng.choice(len(away), size=min(args.audit, len(away)), replace=False))]
    sets = [methods.longrope(base, screened[k][1]["long_factor"], scale=target / base.original_context,
                             attention_factor=screened[k][1]["attention_factor"],
                             start_tokens=screened[k][1]["start_tokens"]) for k in audited]
    evaluator = make_evaluator(model, max_length=target, progress=False)
    started = time.perf_counter()
    scores = evaluator.score(sets, windows, [target])
    seconds = time.perf_counter() - started
    audit_full = {k: s.ppl[target] for k, s in zip(audited, scores)}

    on_promoted = rank_correlation([(screened[k][0], full[k]) for k in promoted])
    everything = {k: full[k] for k in promoted} | audit_full
    on_all = rank_correlation([(screened[k][0], everything[k]) for k in everything])
    by_full = sorted(everything, key=everything.get)
    best_half = set(by_full[: len(by_full) // 2])
    # of the best half by full score, the share the screen promoted, against the promoted share
    # among all the scored (what a random choice of the same size would get)
    share_promoted = len(promoted) / len(everything)
    hit = len(best_half & set(promoted)) / len(best_half)
    report = {
        "run": str(args.run), "target": target, "model": config["model"], "data": config["data"],
        "screen": config["space"]["fidelity"], "promoted": len(promoted), "turned_away": len(away),
        "audited": len(audited), "audit_seconds": round(seconds, 1),
        "rank_promoted": on_promoted, "rank_all": on_all,
        "median_full_promoted": float(np.median([full[k] for k in promoted])),
        "median_full_turned_away": float(np.median(list(audit_full.values()))),
        "best_half_promoted": round(hit, 3), "random_choice_would_get": round(share_promoted, 3),
        "command": " ".join(sys.argv), "environment": environment(model),
    }
    rows = [("pairs the search sees (promoted)", on_promoted),
            ("promoted + audited turned-away", on_all)]
    print(f"screen {report['screen']} of {args.run} at {target} tokens")
    print(f"{'pairs':<34} {'n':>4} {'spearman':>9} {'kendall':>8}")
    for label, rank in rows:
        print(f"{label:<34} {rank['pairs']:>4} {rank['spearman']!s:>9} {rank['kendall']!s:>8}")
    print(f"median full ppl: promoted {report['median_full_promoted']:.3f}, turned away "
          f"{report['median_full_turned_away']:.3f}; of the best half by full score the screen promoted "
          f"{hit:.0%} (a random choice: {share_promoted:.0%})")
    save_json(report, args.json)


if __name__ == "__main__":
    main()
