"""Conventions every command shares: token counts like 2k/1M, --dtype, shipped plans and spaces by name
from any directory, and `--method as-is` scoring an exported folder as shipped."""

import json
import math

import pytest
from click.testing import CliRunner

from ropesearch.cli import cli
from ropesearch.errors import RopesearchError
from ropesearch.pipeline.plan import load_plan
from ropesearch.search.space import load_space
from ropesearch.units import parse_token_list, parse_tokens


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_token_counts():
    assert [parse_tokens(x) for x in ("300", "2k", "32K", "1M", "1.5k", 4096)] == [300, 2048, 32768, 1 << 20, 1536, 4096]
    assert parse_token_list("32k,2048,2k") == [2048, 32768]
    for bad in ("2q", "k", "1.3k", "-5"):
        with pytest.raises(RopesearchError):
            parse_tokens(bad, "--target-length")


def test_every_length_option_takes_2k_and_bad_ones_fail_in_one_line(tmp_path):
    result = run("search", "--model", "pocket", "--target-length", "2q", "--out", tmp_path / "s")
    assert result.exit_code == 2 and "--target-length must be a token count like 2048, 2k or 1M" in result.output
    result = run("factors", "yarn", "--model", "pocket", "--scale", 4, "--original-context", "1k")
    assert result.exit_code == 0 and "window 1024 -> 4096" in result.output


def test_shipped_plans_and_spaces_by_name_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_plan("pocket-quickstart").model == "pocket"
    assert load_plan("search_spaces/plans/pocket-quickstart.yaml").name == "pocket-quickstart"  # the README's form
    assert load_space("fast").name == "fast"
    with pytest.raises(RopesearchError, match="shipped plans, usable by name: .*pocket-quickstart"):
        load_plan("no-such-plan")
    (tmp_path / "mine.yaml").write_text("name: mine\nmodel: pocket\nstages:\n  - search: {target: 2k}\n")
    assert load_plan("mine.yaml").stages[0].settings.target == 2048


def test_as_is_scores_an_exported_folder_as_shipped_and_dtype_is_honoured(tmp_path):
    factors = tmp_path / "yarn4.json"
    assert run("factors", "yarn", "--model", "pocket", "--scale", 4, "--out", factors).exit_code == 0
    assert run("export", factors, "--model", "pocket", "--out", tmp_path / "folder").exit_code == 0
    common = ("--lengths", "256,1k", "--samples", 1)
    assert run("eval", "--model", "pocket", "--factors", factors, *common, "--json", tmp_path / "f.json").exit_code == 0
    result = run("eval", "--model", tmp_path / "folder", "--method", "as-is", *common, "--json", tmp_path / "a.json")
    assert result.exit_code == 0, result.output
    patched = json.loads((tmp_path / "f.json").read_text())["ppl"]["yarn4.json"]
    as_is = json.loads((tmp_path / "a.json").read_text())
    assert as_is["scales"]["as-is"] == 4.0
    for length in ("256", "1024"):
        assert math.isclose(as_is["ppl"]["as-is"][length], patched[length], rel_tol=1e-5)
    result = run("eval", "--model", tmp_path / "folder", "--method", "none", *common, "--json", tmp_path / "n.json")
    assert json.loads((tmp_path / "n.json").read_text())["ppl"]["none"]["1024"] > 1.2 * patched["1024"]
    result = run("eval", "--model", "pocket", "--method", "none", "--lengths", "256", "--samples", 1, "--dtype",
                 "bfloat16", "--json", tmp_path / "b.json")
    assert result.exit_code == 0 and json.loads((tmp_path / "b.json").read_text())["environment"]["dtype"] == "bfloat16"
