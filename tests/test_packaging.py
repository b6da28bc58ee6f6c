"""The wheel carries what the package reads at run time; shipped names resolve; YAML errors say where."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from ropesearch import resources
from ropesearch.errors import RopesearchError
from ropesearch.pipeline.plan import load_plan
from ropesearch.search.space import load_space

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", out, ROOT],
                   check=True, capture_output=True)
    return next(out.glob("ropesearch-*.whl"))


def test_wheel_holds_every_module_plan_space_and_lm_eval_task(wheel):
    held = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"ropesearch/{p.relative_to(ROOT / 'ropesearch')}" for p in (ROOT / "ropesearch").rglob("*.py")}
    expected |= {f"ropesearch/search_spaces/{p.relative_to(ROOT / 'search_spaces')}"
                 for p in (ROOT / "search_spaces").rglob("*.yaml")}
    expected |= {f"ropesearch/lm_eval_tasks/{p.name}" for p in (ROOT / "eval" / "tasks").iterdir() if p.is_file()}
    assert "ropesearch/search_spaces/plans/pocket-quickstart.yaml" in expected
    assert sorted(expected - held) == []


def test_an_unpacked_wheel_finds_shipped_names_outside_the_tree(wheel, tmp_path):
    # importlib.resources, not the source tree: the wheel unpacked where no checkout is around it
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    script = ("from ropesearch import resources as r\n"
              "print(r.names(r.PLANS), r.names(r.SPACES), r.file(r.LM_EVAL_TASKS, 'ropesearch_passkey.yaml').is_file())\n"
              "from ropesearch.pipeline.plan import load_plan\nprint(load_plan('pocket-quickstart').model)")
    shown = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                           env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"})
    assert shown.returncode == 0, shown.stderr
    assert "'pocket-quickstart'" in shown.stdout and "'fast'" in shown.stdout and shown.stdout.split()[-2:] == ["True", "pocket"]


def test_every_shipped_plan_and_space_loads_by_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    plans = {p.stem for p in (ROOT / "search_spaces" / "plans").glob("*.yaml")}
    spaces = {p.stem for p in (ROOT / "search_spaces").glob("*.yaml")}
    assert set(resources.names(resources.PLANS)) == plans and set(resources.names(resources.SPACES)) == spaces
    assert all(load_plan(name).name for name in plans) and all(load_space(name).name == name for name in spaces)


def test_unknown_names_list_the_shipped_ones_and_an_empty_list_is_a_broken_install(tmp_path, monkeypatch):
    with pytest.raises(RopesearchError, match=r"usable by name: llama2-7b-2048k, pocket-quickstart, .*\)$"):
        load_plan("no-such-plan")
    with pytest.raises(RopesearchError, match=r"usable by name: fast, longrope, longrope2, million\)$"):
        load_space("no-such-space")
    empty = resources.Kind("plan", "ropesearch.no_such_package", "", "no/such/folder", ".yaml")
    with pytest.raises(RopesearchError, match="installation is broken"):
        resources.load_yaml("no-such-plan", empty)


def test_yaml_syntax_errors_name_file_line_and_column(tmp_path):
    plan = tmp_path / "plan.yaml"
    plan.write_text("name: x\nmodel: pocket\nstages:\n  - search: {target: 2k\n  - export: {}\n")
    with pytest.raises(RopesearchError, match=rf"plan {plan}, line 5, column 11: not valid YAML"):
        load_plan(plan)
    space = tmp_path / "space.yaml"
    space.write_text("name: x\n  samples: 2\n")
    with pytest.raises(RopesearchError, match=rf"search space {space}, line 2, column 10: not valid YAML"):
        load_space(space)
