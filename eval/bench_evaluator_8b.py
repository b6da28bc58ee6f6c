"""The evaluator on a Llama-3-8B-shaped model at long windows: seconds, peak memory, TFLOP/s.

    python eval/bench_evaluator_8b.py --out results/evaluator-8b-shape.json

(about 6 minutes on one H100 for the default lengths 131072, 524288, 1048576; writes the JSON
and, next to it, the same name with .md). `--quick` runs a tiny shape on the CPU in seconds.

The model is built with random bf16 weights directly on the GPU (meta device, then
`to_empty` and a random init: no download): perplexity is meaningless, cost is real. Shape:
32 layers, hidden 4096, 32 heads / 8 KV heads (head dim 128), MLP 14336, vocab 128256,
rope_theta 500000, original window 8192. One window of random tokens per row, one
candidate (no rescale), scored by `TorchEvaluator` with its sequence chunking on (`chunked`)
and off (`whole`); an out-of-memory is a row ("OOM at X GiB": the peak reached before it).

FLOPs of one window of T tokens (matrix products only; h hidden, H heads, K KV heads, d head
dim, I MLP width, V vocabulary, L layers):
    linear    = 2 T (L (2 h H d + 2 h K d + 3 h I) + h V)     q/o, k/v, gate/up/down, LM head
    attention = L * 4 H d * T^2 / 2                             QK^T and AV, causal half
TFLOP/s = FLOPs / seconds; the bf16 matrix peak is measured in the same run (a timed
8192^3 bf16 product) and each row gives its fraction of it.

A full 32-layer window at 1M tokens takes longer than one 10-minute command, so a row whose
predicted time (from the FLOP rate of the previous row) exceeds --row-seconds runs only the
first L layers; the other layers' weights stay resident, so peak memory is that of the full
model (activations of one layer at a time). Its 32-layer time is the measured time scaled
by FLOPs(32 layers) / FLOPs(L layers); the table says which rows were scaled.
"""

from __future__ import annotations

import argparse
import gc
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_evaluator import forward_flops, sync  # noqa: E402

from ropesearch.data import Window  # noqa: E402
from ropesearch.errors import RopesearchError  # noqa: E402
from ropesearch.evaluate import TorchEvaluator  # noqa: E402
from ropesearch.evaluate.memory import PeakMemory  # noqa: E402
from ropesearch.evaluate.runs import environment, save_json  # noqa: E402
from ropesearch.models import rope_base  # noqa: E402
from ropesearch.rope import methods  # noqa: E402
from ropesearch.tables import markdown_lines  # noqa: E402

LLAMA3_8B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                 num_key_value_heads=8, head_dim=128, vocab_size=128256, rope_theta=500000.0, original=8192)
QUICK = dict(hidden_size=64, intermediate_size=448, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=2, head_dim=16, vocab_size=128, rope_theta=10000.0, original=128)
GIB = 2**30


def build_model(shape: dict, device: torch.device, dtype: torch.dtype, seed: int = 0):
    """A LlamaForCausalLM of `shape` with random weights made on `device` (nothing downloaded)."""
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    config = LlamaConfig(
        hidden_size=shape["hidden_size"], intermediate_size=shape["intermediate_size"],
        num_hidden_layers=shape["num_hidden_layers"], num_attention_heads=shape["num_attention_heads"],
        num_key_value_heads=shape["num_key_value_heads"], head_dim=shape["head_dim"],
        vocab_size=shape["vocab_size"], max_position_embeddings=shape["original"], rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": shape["rope_theta"]}, tie_word_embeddings=False,
    )
    config._attn_implementation = "sdpa"
    with torch.device("meta"):
        model = LlamaForCausalLM(config).to(dtype)
    model.to_empty(device=device)
    generator = torch.Generator(device).manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim == 1:
                parameter.fill_(1.0)  # RMSNorm weights
            else:
                parameter.normal_(0.0, 0.02, generator=generator)
    with torch.device(device):  # its float32 inverse frequencies were left uninitialised by to_empty
        model.model.rotary_emb = LlamaRotaryEmbedding(config)
    return model.eval()


def matmul_peak_tflops(device: torch.device, dtype: torch.dtype, size: int, repeats: int = 20) -> float:
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync()
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync()
    return 2 * size**3 * repeats / (time.perf_counter() - started) / 1e12


def layers_for(predicted_seconds: float | None, budget_seconds: float, total: int) -> int:
    """Layers to run so one window takes about `budget_seconds` (all of them when it fits)."""
    if predicted_seconds is None or predicted_seconds <= budget_seconds:
        return total
    return max(1, min(total, math.floor(total * budget_seconds / predicted_seconds)))


def is_oom(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RopesearchError) and str(error).startswith("out of GPU memory"))


def measure(model, length: int, layers: int, chunk: int | None, weights_bytes: int, seed: int = 0) -> dict:
    """One window of `length` random tokens through the first `layers` decoder layers, with the
    evaluator's sequence chunking of `chunk` tokens (None: its default, 0: off)."""
    device = next(model.parameters()).device
    config = model.config
    all_layers = model.model.layers
    row = {"length": length, "mode": "whole" if chunk == 0 else "chunked", "layers": layers}
    ids = np.random.default_rng(seed).integers(0, config.vocab_size, length)
    evaluator = TorchEvaluator(model, progress=False, sequence_chunk=chunk)
    model.model.layers = torch.nn.ModuleList(all_layers[:layers])  # the others stay resident
    peak = PeakMemory(device)
    try:
        with peak:
            started = time.perf_counter()
            evaluator.score([methods.none(rope_base(config))], [Window(f"random@{length}", ids)])
            sync()
            seconds = time.perf_counter() - started
    except (torch.OutOfMemoryError, RopesearchError) as error:
        if not is_oom(error):
            raise
        failed_at = (torch.cuda.max_memory_allocated(device) if device.type == "cuda" else weights_bytes) / GIB
        row.update(status=f"OOM at {failed_at:.1f} GiB", peak_gib=failed_at)
        return row
    finally:
        model.model.layers = all_layers
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    flops = forward_flops(config, length, layers=layers)
    full_flops = forward_flops(config, length)
    row.update(status="ok", seconds=seconds, flops=flops, tflops=flops / seconds / 1e12,
               seconds_all_layers=seconds * full_flops / flops, scaled=layers < config.num_hidden_layers,
               activation_gib=peak.bytes / GIB, peak_gib=(weights_bytes + peak.bytes) / GIB,
               activation_kib_per_token=peak.bytes / length / 1024)
    return row


def run(shape: dict, lengths: list[int], modes: list[str], device: torch.device, dtype: torch.dtype,
        row_seconds: float, layers: int | None, matmul_size: int, chunk: int | None = None) -> dict:
    peak_tflops = matmul_peak_tflops(device, dtype, matmul_size)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    started = time.perf_counter()
    model = build_model(shape, device, dtype)
    sync()
    build_seconds = time.perf_counter() - started
    total = model.config.num_hidden_layers
    weights_bytes = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    print(f"model built in {build_seconds:.1f} s: {total} layers, weights {weights_bytes / GIB:.2f} GiB; "
          f"{dtype} matmul peak {peak_tflops:.3g} TFLOP/s", flush=True)
    for mode in modes:  # warm-up (kernel choice, allocator) at a short length that is still chunked
        measure(model, min(16384, min(lengths)), total, chunk if mode == "chunked" else 0, weights_bytes)
    rows, seconds_per_flop = [], None
    for length in sorted(lengths):
        predicted = seconds_per_flop * forward_flops(model.config, length) if seconds_per_flop else None
        chosen = layers or layers_for(predicted, row_seconds, total)
        for mode in modes:
            row = measure(model, length, chosen, chunk if mode == "chunked" else 0, weights_bytes)
            if row["status"] == "ok":
                row["fraction_of_peak"] = row["tflops"] / peak_tflops
                seconds_per_flop = row["seconds"] / row["flops"]
            rows.append(row)
            print(format_row(row), flush=True)
    report = {"shape": shape, "dtype": str(dtype).removeprefix("torch."), "environment": environment(model),
              "weights_gib": weights_bytes / GIB, "matmul_peak_tflops": peak_tflops, "matmul_size": matmul_size,
              "build_seconds": build_seconds, "sequence_chunk": chunk, "rows": rows}
    report["longest_fit"] = longest_fit(report, device)
    return report


def longest_fit(report: dict, device: torch.device) -> dict | None:
    """Activations grow linearly in tokens: the longest chunked window this card holds, from the
    longest chunked row measured (an estimate to confirm with --lengths)."""
    ok = [r for r in report["rows"] if r["mode"] == "chunked" and r["status"] == "ok"]
    if not ok or device.type != "cuda":
        return None
    row = max(ok, key=lambda r: r["length"])
    card = torch.cuda.get_device_properties(device).total_memory
    free_for_activations = card * 0.97 - report["weights_gib"] * GIB  # a little left for the CUDA context
    tokens = int(free_for_activations / (row["activation_kib_per_token"] * 1024))
    return {"card_gib": card / GIB, "from_length": row["length"], "tokens": tokens}


def format_row(row: dict) -> str:
    if row["status"] != "ok":
        return f"{row['length']:>9} {row['mode']:>8} {row['layers']:>3} layers  {row['status']}"
    scaled = f" (x{row['seconds_all_layers'] / row['seconds']:.2f} to all layers)" if row["scaled"] else ""
    return (f"{row['length']:>9} {row['mode']:>8} {row['layers']:>3} layers  {row['seconds']:8.2f} s{scaled}  "
            f"peak {row['peak_gib']:6.2f} GiB ({row['activation_kib_per_token']:.1f} KiB/token)  "
            f"{row['tflops']:6.3g} TFLOP/s = {row['fraction_of_peak']:.0%} of peak")


def markdown(report: dict) -> str:
    env, shape = report["environment"], report["shape"]
    lines = [
        "# The evaluator on a Llama-3-8B-shaped model",
        "",
        f"Command: `{report['command']}`  ",
        f"Device: {env['device']}, {report['dtype']}; torch {env['torch']}, transformers {env['transformers']}; "
        f"date {env['date']}  ",
        f"Shape: {shape['num_hidden_layers']} layers, hidden {shape['hidden_size']}, "
        f"{shape['num_attention_heads']} heads / {shape['num_key_value_heads']} KV heads, MLP "
        f"{shape['intermediate_size']}, vocab {shape['vocab_size']}; random weights, "
        f"{report['weights_gib']:.2f} GiB  ",
        f"Matrix peak measured in this run: {report['matmul_peak_tflops']:.3g} TFLOP/s "
        f"({report['matmul_size']}^3 {report['dtype']} product)",
        "",
    ]
    rows = []
    for r in report["rows"]:
        if r["status"] != "ok":  # the status in the seconds column, the rest empty
            rows.append([f"{r['length']:,}", r["mode"], str(r["layers"]), r["status"]])
            continue
        seconds = (f"{r['seconds_all_layers']:.1f} (measured {r['seconds']:.1f} s on {r['layers']} layers, "
                   "scaled by FLOPs)" if r["scaled"] else f"{r['seconds']:.1f}")
        rows.append([f"{r['length']:,}", r["mode"], str(r["layers"]), seconds, f"{r['peak_gib']:.2f}",
                     f"{r['activation_kib_per_token']:.1f}", f"{r['tflops']:.3g}", f"{r['fraction_of_peak']:.0%}"])
    lines += markdown_lines(["tokens", "mode", "layers run", "seconds (all layers)", "peak GiB", "activations KiB/token",
                             "TFLOP/s", "of matrix peak"], rows)
    lines += ["", "`chunked`: decoder norms and MLP over chunks of the sequence, attention whole "
              "(`TorchEvaluator`'s default for long windows); `whole`: `sequence_chunk=0`. Peak GiB: weights plus "
              "the most the window added; a row with fewer layers keeps all layers' weights resident."]
    fit = report.get("longest_fit")
    if fit:
        lines += ["", f"Longest chunked window this {fit['card_gib']:.1f} GiB card should hold (activations linear "
                  f"in tokens, from the {fit['from_length']:,}-token row): about {fit['tokens']:,} tokens."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default=None, help="comma-separated window lengths "
                        "(default 131072,524288,1048576; --quick: 512,2048)")
    parser.add_argument("--modes", default="chunked,whole", help="chunked, whole or both")
    parser.add_argument("--row-seconds", type=float, default=150.0,
                        help="time budget of one window: longer ones run fewer layers and are scaled")
    parser.add_argument("--layers", type=int, default=None, help="run this many layers in every row")
    parser.add_argument("--chunk", type=int, default=None,
                        help="tokens per chunk of the chunked rows (default: the evaluator's, 12288 for this shape)")
    parser.add_argument("--quick", action="store_true", help="a tiny shape on the CPU, float32, in seconds")
    parser.add_argument("--out", required=True, help="JSON file to write; the markdown table goes next to it (.md)")
    args = parser.parse_args(argv)
    lengths = [int(x) for x in (args.lengths or ("512,2048" if args.quick else "131072,524288,1048576")).split(",")]
    modes = [m.strip() for m in args.modes.split(",")]
    if set(modes) - {"chunked", "whole"} or not modes:
        raise SystemExit(f"Error: --modes takes chunked and/or whole, got {args.modes!r}")
    if args.quick:
        shape, device, dtype, matmul_size = QUICK, torch.device("cpu"), torch.float32, 256
        args.chunk = args.chunk or 128
    else:
        if not torch.cuda.is_available():
            raise SystemExit("Error: no GPU: this benchmark needs one (use --quick for a tiny CPU run)")
        shape, device, dtype, matmul_size = LLAMA3_8B, torch.device("cuda"), torch.bfloat16, 8192
    if args.layers is not None and not 1 <= args.layers <= shape["num_hidden_layers"]:
        raise SystemExit(f"Error: --layers must lie in [1, {shape['num_hidden_layers']}], got {args.layers}")
    report = run(shape, lengths, modes, device, dtype, args.row_seconds, args.layers, matmul_size, args.chunk)
    report["command"] = " ".join(["python", *sys.argv]) if argv is None else " ".join(
        ["python", "eval/bench_evaluator_8b.py", *argv])
    save_json(report, args.out)
    text = markdown(report)
    Path(args.out).with_suffix(".md").write_text(text)
    print(text)
    return report


if __name__ == "__main__":
    main()
