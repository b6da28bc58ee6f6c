"""What a search costs on N GPUs: candidates x windows x seconds per window / workers.

    python eval/cost_model.py --markdown results/cost-model.md

Measured inputs (H100 80 GB, bf16, ropesearch's evaluator; /work/shared/REFERENCE.md):
  a Llama-3-8B-shaped model ran 476 TFLOP/s at 131,072 tokens and 515 TFLOP/s at 262,144;
  its activations cost about 113 KB per token. Everything else here is derived from those:
  FLOPs per window from the model shape (eval/bench_evaluator.py's forward_flops), seconds per
  window = FLOPs / the measured rate (the 262k rate for longer windows), activations scaled by
  (hidden + MLP width) from the 8B model's, GPUs per worker = the smallest power of two whose
  memory (85% of 80 GB) holds weights + activations. A worker spread over K GPUs (layers split
  with device_map) runs at about one GPU's speed, so N GPUs give N / K workers.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_evaluator import forward_flops  # noqa: E402

from ropesearch.tables import markdown  # noqa: E402

MEASURED_TFLOPS = {131_072: 476.0, 262_144: 515.0}  # Llama-3-8B shape, H100 (REFERENCE.md)
MEASURED_BYTES_PER_TOKEN = 113e3  # activations of that model, per token
REFERENCE_WIDTH = 4096 + 14336  # its hidden + MLP width
GPU_BYTES = 80e9 * 0.85

MODELS = {  # Llama-2 shapes (vocab 32000)
    "7B": SimpleNamespace(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                          intermediate_size=11008, vocab_size=32000, params=6.74e9),
    "70B": SimpleNamespace(hidden_size=8192, num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=8,
                           intermediate_size=28672, vocab_size=32000, params=68.98e9),
}
LENGTHS = {"128k": 131_072, "1M": 1_048_576}
SEARCHES = {"LongRoPE reference (1,344 candidates x 5 windows)": (1344, 5),
            "fast, 300 full evaluations x 2 windows": (300, 2)}


def row(name: str, config, tokens: int, gpus: int) -> dict:
    rate = MEASURED_TFLOPS[131_072] if tokens <= 131_072 else MEASURED_TFLOPS[262_144]
    seconds = forward_flops(config, tokens) / (rate * 1e12)
    activations = MEASURED_BYTES_PER_TOKEN * (config.hidden_size + config.intermediate_size) / REFERENCE_WIDTH
    need = 2 * config.params + activations * tokens
    per_worker = 2 ** math.ceil(math.log2(max(1.0, need / GPU_BYTES)))
    workers = max(1, gpus // per_worker)
    hours = {search: candidates * windows * seconds / workers / 3600
             for search, (candidates, windows) in SEARCHES.items()}
    return {"model": name, "tokens": tokens, "seconds_per_window": seconds, "memory_gb": need / 1e9,
            "gpus_per_worker": per_worker, "gpus": gpus, "workers": workers, "hours": hours}


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", default="8,64", help="comma-separated GPU counts")
    parser.add_argument("--markdown")
    args = parser.parse_args(argv)
    rows = [row(name, config, tokens, int(g)) for name, config in MODELS.items() for tokens in LENGTHS.values()
            for g in args.gpus.split(",")]
    searches = list(SEARCHES)
    lines = ["# Cost model of a search (derived from measured H100 rates; see eval/cost_model.py)", "",
             f"Command: `python eval/cost_model.py {' '.join(argv if argv is not None else sys.argv[1:])}`", "",
             markdown(["model", "tokens", "s / window", "memory GB", "GPUs / worker", "GPUs", "workers"]
                      + [f"hours: {s}" for s in searches],
                      [[r["model"], f"{r['tokens']:,}", f"{r['seconds_per_window']:.0f}", f"{r['memory_gb']:.0f}",
                        r["gpus_per_worker"], r["gpus"], r["workers"]] + [f"{r['hours'][s]:.2f}" for s in searches]
                       for r in rows])]
    table = "\n".join(lines)
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    return rows


if __name__ == "__main__":
    main()
