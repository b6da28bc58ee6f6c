"""ropesearch.tables, the one table writer, and the rule that keeps it the only one: no other source in
ropesearch/ or eval/ spells a Markdown separator ("|---") in a string literal."""

import ast
from pathlib import Path

from ropesearch.evaluate.baselines import format_table
from ropesearch.tasks.ruler_eval import format_ruler
from ropesearch.tables import aligned, markdown, markdown_lines

ROOT = Path(__file__).resolve().parents[1]


def test_markdown_table_pads_short_rows_escapes_bars_and_str_s_cells():
    text = markdown(["name", "ppl", "note"], [["yarn", "12.34", "a|b"], ["pi", 7], []])
    assert text == ("| name | ppl | note |\n"
                    "|---|---|---|\n"
                    "| yarn | 12.34 | a\\|b |\n"
                    "| pi | 7 | |\n"
                    "| | | |")
    assert markdown_lines(["a"], []) == ["| a |", "|---|"]
    assert markdown(["", ""], [["k", "v"]]) == "| | |\n|---|---|\n| k | v |"  # an empty header, as the pocket card's


def test_aligned_table_right_justifies_with_a_rule_under_the_header():
    text = aligned(["length", "yarn"], [["256", "12.50"], ["65536", "7.1"], ["1k"]])
    assert text.splitlines() == ["length   yarn",
                                 "------  -----",
                                 "   256  12.50",
                                 " 65536    7.1",
                                 "    1k       "]
    assert aligned(["a", "bb"], [["123", "4"]], sep=" | ", rule=False) == "  a | bb\n123 |  4"


def test_the_cli_tables_keep_their_text():
    table = {"ppl": {"none": {"256": 12.345, "1024": 1234.5}, "yarn": {"256": 12.0}}, "lengths": [256, 1024],
             "original_context": 256, "scales": {"yarn": 4}}
    assert format_table(table) == ("length  x_window   none  yarn@x4\n"
                                   "------  --------  -----  -------\n"
                                   "   256         1  12.35    12.00\n"
                                   "  1024         4   1234        -")
    results = {"found": {"tasks": ["niah"], "scores": {"niah": {"4096": 0.5}}, "average": {"4096": 0.5}}}
    assert format_ruler(results) == "niah:\ntokens  found\n  4096   50.0\n\naverage:\ntokens  found\n  4096   50.0"


def _separators(path: Path, root: Path = ROOT) -> list[str]:
    """'file:line' of each string literal (f-string parts included) that holds a Markdown separator."""
    lines = sorted({node.lineno for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                    if isinstance(node, ast.Constant) and isinstance(node.value, str)
                    and ("|---" in node.value or "---|" in node.value)})
    return [f"{path.relative_to(root)}:{line}" for line in lines]


def test_no_markdown_table_is_built_by_hand_outside_ropesearch_tables():
    sources = [p for p in sorted((ROOT / "ropesearch").rglob("*.py")) + sorted((ROOT / "eval").rglob("*.py"))
               if p != ROOT / "ropesearch" / "tables.py"]
    assert len(sources) > 50
    hand_built = [place for path in sources for place in _separators(path)]
    assert not hand_built, f"build these tables with ropesearch.tables.markdown: {hand_built}"


def test_the_scan_sees_a_separator_wherever_a_literal_holds_one(tmp_path):
    sample = tmp_path / "x.py"
    sample.write_text('n = 2\nrows = ["| a | b |", "|---" * n + "|"]\nmore = f"{n}---|"\n', encoding="utf-8")
    assert _separators(sample, tmp_path) == ["x.py:2", "x.py:3"]
