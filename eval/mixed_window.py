"""Mixed-window fine-tuning per runtime: what each way keeps of the original window, as shipped.

    python eval/mixed_window.py --json results/mixed-window/mixed-window.json --markdown results/mixed-window/README.md

The shipped pocket model (window 256) and the quickstart's found factors (results/demo-quickstart/best.json,
x8: short_factor 1, attention factor 1.033, long factors up to 9.86) are fine-tuned at 2048 tokens on Python
modules outside the built-in corpus. There are five variants: not fine-tuned, fine-tuned without short
windows, and fine-tuned with a share of micro-batches at 256 tokens under one of three RoPEs there
(`mixed_window_rope`): transformers', vLLM's, or both alternating.

Each variant is saved as the pipeline saves a fine-tuned model (config with the factors). It is then scored
on the built-in corpus with `ropesearch eval`, three ways:
- `--method as-is`, i.e. transformers as shipped, at 256 and 2048 tokens. transformers uses short_factor and
  attention_factor at or below 256, and long_factor above.
- At 256 with the long set alone. That is what vLLM serves past 256: long_factor and long_mscale at every
  length. tests_vllm/test_vllm_parity.py::test_below_the_window_vllm_keeps_long_factors_where_transformers_switches
  checks this equality against vLLM.

Every ratio compares with the original model at 256 tokens, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ropesearch.data import BUILTIN_FILES, Document, tokenize_documents  # noqa: E402
from ropesearch.evaluate.runs import environment, save_json  # noqa: E402
from ropesearch.export import load_factors, save_factors  # noqa: E402
from ropesearch.models import load_model, load_tokenizer, resolve_model  # noqa: E402
from ropesearch.pipeline.finetune import MIXED_WINDOW_ROPE, FinetuneConfig, Finetuner  # noqa: E402
from ropesearch.pipeline.stages import save_finetuned  # noqa: E402
from ropesearch.tables import markdown_lines  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# modules of the standard library outside the built-in corpus (ropesearch/data/documents.py)
TRAINING_FILES = ("functools.py", "dataclasses.py", "enum.py", "shutil.py",
                  "threading.py", "pathlib/__init__.py", "logging/__init__.py", "collections/__init__.py",
                  "configparser.py", "zipfile/__init__.py", "ast.py", "pickle.py", "datetime.py", "tokenize.py",
                  "heapq.py", "statistics.py")
# key: (label, mixed_window_rope); None: not fine-tuned, "": fine-tuned without short windows
VARIANTS = {"none": ("not fine-tuned", None), "plain": ("no short windows", ""),
            **{rope: (f"mixed, {rope}", rope) for rope in ("transformers", "vllm", "both")}}


def training_documents() -> list[Document]:
    import sysconfig

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    found = [stdlib / name for name in TRAINING_FILES if (stdlib / name).is_file() and name not in BUILTIN_FILES]
    return [Document(f"python:{p.relative_to(stdlib)}", p.read_text(encoding="utf-8", errors="replace")) for p in found]


def eval_cli(model: str, extra: list[str], lengths: str, samples: int, out: Path) -> dict:
    command = [sys.executable, "-m", "ropesearch.cli", "eval", "--model", model, "--data", "builtin",
               "--lengths", lengths, "--samples", str(samples), "--device", "cpu", "--dtype", "float32",
               *extra, "--json", str(out)]
    subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT)
    return json.loads(out.read_text())


def ppl_of(table: dict) -> dict[str, float]:
    (scores,) = table["ppl"].values()  # one column: the method or the factor file
    return {int(length): value for length, value in scores.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--factors", default=str(ROOT / "results/demo-quickstart/best.json"))
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--mixed-window", type=float, default=0.25)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated variants to run, of {', '.join(VARIANTS)} (default: all)")
    parser.add_argument("--json", required=True)
    parser.add_argument("--markdown", required=True)
    args = parser.parse_args()
    torch.manual_seed(0)
    ref = resolve_model("pocket")
    tokenizer = load_tokenizer(ref)
    factors = load_factors(args.factors)
    n, target = factors.base.original_context, factors.target_context
    documents = tokenize_documents(training_documents(), tokenizer)
    work = Path(tempfile.mkdtemp(prefix="mixed-window-"))
    original = ppl_of(eval_cli("pocket", ["--method", "none"], str(n), args.samples, work / "original.json"))[n]
    print(f"original model at {n}: {original:.4f}")
    rows, report = [], {"original_ppl": original, "variants": {}}
    chosen = [key.strip() for key in args.variants.split(",")]
    unknown = [key for key in chosen if key not in VARIANTS]
    if unknown:
        parser.error(f"--variants: unknown {unknown}; known: {', '.join(VARIANTS)}")
    for key in chosen:
        label, rope = VARIANTS[key]
        folder = work / label.replace(", ", "-").replace(" ", "-")
        model = load_model(ref, dtype=torch.float32, device="cpu")
        started, history, training = time.perf_counter(), [], None
        if rope is not None:
            config = FinetuneConfig(length=target, steps=args.steps, global_batch=4, micro_batch=1, lr=args.lr,
                                    warmup_steps=10, gradient_checkpointing=False, save_every=args.steps,
                                    mixed_window=args.mixed_window if rope else 0.0,
                                    mixed_window_rope=rope or None)
            trainer = Finetuner(model, factors, documents, config, folder, eos_id=tokenizer.eos_token_id,
                                log=lambda message: None)
            history = trainer.run()
            training = {"steps": config.steps, "mixed_window": config.mixed_window, "mixed_window_rope": rope or None}
        seconds = time.perf_counter() - started
        save_finetuned(model, tokenizer, ref, factors, folder, training=training)
        shipped = ppl_of(eval_cli(str(folder / "model"), ["--method", "as-is"], f"{n},{target}", args.samples,
                                  folder / "as-is.json"))
        (as_vllm,) = MIXED_WINDOW_ROPE["vllm"]
        save_factors(as_vllm(factors), folder / "long-set.json")
        served = ppl_of(eval_cli(str(folder / "model"), ["--factors", str(folder / "long-set.json")], str(n),
                                 args.samples, folder / "long-set-eval.json"))[n]
        entry = {"transformers_at_original": shipped[n], "vllm_at_original": served, "at_target": shipped[target],
                 "transformers_vs_original": shipped[n] / original, "vllm_vs_original": served / original,
                 "training": training, "seconds": round(seconds, 1),
                 "final_loss": history[-1]["loss"] if history else None}
        report["variants"][label] = entry
        rows.append([label, f"{shipped[n]:.3f}", f"{shipped[n] / original:.3f}", f"{served:.3f}",
                     f"{served / original:.3f}", f"{shipped[target]:.3f}", f"{seconds:.0f}"])
        print(f"{label}: transformers {shipped[n]:.4f} ({shipped[n] / original:.3f}x) | vLLM {served:.4f} "
              f"({served / original:.3f}x) at {n}; {shipped[target]:.4f} at {target}; {seconds:.0f} s")
    head = ["variant", f"transformers at {n}", "/ original", f"vLLM (long set) at {n}", "/ original",
            f"at {target} (both)", "fine-tune s"]
    report |= {"original_context": n, "target": target, "factors": args.factors, "steps": args.steps,
               "mixed_window": args.mixed_window, "samples": args.samples, "command": " ".join(sys.argv),
               "environment": environment(load_model(ref, device="cpu"))}
    save_json(report, args.json)
    lines = [f"Original model at {n} tokens: {original:.3f} (the ratios' denominator, this run).", "",
             *markdown_lines(head, rows), "", f"Command: `{report['command']}`"]
    Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
    Path(args.markdown).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
