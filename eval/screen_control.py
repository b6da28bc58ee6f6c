"""Is the screen's ranking what makes a screened search better, or only its smaller full budget per generation?

    python eval/screen_control.py VARIANT --json OUT.json      # VARIANT: shipped, random, none

The pocket demo's search (target 2048, space fast, 2 windows, short guard, 288 full evaluations,
seed 0; the search's own judgement of the screen is disabled) with the fast space's screen as shipped (one window at half length, the better half
promoted), with a screen that promotes a seeded random half instead (the same number of full
scores per generation, no ranking), or with no screen (every offspring scored in full). Prints
and writes the best perplexity at 2048 on the search windows, YaRN's, and the evaluator seconds.
"""

import argparse
import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ropesearch.evaluate.runs import environment, save_json  # noqa: E402
from ropesearch.models import load_model, load_tokenizer, resolve_model  # noqa: E402
from ropesearch.search import load_space, objectives, screening  # noqa: E402
from ropesearch.search.session import SearchConfig, run_search  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variant", choices=["shipped", "random", "none"])
    parser.add_argument("--max-evals", type=int, default=288)
    parser.add_argument("--json", required=True)
    args = parser.parse_args()
    space = load_space("fast")
    screening.MIN_PAIRS = 10**9  # the screen stays on whatever it ranks: this measures the screen itself
    if args.variant == "none":
        space = replace(space, fidelity=replace(space.fidelity, screen_samples=None))
    if args.variant == "random":
        rng = np.random.default_rng(0)

        def random_screen(self, candidates):  # no ranking at all: a seeded random order
            return rng.random(len(candidates)), [0.0] * len(candidates), [{} for _ in candidates]
        objectives.Objective.screen = random_screen
    ref = resolve_model("pocket")
    model, tokenizer = load_model(ref, device="cpu"), load_tokenizer(ref)
    result = run_search(SearchConfig("pocket", "builtin", 2048, space=space, samples=2, max_evals=args.max_evals,
                                     time_minutes=60),
                        tempfile.mkdtemp(), loaded=(model, tokenizer), log=print)
    state = result.state
    report = {"variant": args.variant, "best": result.values[0], "yarn": state.baselines["yarn"],
              "versus_yarn": round(result.values[0] / state.baselines["yarn"], 4), "full_evals": state.full_evals,
              "screen_evals": state.screen_evals, "generations": state.generation,
              "evaluator_seconds": round(state.evaluator_seconds, 1), "screen_off": state.screen_off,
              "progress": [{k: p[k] for k in ("generation", "full_evals", "evaluator_seconds", "best")}
                           for p in state.progress],
              "command": " ".join(sys.argv), "environment": environment(model)}
    print(f"{args.variant}: best {report['best']:.4f} = {report['versus_yarn']:.3f}x YaRN after "
          f"{state.full_evals} full + {state.screen_evals} screens, {state.generation} generations, "
          f"{report['evaluator_seconds']:.0f} evaluator s")
    save_json(report, args.json)


if __name__ == "__main__":
    main()
