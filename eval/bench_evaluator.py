"""Benchmark of the torch evaluator against transformers' plain path, batching, and the baseline table.

    python eval/bench_evaluator.py --model smollm2-135m --data ../shared/data/books \
        --json results/bench-evaluator.json --markdown results/bench-evaluator.md

(a) one window at each length: our evaluator (per-row RoPE patch, chunked loss, fastest SDPA
    kernel) against `model(input_ids, labels=input_ids)` with transformers' default attention:
    tokens/s, achieved TFLOP/s (causal attention counted), peak memory, and perplexity agreement;
(b) candidates/s at short lengths, all in batched passes against one at a time;
(c) none / PI / NTK / YaRN perplexity by length on the longest documents.
Every ratio compares two things measured in this one run.

For a model whose vocabulary makes the plain path's logits too big at long lengths (Qwen2.5's 151k:
about 39 GB of bf16 logits at 128k), `--plain-max` runs it only up to that length; `--pack` builds
the window from several documents (EOS between them) for lengths no document reaches, and
`--parts a` measures only (a), the seconds and peak memory of one candidate's window by length:

    python eval/bench_evaluator.py --model qwen2.5-coder-0.5b --data ../shared/data/books --pack \
        --lengths 32768,65536,131072,262144,524288 --plain-max 65536 --parts a --repeats 1 \
        --json results/qwen2.5-coder-0.5b/bench-evaluator.json --markdown results/qwen2.5-coder-0.5b/bench-evaluator.md
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ropesearch.data import Window, load_documents, sample_windows, tokenize_documents  # noqa: E402
from ropesearch.data.packing import pack_windows  # noqa: E402
from ropesearch.evaluate import TorchEvaluator  # noqa: E402
from ropesearch.evaluate.baselines import baseline_table, format_table  # noqa: E402
from ropesearch.evaluate.runs import environment, save_json  # noqa: E402
from ropesearch.evaluate.runs import EvalSetup  # noqa: E402
from ropesearch.models import load_model, load_tokenizer, resolve_model, rope_base  # noqa: E402
from ropesearch.rope import longrope, methods  # noqa: E402
from ropesearch.rope.patching import patch_rope  # noqa: E402
from ropesearch.tables import markdown_lines  # noqa: E402


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def reset_peak():
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib() -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


def forward_flops(config, tokens: int, layers: int | None = None) -> float:
    """Matmul FLOPs of one forward pass over `tokens` (projections, MLP, LM head, causal attention),
    through the first `layers` decoder layers (default: all)."""
    hidden, layers = config.hidden_size, layers or config.num_hidden_layers
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    per_layer = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2 + 3 * hidden * config.intermediate_size
    linear = 2 * tokens * (layers * per_layer + hidden * config.vocab_size)
    attention = layers * 2 * 2 * heads * head_dim * tokens * tokens / 2  # QK^T and AV, causal half
    return linear + attention


def timed(function, repeats: int):
    function()  # warm-up (kernel selection, allocator)
    sync()
    reset_peak()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        value = function()
        sync()
        times.append(time.perf_counter() - started)
    return min(times), peak_gib(), value


def attention_kernel() -> str:
    """Which SDPA backend serves a causal GQA call of this model's shape, in our priority order."""
    if not torch.cuda.is_available():
        return "cpu (math/flash CPU kernels)"
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q = torch.randn(1, 9, 4096, 64, device="cuda", dtype=torch.bfloat16)
    for backend in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):
        try:
            with sdpa_kernel([backend]):
                torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)
            return backend.name
        except RuntimeError:
            continue
    return "MATH"


def part_a(model, base, windows, lengths, repeats, plain_max=None):
    evaluator = TorchEvaluator(model, progress=False)
    none = methods.none(base)
    rows = []
    for length in lengths:
        window = [Window(windows[0].name, windows[0].ids[:length])]
        ids = torch.from_numpy(window[0].ids).long()[None].to(model.device)
        flops = forward_flops(model.config, length)
        ours_s, ours_peak, ours_score = timed(lambda: evaluator.score([none], window)[0], repeats)
        row = {"length": length, "ours_s": ours_s, "ours_tokens_per_s": length / ours_s,
               "ours_tflops": flops / ours_s / 1e12, "ours_peak_gib": ours_peak, "ours_ppl": ours_score.ppl[length]}

        def plain():
            with torch.no_grad():
                return math.exp(model(input_ids=ids, labels=ids).loss.float().item())

        if plain_max is not None and length > plain_max:
            row.update(hf_s=None, hf_error=f"not run above --plain-max {plain_max}")
        else:
            try:
                hf_s, hf_peak, hf_ppl = timed(plain, repeats)
                row.update(hf_s=hf_s, hf_tokens_per_s=length / hf_s, hf_tflops=flops / hf_s / 1e12, hf_peak_gib=hf_peak,
                           hf_ppl=hf_ppl, speedup=hf_s / ours_s,
                           memory_ratio=(ours_peak / hf_peak) if hf_peak else None,
                           ppl_rel_diff=abs(ours_score.ppl[length] / hf_ppl - 1))
            except torch.cuda.OutOfMemoryError:
                row.update(hf_s=None, hf_error="out of memory")
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
        rows.append(row)
        print(f"(a) {length}: ours {length / ours_s:,.0f} tok/s, {row['ours_tflops']:.0f} TFLOP/s, "
              f"peak {ours_peak} | plain {row.get('hf_tokens_per_s') or row.get('hf_error')}", flush=True)
    return rows


def part_b(model, base, windows, lengths, candidates, repeats):
    """Candidates/s: `candidates` perturbed YaRN sets on one window, batched vs one per pass."""
    rng = np.random.default_rng(0)
    rows = []
    for length in lengths:
        yarn = methods.yarn(base, 8)
        sets = [longrope(base, np.maximum.accumulate(np.array(yarn.long_factor) * rng.uniform(0.9, 1.1, base.n_factors)),
                         scale=8, attention_factor=yarn.attention_factor) for _ in range(candidates)]
        window = [Window(windows[0].name, windows[0].ids[:length])]
        batched_evaluator = TorchEvaluator(model, progress=False)
        single_evaluator = TorchEvaluator(model, progress=False, max_batch=1)
        batched_s, _, batched = timed(lambda: batched_evaluator.score(sets, window), repeats)
        single_s, _, single = timed(lambda: single_evaluator.score(sets, window), repeats)
        agreement = max(abs(a.nll[length] - b.nll[length]) for a, b in zip(batched, single))
        rows.append({"length": length, "candidates": candidates, "batched_per_s": candidates / batched_s,
                     "single_per_s": candidates / single_s, "speedup": single_s / batched_s,
                     "max_nll_diff_batched_vs_single": agreement,
                     "batch_rows": _rows_per_pass(batched_evaluator, length)})
        print(f"(b) {length}: batched {candidates / batched_s:.1f}/s vs single {candidates / single_s:.1f}/s "
              f"= {single_s / batched_s:.2f}x", flush=True)
    return rows


def _rows_per_pass(evaluator, length):
    return evaluator._batch_size(length, 10**6) if length in evaluator.row_memory.bytes or not evaluator.on_gpu else None


def markdown(report) -> str:
    env = report["environment"]
    lines = [
        "# Evaluator benchmark",
        "",
        f"Command: `{report['command']}`  ",
        f"Device: {env['device']}, {env['dtype']}; torch {env['torch']}, transformers {env['transformers']}; "
        f"date {env['date']}  ",
        f"Model: {report['model']}; data: {report['data']} (development set); SDPA kernel chosen: "
        f"{report['attention_kernel']}",
        "",
        "## (a) One window per length: ours vs `model(input_ids, labels=input_ids)`",
        "",
    ]
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    table = markdown_lines(
        ["tokens", "ours tok/s", "plain tok/s", "speed ratio", "ours TFLOP/s", "plain TFLOP/s", "ours peak GiB",
         "plain peak GiB", "memory ratio", "ppl ours", "ppl plain", "rel. diff"],
        [[str(r["length"]), f"{r['ours_tokens_per_s']:,.0f}",
          r.get("hf_error") or fmt(r.get("hf_tokens_per_s"), ",.0f"),  # why the plain forward did not run
          fmt(r.get("speedup"), ".2f") + ("x" if r.get("speedup") else ""), f"{r['ours_tflops']:.0f}",
          fmt(r.get("hf_tflops"), ".0f"),
          fmt(r["ours_peak_gib"], ".2f"), fmt(r.get("hf_peak_gib"), ".2f"), fmt(r.get("memory_ratio"), ".1%"),
          f"{r['ours_ppl']:.3f}", fmt(r.get("hf_ppl"), ".3f"), fmt(r.get("ppl_rel_diff"), ".3%")] for r in report["a"]])
    lines += table  # where the plain forward failed or was not run, its tok/s cell says why
    longest = report["a"][-1]
    lines += [
        "",
        f"At {longest['length']} tokens ours reaches {longest['ours_tflops']:.0f} TFLOP/s, "
        f"{longest['ours_tflops'] / 800:.0%} of the ~800 TFLOP/s bf16 matrix ceiling.",
    ]
    if "b" in report:
        lines += _part_b_lines(report)
    if "c" in report:
        lines += ["", f"## (c) Perplexity by length, {len(report['c']['windows'])} "
                  f"{'packed windows' if report.get('pack') else 'longest documents'}, "
                  f"scale = length / {report['c']['original_context']}", "", "```", report["c_table"], "```"]
    return "\n".join(lines + [""])


def _part_b_lines(report) -> list[str]:
    lines = ["", "## (b) Candidates per second, one window each", ""]
    lines += markdown_lines(["tokens", "candidates", "batched /s", "one at a time /s", "ratio", "max NLL diff"],
                            [[str(r["length"]), str(r["candidates"]), f"{r['batched_per_s']:.1f}", f"{r['single_per_s']:.1f}",
                              f"{r['speedup']:.2f}x", f"{r['max_nll_diff_batched_vs_single']:.1e}"] for r in report["b"]])
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data", required=True, help="folder of long .txt documents")
    parser.add_argument("--lengths", default="16384,32768,65536,131072")
    parser.add_argument("--candidate-lengths", default="8192,16384")
    parser.add_argument("--candidates", type=int, default=32)
    parser.add_argument("--documents", type=int, default=4, help="longest documents for the table (c)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default=None)
    parser.add_argument("--json", required=True)
    parser.add_argument("--markdown", required=True)
    parser.add_argument("--pack", action="store_true", help="windows joined from several documents (EOS between)")
    parser.add_argument("--plain-max", type=int, help="run the plain transformers path only up to this length")
    parser.add_argument("--parts", default="abc", help="which parts to run, e.g. a (a always runs)")
    args = parser.parse_args()
    if not args.parts or set(args.parts) - set("abc"):
        parser.error(f"--parts {args.parts!r}: give letters of abc, e.g. a or ac")
    lengths = [int(x) for x in args.lengths.split(",")]

    ref = resolve_model(args.model)
    tokenizer = load_tokenizer(ref)
    model = load_model(ref, device=args.device)
    base = rope_base(model.config)
    documents = tokenize_documents(load_documents(args.data), tokenizer)
    longest = sorted(documents, key=lambda d: -len(d.ids))[: args.documents]
    if args.pack:
        windows = pack_windows(documents, max(lengths), 1, separator=tokenizer.eos_token_id)
        print(f"packed window: {[(name, tokens) for name, _, tokens, _ in windows[0].parts]}", flush=True)
    else:
        windows = sample_windows(longest, max(lengths), args.documents)
        print(f"documents: {[(d.name, len(d.ids)) for d in longest]}", flush=True)

    report = {"command": " ".join(["python"] + sys.argv), "model": args.model, "data": args.data,
              "attention_kernel": attention_kernel(), "environment": environment(model), "pack": args.pack}
    report["a"] = part_a(model, base, windows, lengths, args.repeats, args.plain_max)
    if "b" in args.parts:
        report["b"] = part_b(model, base, windows, [int(x) for x in args.candidate_lengths.split(",")], args.candidates,
                             args.repeats)
    if "c" in args.parts:
        report |= part_c(args, model, tokenizer, base, windows, lengths)
    save_json(report, args.json)
    Path(args.markdown).write_text(markdown(report))
    print(markdown(report))


def part_c(args, model, tokenizer, base, windows, lengths) -> dict:
    run = EvalSetup(args.model, args.data, model, tokenizer, base, windows,
                    {"documents": "packed" if args.pack else "longest"})
    started = time.perf_counter()
    c = baseline_table(run, lengths, ["none", "pi", "ntk", "yarn"], per_length=True, progress=False)
    seconds, table = time.perf_counter() - started, format_table(c)
    print(table, flush=True)
    return {"c": c, "c_seconds": seconds, "c_table": table}


if __name__ == "__main__":
    main()
