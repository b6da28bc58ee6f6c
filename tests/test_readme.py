"""The README's quickstart, as written, on the pocket model with tiny budgets: the docs cannot rot.

The ```sh block under "## Quickstart" is taken from README.md; continuation lines are joined,
comments dropped, and every `ropesearch` command runs in an empty directory (so relative paths
work from anywhere) with budgets cut: a search of a few evaluations, one sample per length.
"""

import re
import shlex
from pathlib import Path

from click.testing import CliRunner

from ropesearch.cli import cli

README = Path(__file__).resolve().parents[1] / "README.md"
TINY = {"--time-budget": ("--max-evals", "6"), "--samples": ("--samples", "1")}


def quickstart_commands() -> list[list[str]]:
    text = README.read_text()
    block = re.search(r"## Quickstart\n.*?```sh\n(.*?)```", text, re.S).group(1)
    joined = re.sub(r"\\\n\s*", " ", block)
    commands = []
    for line in joined.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            commands.append(shlex.split(line))
    return commands


def tiny_budget(args: list[str]) -> list[str]:
    out, i = [], 0
    while i < len(args):
        if args[i] in TINY:
            out += list(TINY[args[i]])
            i += 2
        else:
            out.append(args[i])
            i += 1
    return out


def test_readme_quickstart_runs(tmp_path, monkeypatch):
    commands = quickstart_commands()
    assert len(commands) >= 5 and all(c[0] == "ropesearch" for c in commands), commands
    monkeypatch.chdir(tmp_path)
    for command in commands:
        result = CliRunner().invoke(cli, tiny_budget(command[1:]))
        assert result.exit_code == 0, f"{shlex.join(command)}\n{result.output}"
    # what the block promises exists
    assert (tmp_path / "runs" / "pocket-8x" / "best.json").is_file()
    assert (tmp_path / "runs" / "pocket-8x" / "report" / "report.md").is_file()
    assert (tmp_path / "pocket-2048" / "README.md").is_file()


def test_readme_runtime_table_is_the_model_cards():
    """The README's table of what each runtime reads is the one every exported model card prints."""
    from ropesearch.export.portable import runtime_table

    assert "\n".join(runtime_table("N")) in README.read_text()
