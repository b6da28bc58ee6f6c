"""Greedy decoding after a long prompt: milliseconds per generated token with transformers' default
cache (`dynamic`: each token concatenated onto the whole cache) against the reserved cache that
`ropesearch ruler` uses (`reserved`: written in place), in the same run.

    python eval/bench_decode.py --lengths 32k,64k --batches 8,20 --out results/bench-decode.json

(SmolLM2-135M in bf16 on the GPU: about 2 minutes at these settings; writes the JSON and the
same name with .md.) `--quick` runs the pocket model on the CPU in seconds.

A row is one prompt length and batch: random token prompts, NTK factors pinned for prompt plus
answer; `generate` runs once with 1 new token and once with `--new` tokens (min = max, so no
early stop), and a step costs (t_new - t_1) / (new - 1). Both caches must give the same tokens
(checked: `same_tokens`). An out-of-memory is a row ("OOM").
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ropesearch.evaluate.kv_cache import reserved_cache_kwargs  # noqa: E402
from ropesearch.export.factor_file import atomic_write_text  # noqa: E402
from ropesearch.evaluate.runs import environment, save_json  # noqa: E402
from ropesearch.models import load_model, resolve_model, rope_base  # noqa: E402
from ropesearch.rope import make_factors, patch_rope  # noqa: E402
from ropesearch.units import parse_token_list  # noqa: E402

GIB = 2**30


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_generate(model, ids, new: int, cache: str):
    device = ids.device
    kwargs = reserved_cache_kwargs(model, ids.shape[1] + new) if cache == "reserved" else {}
    sync(device)
    started = time.perf_counter()
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=new,
                             min_new_tokens=new, pad_token_id=0, **kwargs)
    sync(device)
    return out, time.perf_counter() - started


def row(model, length: int, batch: int, new: int) -> dict:
    device = next(model.parameters()).device
    ids = torch.randint(100, model.config.vocab_size - 1, (batch, length), generator=torch.Generator().manual_seed(0))
    ids = ids.to(device)
    result = {"tokens": length, "batch": batch, "new": new}
    outputs = {}
    for cache in ("dynamic", "reserved"):
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        try:
            _, first = timed_generate(model, ids, 1, cache)
            outputs[cache], whole = timed_generate(model, ids, new, cache)
        except torch.cuda.OutOfMemoryError:
            result[cache] = "OOM"
            continue
        result[cache] = {"prefill_s": round(first, 3), "ms_per_step": round((whole - first) / (new - 1) * 1000, 2),
                         "peak_gib": round(torch.cuda.max_memory_allocated(device) / GIB, 2)
                         if device.type == "cuda" else None}
    if len(outputs) == 2:
        result["same_tokens"] = bool(torch.equal(outputs["dynamic"], outputs["reserved"]))
        result["speedup"] = round(result["dynamic"]["ms_per_step"] / result["reserved"]["ms_per_step"], 2)
    return result


def table(rows: list[dict]) -> str:
    lines = ["| tokens | batch | dynamic ms/step | reserved ms/step | speedup | same tokens | peak GiB (dyn / res) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = [r[c]["ms_per_step"] if isinstance(r[c], dict) else r[c] for c in ("dynamic", "reserved")]
        peaks = [r[c].get("peak_gib") if isinstance(r[c], dict) else "-" for c in ("dynamic", "reserved")]
        lines.append(f"| {r['tokens']:,} | {r['batch']} | {cells[0]} | {cells[1]} | {r.get('speedup', '-')} | "
                     f"{r.get('same_tokens', '-')} | {peaks[0]} / {peaks[1]} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--lengths", default="32k,64k")
    parser.add_argument("--batches", default="8,20")
    parser.add_argument("--new", type=int, default=64, help="tokens generated per timed call")
    parser.add_argument("--scale", type=float, default=8.0, help="NTK scale of the factors")
    parser.add_argument("--out", default="results/bench-decode.json")
    parser.add_argument("--quick", action="store_true", help="pocket model on the CPU, short prompts")
    args = parser.parse_args(argv)
    if args.new < 2:
        parser.error("--new must be >= 2 (a step is timed between 1 and --new generated tokens)")
    if args.quick:
        args.model, args.lengths, args.batches, args.new = "pocket", "256,512", "1,4", 8
    device = "cuda" if torch.cuda.is_available() and not args.quick else "cpu"
    model = load_model(resolve_model(args.model), device=device)
    lengths = parse_token_list(args.lengths.split(","), "--lengths")
    batches = [int(b) for b in args.batches.split(",")]
    rows = []
    with patch_rope(model, make_factors("ntk", rope_base(model.config), args.scale)) as patch:
        for length in lengths:
            patch.pin(length + args.new)
            for batch in batches:
                rows.append(row(model, length, batch, args.new))
                print(table(rows[-1:]).splitlines()[-1], flush=True)
    command = " ".join(["python", "eval/bench_decode.py", *(sys.argv[1:] if argv is None else argv)])
    document = {"rows": rows, "model": args.model, "scale": args.scale, "command": command,
                "environment": environment(model)}
    save_json(document, args.out)
    markdown = (f"# Decoding after a long prompt: default cache vs reserved cache\n\n`{document['command']}`; "
                f"{document['environment'].get('device')}, {document['environment'].get('date')}\n\n{table(rows)}\n")
    atomic_write_text(Path(args.out).with_suffix(".md"), markdown)
    print(table(rows))
    return document


if __name__ == "__main__":
    main()
