"""`ropesearch lm-eval` is quick and quiet: perplexity documents cut to the requested lengths, --limit keeps
every length and depth, lm-eval's logging hidden unless -v, and --data defaults to builtin."""

import json
import time

from click.testing import CliRunner

from ropesearch.cli import cli


def test_small_limit_keeps_every_length_and_depth_and_stays_quiet(tiny_model_dir, tmp_path, capfd):
    model, _ = tiny_model_dir
    started = time.perf_counter()
    result = CliRunner().invoke(cli, ["lm-eval", "--model", str(model), "--tasks", "ropesearch_passkey,ropesearch_ppl",
                                      "--lengths", "1k,512", "--limit", "2", "--methods", "none", "--workdir",
                                      str(tmp_path / "work"), "--json", str(tmp_path / "out.json")])
    seconds = time.perf_counter() - started
    assert result.exit_code == 0, result.output
    captured = capfd.readouterr()
    assert " INFO " not in captured.err + result.output and " WARNING " not in captured.err + result.output
    passkey = [json.loads(line) for line in (tmp_path / "work" / "none" / "ropesearch_passkey.jsonl").open()]
    assert {(r["length"], r["depth"]) for r in passkey} == {(n, d) for n in (512, 1024) for d in (0.1, 0.5, 0.9)}
    ppl = [json.loads(line) for line in (tmp_path / "work" / "none" / "ropesearch_ppl.jsonl").open()]
    assert sorted(r["tokens"] for r in ppl) == [512, 1024]  # builtin documents, cut: never a whole file
    scores = json.loads((tmp_path / "out.json").read_text())["lm_eval"]["none"]
    assert set(scores["results"]) == {"ropesearch_passkey", "ropesearch_ppl"}
    assert seconds < 120
