"""Issue 34's smaller frictions: each a one-line fix a first user should not have to find out about."""

import json
import time

import pytest
from click.testing import CliRunner

from ropesearch.cli import cli


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_line_error(result) -> str:
    assert result.exit_code != 0 and "Traceback" not in result.output, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.output
    return lines[0]


@pytest.fixture
def hub_unreachable(monkeypatch, tmp_path):
    """The hub client as on a machine without network: not offline by setting, the endpoint a closed port."""
    from huggingface_hub import constants

    from ropesearch.models import loading

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    loading._reachable.cache_clear()
    yield tmp_path / "hub"
    loading._reachable.cache_clear()


def test_a_typo_of_a_model_name_fails_at_once_with_did_you_mean(hub_unreachable):
    start = time.monotonic()
    line = one_line_error(run("factors", "none", "--model", "pokcet", "--scale", 2))
    assert "did you mean pocket?" in line
    assert "did you mean smollm2-135m?" in one_line_error(run("factors", "none", "--model", "smollm2", "--scale", 2))
    assert time.monotonic() - start < 10


def test_a_hub_id_without_network_is_one_line_without_retries(hub_unreachable):
    start = time.monotonic()
    line = one_line_error(run("factors", "none", "--model", "someone/some-model", "--scale", 2))
    assert "not in the local cache" in line and "cannot be reached" in line
    assert time.monotonic() - start < 10

    from ropesearch.models import resolve_model

    snapshot = hub_unreachable / "models--someone--some-model" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (hub_unreachable / "models--someone--some-model" / "refs").mkdir()
    (hub_unreachable / "models--someone--some-model" / "refs" / "main").write_text("abc")
    ref = resolve_model("someone/some-model")  # cached: read from the cache alone, no network tried
    assert ref.kwargs == {"local_files_only": True}


@pytest.mark.parametrize("lengths", ["256,,1024", "256,1024,", ",256"])
def test_b_an_empty_item_in_lengths_is_an_error_naming_the_fix(lengths):
    line = one_line_error(run("eval", "--model", "pocket", "--method", "none", "--lengths", lengths))
    assert "--lengths has an empty item" in line and "256" in line
    from ropesearch.units import parse_token_list

    assert parse_token_list("256, 1k") == [256, 1024]


def test_c_ctrl_c_says_the_work_is_saved_and_resume_continues(monkeypatch, tmp_path):
    from ropesearch.search import session

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(session, "run_search", interrupted)
    result = run("search", "--model", "pocket", "--target-length", "2k", "--out", tmp_path / "run")
    assert result.exit_code == 130
    assert "Aborted" not in result.output
    assert f"saved in {tmp_path / 'run'}" in result.output and "again with --resume" in result.output

    from ropesearch.evaluate import runs

    monkeypatch.setattr(runs, "setup", interrupted)  # a command without --resume keeps nothing
    result = run("eval", "--model", "pocket", "--method", "none", "--lengths", "256")
    assert result.exit_code == 130 and "keeps nothing until it finishes" in result.output


def test_d_plan_summary_is_readable_and_a_finished_run_shows_its_result_again(tmp_path, monkeypatch):
    import yaml

    monkeypatch.setenv("ROPESEARCH_CACHE", str(tmp_path / "cache"))
    plan = {"name": "frictions", "model": "pocket", "data": "builtin", "stages": [
        {"search": {"target": 512, "space": str(small_space(tmp_path)), "samples": 1, "max_evals": 4}},
        {"export": {"formats": ["csv"]}},
        {"evaluate": {"lengths": [256, 512], "methods": ["yarn"], "samples": 1}},
    ]}
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump(plan))
    out = tmp_path / "run"
    first = run("run", tmp_path / "plan.yaml", "--out", out)
    assert first.exit_code == 0, first.output
    summary = first.stdout.splitlines()
    assert len(summary) == 3 and "{}" not in first.stdout and "[" not in first.stdout, first.stdout
    assert summary[0].startswith("01-search: best ppl@512 ") and "best.json" in summary[0]
    assert summary[1].startswith("02-export: exported csv in ")  # was `02-export: {}`
    assert summary[2].startswith("03-evaluate: perplexity at 512 tokens: none ")
    import re

    assert not re.search(r"\d\.\d{3}", first.stdout), "numbers rounded"

    again = run("run", tmp_path / "plan.yaml", "--out", out, "--resume")
    assert again.exit_code == 0 and again.output.count("done earlier, skipped") == 3
    from ropesearch.evaluate.baselines import format_table

    table = format_table(json.loads((out / "03-evaluate" / "perplexity.json").read_text()))
    assert table in again.stderr and again.stdout == first.stdout  # the result again, and the same summary


def test_i_screening_rank_correlations_are_rounded():
    from ropesearch.search.screening import screen_rank_correlation

    screens, full = [3, 1, 4, 1.5, 5, 9, 2.6], [2, 7, 1, 8, 2.8, 1.8, 2.9]  # Spearman -0.7857142857...
    history = [{"genome": [i], "fidelity": "screen", "metrics": {"screen_ppl": s}} for i, s in enumerate(screens)]
    history += [{"genome": [i], "fidelity": "full", "metrics": {"ppl@9": f}} for i, f in enumerate(full)]
    rank = screen_rank_correlation(history)
    assert rank["spearman"] == -0.786 and rank["kendall"] == round(rank["kendall"], 3) != 0


def test_e_eval_says_which_windows_it_scored(tmp_path):
    result = run("eval", "--model", "pocket", "--method", "as-is", "--lengths", "128", "--samples", 2)
    assert result.exit_code == 0, result.output
    line = next(line for line in result.stderr.splitlines() if line.startswith("scored "))
    assert line.startswith("scored 2 windows of builtin (offset start, seed 0): ") and "@0" in line
    assert "not held out of any search" in line

    from ropesearch.evaluate.runs import WindowSpec, setup

    names = [w.name.split("@")[0] for w in setup("pocket", WindowSpec(samples=1), 128).windows]
    (tmp_path / "search").mkdir()
    (tmp_path / "search" / "config.json").write_text(json.dumps({"windows": [f"{names[0]}@0"]}))
    result = run("eval", "--model", "pocket", "--method", "as-is", "--lengths", "128", "--samples", 1,
                 "--heldout-of", tmp_path / "search")
    line = next(line for line in result.stderr.splitlines() if line.startswith("scored "))
    assert f"held out of {tmp_path / 'search'} (1 document left out)" in line and names[0] not in line


def small_space(tmp_path):
    import yaml

    space = yaml.safe_load(open("search_spaces/fast.yaml"))
    space["budget"].update(population=4, top_k=2, mutations=2, crossovers=1, generations=1)
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    return tmp_path / "space.yaml"


def test_f_the_wall_time_holds_the_evaluator_time(tmp_path, monkeypatch):
    monkeypatch.setenv("ROPESEARCH_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "search"
    result = run("search", "--model", "pocket", "--target-length", 512, "--space", small_space(tmp_path),
                 "--samples", 1, "--max-evals", 4, "--out", out)
    assert result.exit_code == 0, result.output
    last = json.loads((out / "progress.json").read_text())[-1]
    assert 0 < last["evaluator_seconds"] <= last["elapsed"]  # the baselines before generation 0 count in both

    from ropesearch.report import build_report

    report = build_report(out, tmp_path / "report").read_text()
    assert "min wall over all sessions" in report and "min of it in the evaluator" in report


def _rope_warnings(extra: dict) -> list[str]:
    """What transformers' RoPE logger says when a config with our exported rope_parameters is built."""
    import logging

    import transformers

    import ropesearch.export.transformers_config  # noqa: F401  (installs the filter, as every command does)

    messages = []

    class Collect(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    logger, handler = logging.getLogger("transformers.modeling_rope_utils"), Collect()
    logger.addHandler(handler)
    level = transformers.logging.get_verbosity()  # loading a model elsewhere sets it to errors only
    transformers.logging.set_verbosity_warning()
    try:
        params = {"rope_type": "longrope", "rope_theta": 1e4, "long_factor": [2.0] * 32, "short_factor": [1.0] * 32,
                  "original_max_position_embeddings": 256, "factor": 8.0, "attention_factor": 1.1, **extra}
        transformers.LlamaConfig(rope_parameters=params, max_position_embeddings=2048, hidden_size=256,
                                 num_attention_heads=4)
    finally:
        logger.removeHandler(handler)
        transformers.logging.set_verbosity(level)
    return messages


def test_vllm_mscale_keys_do_not_warn_but_other_unknown_keys_do():
    assert _rope_warnings({"long_mscale": 1.1, "short_mscale": 1.1}) == []
    warned = _rope_warnings({"long_mscale": 1.1, "bogus": 1})
    assert len(warned) == 1 and "bogus" in warned[0]


@pytest.mark.parametrize("command", ["passkey", "ruler", "baselines"])
def test_a_missing_or_damaged_factor_file_fails_before_the_model_loads(command, tmp_path):
    # the model does not exist either: the factor file, read as the options are parsed, is named first
    model = tmp_path / "absent.gguf"
    line = one_line_error(run(command, "--model", model, "--lengths", "1k", "--factors", f"found={tmp_path}/best.json"))
    assert f"factor file {tmp_path}/best.json does not exist" in line
    damaged = tmp_path / "damaged.json"
    damaged.write_text('{"format": "ropesearch/factors@1"')
    assert "damaged.json" in one_line_error(run(command, "--model", model, "--lengths", "1k", "--factors", damaged))
    assert "absent.gguf does not exist" in one_line_error(run(command, "--model", model, "--lengths", "1k"))
