"""How low can a factor search go? Fit the factors by gradient descent and see where it ends.

The searches explore 32 long factors and the attention factor. This script fits the same
numbers with Adam through the model's backward pass (weights frozen), in log space with no
bounds and no monotonicity: a superset of every search space, with an optimizer that sees the
exact local slope. It is a measuring stick for the search, not part of the product.

    # fit on the two search books (what the search sees), score on the held-out books
    python eval/gradient_bound.py --fit search --init results/search-smollm2-64k/fast-v2/best.json \
        --minutes 4 --data ../shared/data/books --out results/search-smollm2-64k-gradient/fit-search
    # the oracle: fit on the held-out books themselves
    python eval/gradient_bound.py --fit heldout --init results/search-smollm2-64k/fast-v2/best.json \
        --minutes 4 --data ../shared/data/books --out results/search-smollm2-64k-gradient/fit-heldout

The held-out books and the search books are those of `bench_search.py compare`. Every
`--eval-every` steps the current factors are scored on the held-out books by the product's own
evaluator (so the numbers compare with `compare.md`); the run also scores YaRN, the starting
factors and, as the floor of what extension can keep, the unscaled model on the same tokens cut
into windows of its original length. Writes `gradient.json` after every evaluation (a killed run
keeps what it measured) and the fitted factors as `fitted.json`.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_search import SEARCH_DOCS, heldout_books  # noqa: E402  (the same books as its compare)

from ropesearch.data import load_documents, sample_windows, tokenize_documents  # noqa: E402
from ropesearch.data.samples import Window, native_windows  # noqa: E402
from ropesearch.evaluate import make_evaluator  # noqa: E402
from ropesearch.evaluate.loss import trainable_mean_nll  # noqa: E402
from ropesearch.evaluate.runs import environment, save_json  # noqa: E402
from ropesearch.evaluate.torch_backend import fastest_attention  # noqa: E402
from ropesearch.export import load_factors, save_factors  # noqa: E402
from ropesearch.models import load_model, load_tokenizer, resolve_model, rope_base  # noqa: E402
from ropesearch.pipeline.finetune import enable_activation_checkpointing  # noqa: E402
from ropesearch.rope import make_factors, methods  # noqa: E402
from ropesearch.rope.patching import rotary_modules  # noqa: E402
from ropesearch.rope.tables import inv_freq  # noqa: E402
from ropesearch.tables import markdown  # noqa: E402


class DifferentiableRope:
    """Rotary tables computed from trainable log-factors and a log attention factor.

    cos/sin = cos/sin(position · θ_i / λ_i) · attention, λ_i = exp(log_factor_i): the same
    arithmetic as the patched tables (`ropesearch.rope.tables`), but with gradients.
    """

    def __init__(self, model, base, factors):
        self.modules = rotary_modules(model)
        device = self.modules[0].inv_freq.device
        self.original = inv_freq(base, torch.ones(base.n_factors, device=device))
        self.log_factor = torch.tensor(factors.long_factor, dtype=torch.float64, device=device).log().float()
        self.log_factor.requires_grad_(True)
        self.log_attention = torch.tensor(math.log(factors.attention_factor), device=device, requires_grad=True)
        self.install()

    def forward(self, x, position_ids):
        freqs = position_ids.to(x.device).float()[..., None] * (self.original / self.log_factor.exp())
        angles = torch.cat([freqs, freqs], dim=-1)
        scale = self.log_attention.exp()
        return (angles.cos() * scale).to(x.dtype), (angles.sin() * scale).to(x.dtype)

    def install(self) -> None:
        for module in self.modules:
            module.forward = self.forward

    def parameters(self) -> list[torch.Tensor]:
        return [self.log_factor, self.log_attention]

    def factors(self, base, target: int):
        return methods.longrope(base, self.log_factor.detach().exp().double().tolist(), target_context=target,
                                attention_factor=float(self.log_attention.detach().exp()), fitted="gradient")

    def restore(self) -> None:
        for module in self.modules:
            del module.forward


def fit_loss(model, windows: list[Window], device, logits_chunk: int = 4096) -> float:
    """Mean NLL over the windows (token-weighted, as the evaluator's perplexity); backward inside."""
    total_tokens = sum(w.length - 1 for w in windows)
    total = 0.0
    for window in windows:
        ids = torch.from_numpy(window.ids).long().to(device)[None]
        with fastest_attention():
            hidden = model.base_model(input_ids=ids, use_cache=False).last_hidden_state
            loss = trainable_mean_nll(hidden, model.get_output_embeddings(), ids, logits_chunk)
            (loss * (window.length - 1) / total_tokens).backward()
        total += loss.item() * (window.length - 1) / total_tokens
    return total


def sliding_windows(windows: list[Window], length: int, stride: int) -> list[Window]:
    """The same tokens read by a `length`-token window sliding by `stride`: each token scored once,
    with at least `length - stride` tokens of context (all it has, at the start)."""
    if (windows[0].length - length) % stride:
        raise SystemExit(f"--native-stride {stride} must divide {windows[0].length - length}")
    cut = []
    for w in windows:
        for start in range(0, w.length - length + 1, stride):
            scored = np.arange(1 if start == 0 else length - stride, length)
            cut.append(Window(f"{w.name}+{start}", w.ids[start : start + length].copy(), scored))
    return cut


def save_fitted(factors, out: Path, model: str, fit_on: list[str]) -> None:
    """The factors with the lowest fit loss so far, as a factor file (not necessarily monotone)."""
    save_factors(factors, out / "fitted.json", provenance={"model": model, "fit_on": fit_on,
                                                           "objective": "gradient fit, mean NLL"}, monotone=False)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--target", type=int, default=65536)
    parser.add_argument("--fit", choices=["search", "heldout"], default="search",
                        help="documents the factors are fitted on")
    parser.add_argument("--init", default="yarn", help="a factor file, or a method name (yarn, ntk, pi)")
    parser.add_argument("--lr", type=float, default=0.02, help="Adam step on log-factors")
    parser.add_argument("--minutes", type=float, default=4.0, help="fitting time (0: only the baselines)")
    parser.add_argument("--native-stride", type=int, default=1024,
                        help="stride of the unscaled model's sliding window over the held-out tokens")
    parser.add_argument("--max-steps", type=int, default=10_000)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--search-docs", default=SEARCH_DOCS)
    parser.add_argument("--heldout", type=int, default=4, help="longest documents not searched on")
    args = parser.parse_args()

    ref = resolve_model(args.model)
    tokenizer, model = load_tokenizer(ref), load_model(ref)
    device = next(model.parameters()).device
    base = rope_base(model.config)
    scale = args.target / base.original_context
    search_names = args.search_docs.split(",")
    documents = tokenize_documents(load_documents(args.data), tokenizer)
    searched = [d for d in documents if d.name in search_names]
    search_windows = sample_windows(searched, args.target, len(searched))
    heldout = heldout_books(documents, search_names, args.target, args.heldout)
    fit_windows = search_windows if args.fit == "search" else heldout

    start = (make_factors(args.init, base, scale) if args.init in ("pi", "ntk", "yarn")
             else load_factors(args.init, expect=base))
    evaluator = make_evaluator(model, progress=False)
    yarn = make_factors("yarn", base, scale)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    heldout_ppl = lambda factors_list: [s.ppl[args.target] for s in evaluator.score(factors_list, heldout)]  # noqa: E731
    yarn_ppl, start_ppl = heldout_ppl([yarn, start])
    native = evaluator.score([methods.none(base)], native_windows(heldout, base.original_context))[0]
    sliding = evaluator.score([methods.none(base)],
                              sliding_windows(heldout, base.original_context, args.native_stride))[0]
    native_name = f"unscaled, {base.original_context}-token windows"
    sliding_name = f"unscaled, {base.original_context}-token window sliding by {args.native_stride}"
    report = {
        "command": " ".join(["python"] + sys.argv), "fit_on": [w.name for w in fit_windows],
        "heldout": [w.name for w in heldout], "target": args.target, "lr": args.lr, "init": args.init,
        "baselines": {"yarn": yarn_ppl, "init": start_ppl,
                      native_name: native.ppl[base.original_context],
                      sliding_name: sliding.ppl[base.original_context]},
        "trajectory": [], "environment": environment(model),
    }
    print(f"held-out at {args.target}: YaRN {yarn_ppl:.2f}, init {start_ppl:.2f} ({start_ppl / yarn_ppl:.3f} x YaRN); "
          f"unscaled on {base.original_context}-token windows of the same tokens {native.ppl[base.original_context]:.2f}, "
          f"sliding by {args.native_stride} {sliding.ppl[base.original_context]:.2f}")
    if args.minutes <= 0:
        save_json(report, out / "gradient.json")
        return

    enable_activation_checkpointing(model)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    rope = DifferentiableRope(model, base, start)
    optimizer = torch.optim.Adam(rope.parameters(), lr=args.lr, betas=(0.9, 0.99))
    started = time.perf_counter()
    best = (math.inf, None)
    step = 0
    while step < args.max_steps and time.perf_counter() - started < args.minutes * 60:
        model.train()
        optimizer.zero_grad(set_to_none=True)
        loss = fit_loss(model, fit_windows, device)
        if loss < best[0]:
            best = (loss, rope.factors(base, args.target))  # the factors this loss was measured with
        optimizer.step()
        step += 1
        if step % args.eval_every == 0 or step == 1:
            model.eval()
            rope.restore()  # the evaluator installs its own tables
            (ppl,) = heldout_ppl([rope.factors(base, args.target)])
            rope.install()
            entry = {"step": step, "seconds": round(time.perf_counter() - started, 1), "fit_ppl_before_step": math.exp(loss),
                     "heldout_ppl": ppl, "heldout_over_yarn": ppl / yarn_ppl,
                     "attention_factor": float(rope.log_attention.detach().exp())}
            report["trajectory"].append(entry)
            print(f"step {step}  {entry['seconds']:.0f}s  fit {entry['fit_ppl_before_step']:.3f}  held-out {ppl:.3f} "
                  f"({ppl / yarn_ppl:.3f} x YaRN)  attention {entry['attention_factor']:.3f}", flush=True)
            save_json(report, out / "gradient.json")
            save_fitted(best[1], out, args.model, report["fit_on"])  # a killed run keeps its best factors
    rope.restore()
    model.eval()
    fitted = best[1]
    (final,) = heldout_ppl([fitted])
    report["fitted"] = {"fit_ppl": math.exp(best[0]), "heldout_ppl": final, "heldout_over_yarn": final / yarn_ppl,
                        "steps": step, "seconds": round(time.perf_counter() - started, 1),
                        "long_factor": list(fitted.long_factor), "attention_factor": fitted.attention_factor,
                        "monotone": fitted.is_monotone()}
    save_json(report, out / "gradient.json")
    save_fitted(fitted, out, args.model, report["fit_on"])
    scored = [("YaRN", yarn_ppl), (f"init ({args.init})", start_ppl), (f"gradient fit on {args.fit}", final)]
    scored += [(f"{name} (same tokens)", report["baselines"][name]) for name in (native_name, sliding_name)]
    print("\n" + markdown(["factors", "held-out ppl", "/ YaRN"],
                          [[name, f"{value:.2f}", f"{value / yarn_ppl:.3f}"] for name, value in scored]))


if __name__ == "__main__":
    main()
