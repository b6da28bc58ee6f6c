"""Greedy decoding after a long prompt: prefill seconds and milliseconds per generated token with
transformers as it comes (`default`: each token concatenated onto the whole cache), with the
reserved cache alone (`reserved`: written in place), and as `ropesearch ruler` runs it (`ruler`:
reserved cache, cuDNN attention first, which REFERENCE.md measured 1.37x faster than flash for
32k-128k prefill), in the same run.

    python eval/bench_decode.py --lengths 32k,64k --batches 8,20 --out results/bench-decode.json

(SmolLM2-135M in bf16 on the GPU: about 2 minutes at these settings; writes the JSON and the
same name with .md.) `--quick` runs the pocket model on the CPU in seconds.

A row is one prompt length and batch: random token prompts, NTK factors pinned for prompt plus
answer; `generate` makes `--new` tokens (min = max, so no early stop) and a stopping criterion
that never stops notes the time after each one: prefill = start to the first token, a step =
the mean time between later ones. The reserved cache must give the
default's tokens (`same_tokens`); another attention kernel may round differently in bf16, so
`ruler` may differ in a few tokens. An out-of-memory is a cell ("OOM").
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ropesearch.tasks.kv_cache import reserved_cache_kwargs  # noqa: E402
from ropesearch.own_files import atomic_write_text  # noqa: E402
from ropesearch.evaluate.runs import environment, save_json  # noqa: E402
from ropesearch.evaluate.torch_backend import fastest_attention  # noqa: E402
from ropesearch.models import load_model, resolve_model, rope_base  # noqa: E402
from ropesearch.rope import make_factors  # noqa: E402
from ropesearch.rope.patching import patch_rope  # noqa: E402
from ropesearch.tables import markdown  # noqa: E402
from ropesearch.units import parse_token_list  # noqa: E402

GIB = 2**30


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


VARIANTS = {  # name: (cache, attention)
    "default": ("dynamic", "default"),  # transformers as it comes
    "reserved": ("reserved", "default"),  # the reserved cache alone
    "fastest": ("dynamic", "fastest"),  # cuDNN attention first alone
    "ruler": ("reserved", "fastest"),  # what `ropesearch ruler` runs: reserved cache, cuDNN attention first
}


class Stamps(StoppingCriteria):
    """Never stops generation; notes the time after each generated token (the GPU synchronised)."""

    def __init__(self, device):
        self.device, self.times = device, []

    def __call__(self, input_ids, scores, **kwargs):
        sync(self.device)
        self.times.append(time.perf_counter())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def timed_generate(model, ids, new: int, cache: str, attention: str):
    """(tokens, seconds to the first new token, seconds per later token)."""
    device = ids.device
    kwargs = reserved_cache_kwargs(model, ids.shape[1] + new) if cache == "reserved" else {}
    stamps = Stamps(device)
    sync(device)
    started = time.perf_counter()
    with torch.no_grad(), (fastest_attention() if attention == "fastest" else contextlib.nullcontext()):
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=new,
                             min_new_tokens=new, pad_token_id=0, stopping_criteria=StoppingCriteriaList([stamps]),
                             **kwargs)
    times = stamps.times
    return out, times[0] - started, (times[-1] - times[0]) / (len(times) - 1)


def row(model, length: int, batch: int, new: int) -> dict:
    device = next(model.parameters()).device
    ids = torch.randint(100, model.config.vocab_size - 1, (batch, length), generator=torch.Generator().manual_seed(0))
    ids = ids.to(device)
    result = {"tokens": length, "batch": batch, "new": new}
    outputs = {}
    for name, (cache, attention) in VARIANTS.items():
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        try:
            outputs[name], first, step = timed_generate(model, ids, new, cache, attention)
        except torch.cuda.OutOfMemoryError:
            result[name] = "OOM"
            continue
        result[name] = {"prefill_s": round(first, 3), "ms_per_step": round(step * 1000, 2),
                        "peak_gib": round(torch.cuda.max_memory_allocated(device) / GIB, 2)
                        if device.type == "cuda" else None}
        if name != "default" and "default" in outputs:  # share of generated tokens equal to the default's
            new_tokens = slice(ids.shape[1], None)
            same = outputs["default"][:, new_tokens] == outputs[name][:, new_tokens]
            result[name]["same_tokens"] = round(same.float().mean().item(), 3)
    return result


def _cell(value: dict | str, key: str) -> str:
    return str(value[key]) if isinstance(value, dict) else value


def table(rows: list[dict]) -> str:
    header = ["tokens", "batch"] + [f"{v} {k}" for v in VARIANTS for k in ("prefill s", "ms/step")] + [
        "same tokens (reserved, fastest, ruler)", "peak GiB (default, ruler)"]
    body = []
    for r in rows:
        cells = [f"{r['tokens']:,}", str(r["batch"])]
        cells += [_cell(r[v], k) for v in VARIANTS for k in ("prefill_s", "ms_per_step")]
        cells.append(", ".join(str(r[v].get("same_tokens", "-")) if isinstance(r[v], dict) else "-"
                               for v in ("reserved", "fastest", "ruler")))
        cells.append(", ".join(str(r[v].get("peak_gib")) if isinstance(r[v], dict) else "-" for v in ("default", "ruler")))
        body.append(cells)
    return markdown(header, body)


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
