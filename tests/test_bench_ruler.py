"""eval/bench_ruler.py at a tiny size on the pocket model: runs resume per length, the summary merges sets."""

import importlib.util
import json
import re
import sys
from pathlib import Path
from unittest import mock

from ropesearch.export import save_factors
from ropesearch.models import load_config, resolve_model, rope_base
from ropesearch.rope import make_factors

spec = importlib.util.spec_from_file_location("bench_ruler", Path(__file__).parents[1] / "eval" / "bench_ruler.py")
bench_ruler = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench_ruler)


def test_runs_resume_and_the_summary_checks_the_targets(tmp_path, monkeypatch):
    factors = tmp_path / "pocket-yarn.json"
    save_factors(make_factors("yarn", rope_base(load_config(resolve_model("pocket"))), 4), factors)
    out = tmp_path / "ruler"

    def bench(*args):
        monkeypatch.setattr(sys, "argv", ["bench_ruler.py", *map(str, args)])
        bench_ruler.main()

    common = ["--model", "pocket", "--factors", factors, "--tasks", "niah_single_1", "--samples", 1,
              "--max-new-tokens", 2, "--data", "builtin", "--out", out]
    bench("run", "--set", "64k", "--lengths", "600", "--methods", "none", *common)
    bench("run", "--set", "64k", "--lengths", "600,9000", "--methods", "none", "--no-found", *common[:-2],
          "--out", out)  # resumes: only the unscaled model at 9000 is new
    first = json.loads((out / "ruler-64k.json").read_text())["ruler"]
    assert set(first) == {"none", "found-64k.json"}
    assert set(first["none"]["average"]) == {"600", "9000"} and set(first["found-64k.json"]["average"]) == {"600"}
    bench("run", "--set", "128k", "--lengths", "9000", "--methods", "ntk", *common)
    # YaRN's 128k cell at 8192 killed after its first of two tasks: still missing, with what is scored
    bench("run", "--set", "128k", "--lengths", "8192", "--methods", "yarn", "--no-found", *common)
    partial = json.loads((out / "ruler-128k.json").read_text())
    cell = partial["ruler"]["yarn"]
    cell["tasks"].append("niah_single_2")
    cell["scores"]["niah_single_2"] = {}
    del cell["average"]["8192"]
    (out / "ruler-128k.json").write_text(json.dumps(partial))
    bench("summary", "--out", out)
    readme = (out / "README.md").read_text()
    assert "## 64k set (x8)" in readme and "## 128k set (x16)" in readme
    # YaRN has not finished a cell in the 128k set: no verdict yet, and it is listed as missing
    assert re.search(r"- 9000: found [\d.]+ vs ntk [\d.]+, yarn - \(not all run yet\)", readme)
    assert "yarn at 8192 (1 of 2 tasks scored), 16384, 32768, 65536, 131072" in readme.split("## 128k set")[1]
    assert "Not complete yet: none at 8192, 16384, 32768, 65536" in readme  # the set's own lengths: none ran
    # the 128k table holds the unscaled model's scores from the 64k set
    block = readme.split("## 128k set")[1].split("average:")[1]
    assert "none" in block.splitlines()[1]
    assert (out / "ruler-128k-found-128k.png").stat().st_size > 10_000


def test_all_runs_every_cell_once_in_order_and_resumes(tmp_path, monkeypatch):
    factors = tmp_path / "pocket-yarn.json"
    save_factors(make_factors("yarn", rope_base(load_config(resolve_model("pocket"))), 4), factors)
    out = tmp_path / "ruler"
    pocket = str(resolve_model("pocket").path)  # stands in for the million plan's fine-tuned model
    argv = ["bench_ruler.py", "all", "--lengths-64k", "600", "--lengths-128k", "600,9000", "--lengths-1m", "600",
            "--found-model", pocket, "--model", "pocket",
            "--factors", str(factors), "--tasks", "niah_single_1", "--samples", "1", "--max-new-tokens", "2",
            "--data", "builtin", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    bench_ruler.main()
    names = ("64k", "128k", "1m", "1m-found")
    first = {name: json.loads((out / f"ruler-{name}.json").read_text()) for name in names}
    cells = {name: {m: sorted(r["average"]) for m, r in runs["ruler"].items()} for name, runs in first.items()}
    assert cells == {"64k": {m: ["600"] for m in ("none", "ntk", "yarn", "found-64k.json")},
                     "128k": {"ntk": ["600", "9000"], "yarn": ["600", "9000"], "found-128k.json": ["600", "9000"],
                              "none": ["9000"]},
                     "1m": {"ntk": ["600"], "yarn": ["600"]}, "1m-found": {"found-1m.json": ["600"]}}
    assert first["1m-found"]["model"] == pocket and first["1m"]["model"] == "pocket"
    with mock.patch("ropesearch.evaluate.comparison.load_model", side_effect=AssertionError("model loaded")):
        bench_ruler.main()  # everything is there: nothing runs again, no model even loads
    again = {name: json.loads((out / f"ruler-{name}.json").read_text())["ruler"] for name in names}
    assert all(again[n][m]["seconds"] == first[n]["ruler"][m]["seconds"] for n in names for m in again[n])
    (out / "finetune-again-done.json").write_text(json.dumps({"outputs": {"final_loss": 3.5}}))
    monkeypatch.setattr(sys, "argv", ["bench_ruler.py", "summary", "--out", str(out)])
    bench_ruler.main()
    readme = (out / "README.md").read_text()
    # each set says what its columns ran on; the 1m set's found factors had their own (fine-tuned) weights
    assert "`found-64k.json` is `results/search-smollm2-64k/fast-v2/best.json` (searched, no fine-tuning)" in readme
    assert "fine-tuned weights" in readme and "(final loss 3.5000, the committed run's 3.1343" in readme
    assert re.search(r"- 9000: found [\d.]+ vs ntk [\d.]+, yarn [\d.]+ \(target (met|NOT met)(, within noise)?\)\n"
                     r"  found - ntk [+-][\d.]+ ± [\d.]+; found - yarn [+-][\d.]+ ± [\d.]+ \(paired", readme)
    block = readme.split("## 1m set (x128)")[1]
    table = block.split("average:")[1].split("```")[0]
    assert "found-1m.json" in table and "none" in table and "- 600: found" not in block  # 8k and below: no target


def test_a_miss_names_the_dims_past_the_critical_one_that_rotate_beyond_training(tmp_path):
    from ropesearch.rope import critical_dimension, longrope

    base = rope_base(load_config(resolve_model("pocket")))
    length, first = 4 * base.original_context, critical_dimension(base) // 2
    yarn = tmp_path / "yarn.json"
    save_factors(make_factors("yarn", base, 4), yarn)
    assert f"every dim from the critical one ({first}) on is scaled by >= 4" in bench_ruler._beyond_training(yarn, length)
    # factors 2 up to the last dim, which gets the whole scale: all the others past the critical one fall short
    lows = tmp_path / "lows.json"
    n = base.rotary_dim // 2
    save_factors(longrope(base, [2.0] * (n - 1) + [4.0], scale=4), lows)
    why = bench_ruler._beyond_training(lows, length)
    assert f"{n - 1 - first} of the dims from the critical one ({first}) on" in why
    assert f"dims {first}-{n - 2}: 2.00-2.00" in why and f"as far as {length // 2} trained positions" in why


def test_a_lead_within_two_standard_errors_is_called_noise():
    def result(hits):  # one task; hits: each sample's score
        return {"tasks": ["niah_single_1"], "samples": len(hits),
                "scores": {"niah_single_1": {"9000": sum(hits) / len(hits)}},
                "predictions": {"niah_single_1": {"9000": [[[str(i)], "", h] for i, h in enumerate(hits)]}}}

    # one sample in 20 right against none: +5 ± 5 is within noise; 10 against none: +50 ± 11.5 is not
    one, ten, none = result([1.0] + [0.0] * 19), result([1.0] * 10 + [0.0] * 10), result([0.0] * 20)
    text, tie = bench_ruler._noise(one, {"ntk": none}, 9000)
    assert tie and text == ("found - ntk +5.0 ± 5.0 (paired standard error over 20 samples): "
                            "within two standard errors of ntk")
    text, tie = bench_ruler._noise(ten, {"ntk": none, "yarn": one}, 9000)
    assert not tie and text.startswith("found - ntk +50.0 ± 11.5; found - yarn +45.0 ± ")
    assert text.endswith("beyond noise")


def test_all_without_the_million_model_runs_the_1m_baselines(tmp_path, monkeypatch):
    factors = tmp_path / "pocket-yarn.json"
    save_factors(make_factors("yarn", rope_base(load_config(resolve_model("pocket"))), 4), factors)
    out = tmp_path / "ruler"
    monkeypatch.setattr(sys, "argv", [
        "bench_ruler.py", "all", "--lengths-64k", "600", "--lengths-128k", "600", "--lengths-1m", "600",
        "--model", "pocket", "--factors", str(factors), "--tasks", "niah_single_1", "--samples", "1",
        "--max-new-tokens", "2", "--data", "builtin", "--out", str(out)])
    bench_ruler.main()
    assert sorted(json.loads((out / "ruler-1m.json").read_text())["ruler"]) == ["ntk", "yarn"]
    assert not (out / "ruler-1m-found.json").exists()
