"""eval/bench_evaluator_8b.py at a tiny size on the CPU, so the GPU benchmark cannot rot."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

EVAL = Path(__file__).parents[1] / "eval"
sys.path.insert(0, str(EVAL))
spec = importlib.util.spec_from_file_location("bench_evaluator_8b", EVAL / "bench_evaluator_8b.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_quick_run_measures_both_modes_and_scales_short_runs(tmp_path):
    out = tmp_path / "shape.json"
    # a tiny time budget: the second length must run one layer and be scaled to all four
    report = bench.main(["--quick", "--lengths", "256,768", "--row-seconds", "1e-9", "--out", str(out)])
    rows = {(r["length"], r["mode"]): r for r in report["rows"]}
    assert set(rows) == {(256, "chunked"), (256, "whole"), (768, "chunked"), (768, "whole")}
    assert all(r["status"] == "ok" for r in rows.values())
    assert rows[256, "chunked"]["layers"] == 4 and not rows[256, "chunked"]["scaled"]
    long = rows[768, "chunked"]
    assert long["layers"] == 1 and long["scaled"] and long["seconds_all_layers"] > 2 * long["seconds"]
    # chunks of 128 tokens: the MLP's [tokens x 448] intermediates no longer span the window
    assert long["activation_kib_per_token"] < rows[768, "whole"]["activation_kib_per_token"] / 2
    assert json.loads(out.read_text())["rows"] == json.loads(json.dumps(report["rows"]))
    table = out.with_suffix(".md").read_text()
    assert "| 768 | chunked | 1 |" in table and "scaled by FLOPs" in table
    assert report["matmul_peak_tflops"] > 0 and 0 < long["fraction_of_peak"]


def test_flop_formula_counts_what_the_model_multiplies():
    """forward_flops = every matrix product of a forward pass, attention counted causal (half)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = bench.build_model(bench.QUICK, torch.device("cpu"), torch.float32)
    model.config._attn_implementation = "eager"  # plain matmuls over the full T x T square
    tokens = 96
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(input_ids=torch.zeros(1, tokens, dtype=torch.long))
    config = model.config
    attention_causal = config.num_hidden_layers * 4 * config.num_attention_heads * config.head_dim * tokens**2 / 2
    assert bench.forward_flops(config, tokens) + attention_causal == counter.get_total_flops()
    assert bench.forward_flops(config, tokens, layers=1) < bench.forward_flops(config, tokens) / 2


def test_out_of_memory_is_a_row(monkeypatch):
    model = bench.build_model(bench.QUICK, torch.device("cpu"), torch.float32)

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(bench.TorchEvaluator, "score", out_of_memory)
    row = bench.measure(model, 256, 2, 0, weights_bytes=3 * 2**30)
    assert row["status"] == "OOM at 3.0 GiB" and row["mode"] == "whole"
    assert len(model.model.layers) == 4  # every layer back in place


def test_layer_choice_and_bad_options(tmp_path):
    assert bench.layers_for(None, 150, 32) == 32
    assert bench.layers_for(100, 150, 32) == 32
    assert bench.layers_for(640, 150, 32) == 7
    assert bench.layers_for(1e9, 150, 32) == 1
    with pytest.raises(SystemExit, match="--modes"):
        bench.main(["--quick", "--modes", "fast", "--out", str(tmp_path / "x.json")])
    with pytest.raises(SystemExit, match="--layers"):
        bench.main(["--quick", "--layers", "9", "--out", str(tmp_path / "x.json")])
