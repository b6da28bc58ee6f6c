"""No file ropesearch writes is written through a link it did not make (issue 35, item 1).

A planted `.lock` or `history.jsonl` that links to a victim file is one `Error:` line, exit
status 1, and the victim is unchanged: through `search --out`, `search --resume` and
`run --resume`. Whole files written by temp file + rename replace a link, never follow it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from ropesearch.cli import cli

ROOT = Path(__file__).resolve().parents[1]
# the pocket model at the smallest budget: one generation of a few candidates
SEARCH = ["search", "--model", "pocket", "--target-length", "512", "--max-evals", "2", "--samples", "1",
          "--device", "cpu"]
VICTIM_TEXT = "my notes, not a lock\n"


def one_error_line(args) -> str:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1, result.output
    assert not (result.exception and not isinstance(result.exception, SystemExit)), result.exception
    # progress lines (`[1/1] 01-search`) may come first: the failure is one Error: line, the last
    errors = [line for line in lines if line.startswith("Error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in result.output, result.output
    return errors[0]


@pytest.fixture
def victim(tmp_path) -> Path:
    path = tmp_path / "victim.txt"
    path.write_text(VICTIM_TEXT)
    return path


@pytest.fixture(scope="module")
def pocket_run(tmp_path_factory):
    """A finished pocket search (tiny budget), to copy and plant links into."""
    run = tmp_path_factory.mktemp("pocket") / "r"
    result = CliRunner().invoke(cli, SEARCH + ["--out", str(run)])
    assert result.exit_code == 0, result.output
    return run


def test_a_symlinked_lock_of_a_new_search_is_refused_and_its_target_kept(victim, tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / ".lock").symlink_to(victim)
    line = one_error_line(SEARCH + ["--out", run])
    assert f"{run / '.lock'} is a symbolic link" in line
    assert victim.read_text() == VICTIM_TEXT
    assert sorted(p.name for p in run.iterdir()) == [".lock"]  # nothing else written


def test_a_hard_linked_lock_is_refused_too(victim, tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    os.link(victim, run / ".lock")
    assert "hard links" in one_error_line(SEARCH + ["--out", run])
    assert victim.read_text() == VICTIM_TEXT


@pytest.mark.parametrize("planted", [".lock", "history.jsonl"])
def test_search_resume_refuses_a_symlinked_lock_or_history(pocket_run, victim, tmp_path, planted):
    run = Path(shutil.copytree(pocket_run, tmp_path / "r"))
    if planted == "history.jsonl":
        victim.write_bytes((run / planted).read_bytes())  # the same records: only the link is wrong
    (run / planted).unlink(missing_ok=True)
    (run / planted).symlink_to(victim)
    before = victim.read_bytes()
    line = one_error_line(SEARCH + ["--max-evals", "4", "--out", run, "--resume"])
    assert f"{run / planted} is a symbolic link" in line
    assert victim.read_bytes() == before


@pytest.mark.parametrize("planted", [".lock", "01-search/search/.lock", "01-search/search/history.jsonl"])
def test_run_resume_refuses_a_symlinked_lock_or_history(pocket_run, victim, tmp_path, planted):
    plan = yaml.safe_load((ROOT / "search_spaces" / "plans" / "pocket-quickstart.yaml").read_text())
    plan["stages"] = [{"search": {"target": 512, "space": "fast", "max_evals": 2, "samples": 1}}]
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump(plan))
    out = tmp_path / "plan-run"
    result = CliRunner().invoke(cli, ["run", str(tmp_path / "plan.yaml"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    (out / "01-search" / "done.json").unlink()  # the search stage runs again on --resume
    target = out / planted
    if target.exists():
        victim.write_bytes(target.read_bytes())
    target.unlink(missing_ok=True)
    target.symlink_to(victim)
    before = victim.read_bytes()
    line = one_error_line(["run", tmp_path / "plan.yaml", "--out", out, "--resume"])
    assert f"{target} is a symbolic link" in line
    assert victim.read_bytes() == before


def test_a_history_appended_in_place_is_never_a_link(tmp_path, victim):
    from ropesearch.errors import RopesearchError
    from ropesearch.own_files import append_own

    (tmp_path / "history.jsonl").symlink_to(victim)
    with pytest.raises(RopesearchError, match="symbolic link"):
        append_own(tmp_path / "history.jsonl", b"{}\n", "the history")
    os.mkfifo(tmp_path / "fifo")  # a FIFO is refused at once, never waited on
    with pytest.raises(RopesearchError, match="not a regular file"):
        append_own(tmp_path / "fifo", b"{}\n", "the history")
    assert victim.read_text() == VICTIM_TEXT


def test_plots_replace_a_planted_link_instead_of_writing_through_it(tmp_path, victim):
    from ropesearch.report.plots import _save
    import matplotlib.pyplot as plt

    (tmp_path / "ppl.png").symlink_to(victim)
    figure, axis = plt.subplots()
    axis.plot([1, 2], [3, 4])
    _save(figure, tmp_path / "ppl.png")
    assert victim.read_text() == VICTIM_TEXT
    assert not (tmp_path / "ppl.png").is_symlink() and (tmp_path / "ppl.png").read_bytes()[:4] == b"\x89PNG"
