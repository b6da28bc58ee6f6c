"""How long a window one GPU fine-tunes: seconds and peak memory per step at each length.

    python eval/bench_finetune.py --lengths 64k,128k,256k --out results/bench-finetune.json

(SmolLM2-135M on one H100: float32 master weights under bf16 autocast, activation checkpointing,
the sequence-chunked loss, and only q_proj, k_proj and the norms trainable, as smollm2-1m.yaml
fine-tunes.) It writes the JSON and a .md table of the same name. `--quick` runs the pocket model on
the CPU at 512 and 1024 tokens in seconds.

Each length is a fresh Finetuner with its own checkpoint folder. Its `--steps` steps have one
micro-batch of one window each, with YaRN factors at that length. A step's seconds and peak memory
come from the fine-tuning history (`step_seconds`, `peak_gib`); the first step is left out of the
median as warm-up. A length that runs out of memory is a row of its own ("OOM"), and the longer
lengths are still tried. A second config (all parameters trainable, no checkpointing) at the
shortest length shows what the defaults save, in the same run.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ropesearch.data import TokenizedDocument  # noqa: E402
from ropesearch.evaluate.runs import environment, save_json  # noqa: E402
from ropesearch.models import load_model, resolve_model, rope_base  # noqa: E402
from ropesearch.own_files import atomic_write_text  # noqa: E402
from ropesearch.pipeline.finetune import FinetuneConfig, Finetuner  # noqa: E402
from ropesearch.rope import make_factors  # noqa: E402
from ropesearch.tables import markdown  # noqa: E402
from ropesearch.units import parse_token_list  # noqa: E402

TRAINABLE = ("q_proj", "k_proj", "norm")


def one_length(ref, device: str, length: int, steps: int, trainable: tuple[str, ...], checkpointing: bool) -> dict:
    if device == "cuda":  # nothing of an earlier row (an out-of-memory one too) in this row's peak
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model = load_model(ref, dtype=torch.float32, device=device)
    base = rope_base(model.config)
    factors = make_factors("yarn", base, max(1.0, length / base.original_context))
    rng = np.random.default_rng(0)
    documents = [TokenizedDocument("random", rng.integers(3, model.config.vocab_size, 2 * length + 2).astype(np.int32))]
    config = FinetuneConfig(length=length, steps=steps, global_batch=1, micro_batch=1, lr=1e-5, save_every=10**6,
                            gradient_checkpointing=checkpointing, trainable=trainable)
    row = {"length": length, "trainable": ",".join(trainable) or "all", "checkpointing": checkpointing}
    try:
        with tempfile.TemporaryDirectory() as folder:
            trainer = Finetuner(model, factors, documents, config, folder, log=lambda message: None)
            history = trainer.run()
        timed = history[1:] or history
        row |= {"step_seconds": round(statistics.median(h["step_seconds"] for h in timed), 3),
                "tokens_per_second": round(length / statistics.median(h["step_seconds"] for h in timed)),
                "peak_gib": max((h.get("peak_gib", 0.0) for h in history), default=None) if device == "cuda" else None,
                "trained_parameters": sum(p.numel() for p in trainer.trained_parameters()),
                "final_loss": round(history[-1]["loss"], 4)}
    except torch.OutOfMemoryError:
        row |= {"oom": True}
    return row


def table(rows: list[dict]) -> str:
    head = ["length", "trainable", "checkpointing", "s / step", "tokens / s", "peak GiB", "trained params"]
    return markdown(head, [[r["length"], r["trainable"], "yes" if r["checkpointing"] else "no",
                            "OOM" if r.get("oom") else f"{r['step_seconds']:.2f}",
                            "" if r.get("oom") else f"{r['tokens_per_second']:,}",
                            "" if r.get("oom") or r["peak_gib"] is None else f"{r['peak_gib']:.1f}",
                            "" if r.get("oom") else f"{r['trained_parameters']:,}"] for r in rows])


def parse_args(argv=None) -> argparse.Namespace:
    """The arguments, checked, with nothing loaded (a GPU queue's lines are checked with it)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--lengths", default="64k,128k,256k")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", default="results/bench-finetune.json")
    parser.add_argument("--quick", action="store_true", help="pocket model on the CPU, short windows")
    args = parser.parse_args(argv)
    if args.quick:
        args.model, args.lengths = "pocket", "512,1024"
    args.lengths = parse_token_list(args.lengths.split(","), "--lengths")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = "cuda" if torch.cuda.is_available() and not args.quick else "cpu"
    ref = resolve_model(args.model)
    rows = []
    for length in args.lengths:
        rows.append(one_length(ref, device, length, args.steps, TRAINABLE, True))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    rows.append(one_length(ref, device, args.lengths[0], args.steps, (), False))  # what the defaults save
    print(table(rows[-1:]).splitlines()[-1], flush=True)
    command = " ".join(["python", "eval/bench_finetune.py", *(sys.argv[1:] if argv is None else argv)])
    document = {"rows": rows, "model": args.model, "steps": args.steps, "command": command,
                "environment": environment(load_model(ref, device="cpu"))}
    document["environment"]["device"] = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    save_json(document, args.out)
    atomic_write_text(Path(args.out).with_suffix(".md"),
                      f"# Fine-tuning: seconds and peak memory per step\n\n`{command}`; {document['environment']['device']}, "
                      f"{document['environment'].get('date')}\n\n{table(rows)}\n")
    print(table(rows))
    return document


if __name__ == "__main__":
    main()
