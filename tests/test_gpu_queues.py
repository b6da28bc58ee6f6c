"""Every job line of eval/queues/*.txt parses as eval/gpu_queue.sh will run it, before a lease is spent
on it: `ropesearch` lines through the CLI's own parser (options, values, spaces and plans), `python
eval/SCRIPT` lines through the script's parse_args, and every repository path a line names exists.
A line may name files under /root/assets that an earlier job of its queue writes."""

import importlib.util
import shlex
from pathlib import Path

import click
import pytest

from ropesearch.cli import cli
from ropesearch.errors import RopesearchError
from ropesearch.pipeline.plan import load_plan
from ropesearch.search.space import load_space

ROOT = Path(__file__).resolve().parents[1]
QUEUES = sorted((ROOT / "eval" / "queues").glob("*.txt"))
MADE_ON_THE_MACHINE = "/root/assets/"
REPO_DIRS = ("results/", "search_spaces/", "eval/")


def jobs(queue: Path) -> list[str]:
    return [s for s in (line.strip() for line in queue.read_text().splitlines()) if s and not s.startswith("#")]


def _repo_paths(words: list[str]) -> list[str]:
    """Repository paths a line names: a word, or the part after `label=`, that starts with a repo folder."""
    return [p for w in words for p in (w, w.partition("=")[2]) if p.startswith(REPO_DIRS)]


def _ropesearch(words: list[str]) -> None:
    ctx = cli.make_context("ropesearch", list(words))
    command = cli.get_command(ctx, words[0])
    if command is None:
        raise click.UsageError(f"no command {words[0]!r}")
    try:
        params = command.make_context(words[0], words[1:], parent=ctx).params
    except RopesearchError as e:  # a factor file an earlier job writes
        if MADE_ON_THE_MACHINE not in str(e):
            raise
        return
    if params.get("space"):
        load_space(params["space"])
    if words[0] == "run":
        load_plan(ROOT / params["plan"])


def _script(words: list[str]) -> None:
    path = ROOT / words[0]
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert hasattr(module, "parse_args"), f"{words[0]} needs a parse_args(argv) for its queue lines to be checked"
    module.parse_args(words[1:])


def check(line: str) -> None:
    """Raises what the job would fail with at its start (a usage error, a bad value, a missing path)."""
    words = shlex.split(line)
    missing = [p for p in _repo_paths(words) if not (ROOT / p).exists()]
    if missing:
        raise FileNotFoundError(f"{line!r} names {', '.join(missing)}, not in the repository")
    if words[0] == "sh":
        return
    if words[0] in ("python", "python3"):
        _script(words[1:])
    else:
        _ropesearch(words)


@pytest.mark.parametrize("queue", QUEUES, ids=lambda q: q.name)
def test_queue_lines_parse(queue):
    assert jobs(queue), f"{queue.name} has no jobs"
    for line in jobs(queue):
        try:
            check(line)
        except (click.ClickException, RopesearchError, SystemExit, FileNotFoundError) as e:
            pytest.fail(f"{queue.name}: {line}\n  -> {type(e).__name__}: {getattr(e, 'message', e)}")


@pytest.mark.parametrize("line, error", [
    ("search --model pocket --target-lenght 256k --out x", click.NoSuchOption),
    ("search --model pocket --target-length 256q --out x", click.BadParameter),
    ("search --model pocket --target-length 1k", click.MissingParameter),  # no --out
    ("search --model pocket --target-length 1k --out x --space no-such-space", RopesearchError),
    ("baselines --model pocket --lengths 1k --factors a=/elsewhere/best.json", RopesearchError),
    ("sh cp -r results/no-such-run /root/assets/runs/", FileNotFoundError),
    ("python eval/compare_objectives.py --target 1k", SystemExit),  # no budget
    ("python eval/bench_finetune.py --lengths 64k,12x", RopesearchError),
    ("run search_spaces/plans/no-such-plan.yaml", FileNotFoundError),
])
def test_a_bad_line_is_caught(line, error):
    with pytest.raises(error):
        check(line)


def test_a_file_an_earlier_job_writes_passes():
    check("baselines --model pocket --lengths 1k --factors f=/root/assets/runs/search/best.json")


def test_a_bad_plan_is_caught(tmp_path):
    plan = tmp_path / "plan.yaml"
    plan.write_text("name: p\nmodel: pocket\nstages:\n  - search: {target: 1024, spaec: fast}\n")
    with pytest.raises(RopesearchError, match="unknown search setting 'spaec'"):
        check(f"run {plan}")
