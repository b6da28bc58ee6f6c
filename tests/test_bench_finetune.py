"""eval/bench_finetune.py on the pocket model: a row per length, what the defaults train and save, JSON and table."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "eval"))

import bench_finetune  # noqa: E402


def test_rows_per_length_and_the_all_parameters_control(tmp_path):
    document = bench_finetune.main(["--quick", "--steps", "2", "--out", str(tmp_path / "f.json")])
    rows = document["rows"]
    assert [(r["length"], r["trainable"], r["checkpointing"]) for r in rows] == [
        (512, "q_proj,k_proj,norm", True), (1024, "q_proj,k_proj,norm", True), (512, "all", False)]
    assert rows[0]["trained_parameters"] < rows[2]["trained_parameters"] / 5  # q, k and norms of 4.2M
    assert all(r["step_seconds"] > 0 and r["tokens_per_second"] > 0 for r in rows)
    assert json.loads((tmp_path / "f.json").read_text())["rows"] == rows
    assert "| 1024 | q_proj,k_proj,norm | yes |" in (tmp_path / "f.md").read_text()
