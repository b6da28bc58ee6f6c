"""Seconds to load a GGUF demo model: de-quantised from the file (the weights cache off) against
read back from the weights cache, in one run. Prints a table and writes JSON.

    python eval/bench_model_load.py --model smollm2-135m --json results/bench-model-load.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from ropesearch.models import load_model, resolve_model  # noqa: E402


def timed_load(ref, dtype, device) -> float:
    started = time.perf_counter()
    load_model(ref, dtype=dtype, device=device)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--device", default=None)
    parser.add_argument("--json", required=True)
    args = parser.parse_args()
    ref = resolve_model(args.model)  # the GGUF file stays in the usual cache
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    with tempfile.TemporaryDirectory() as cache:  # a weights cache of its own: the first load fills it
        os.environ["ROPESEARCH_CACHE"] = cache
        os.environ["ROPESEARCH_WEIGHT_CACHE"] = "0"
        from_file = timed_load(ref, dtype, device)
        os.environ["ROPESEARCH_WEIGHT_CACHE"] = "1"
        first = timed_load(ref, dtype, device)
        cached = timed_load(ref, dtype, device)
    report = {"command": " ".join(["python"] + sys.argv), "model": args.model, "device": str(device),
              "cpu_or_gpu": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "dtype": str(dtype),
              "torch": torch.__version__, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "seconds": {"from the GGUF file (cache off)": from_file, "first load, filling the cache": first,
                          "from the weights cache": cached}, "ratio": from_file / cached}
    for name, seconds in report["seconds"].items():
        print(f"{name:32s} {seconds:8.2f} s")
    print(f"{'from file / from cache':32s} {report['ratio']:8.1f}x")
    Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
