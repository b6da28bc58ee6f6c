"""Issue 34's smaller frictions: each a one-line fix a first user should not have to find out about."""

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
