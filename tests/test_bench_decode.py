"""eval/bench_decode.py --quick: both caches time a decoding step, give the same tokens, write JSON and markdown."""

import importlib.util
import json
from pathlib import Path

spec = importlib.util.spec_from_file_location("bench_decode", Path(__file__).parents[1] / "eval" / "bench_decode.py")
bench_decode = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench_decode)


def test_quick_run_compares_the_caches(tmp_path):
    out = tmp_path / "decode.json"
    document = bench_decode.main(["--quick", "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert rows == json.loads(json.dumps(document["rows"]))
    assert [(r["tokens"], r["batch"]) for r in rows] == [(256, 1), (256, 4), (512, 1), (512, 4)]
    assert all(r[v]["ms_per_step"] > 0 and r[v]["prefill_s"] > 0 for r in rows for v in ("default", "reserved", "ruler"))
    assert all(r[v]["same_tokens"] == 1.0 for r in rows for v in ("reserved", "fastest", "ruler"))  # CPU: one attention kernel
    assert "| 512 | 4 |" in out.with_suffix(".md").read_text()
