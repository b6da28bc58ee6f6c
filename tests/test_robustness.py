"""Hostile and careless input: one `Error:` line, exit status 1, nothing written, nothing lost.

Property-based (hypothesis) over malformed factor files, search spaces, plans and CLI values;
explicit cases for the inputs found by hand; run directories killed, truncated, altered,
shared between two processes and planted with a pickle. None of the generated cases loads
a model: every one must be refused before that. Set ROPESEARCH_COUNT_INPUTS=1 to print how
many malformed inputs the module fed.
"""

from __future__ import annotations

import copy
import json
import math
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import DELETE, search_kwargs, with_value
from ropesearch.cli import cli
from ropesearch.errors import RopesearchError
from ropesearch.search.objectives import OBJECTIVES

ROOT = Path(__file__).resolve().parents[1]
POCKET = ROOT / "ropesearch" / "assets" / "pocket"
EXERCISED: Counter = Counter()  # malformed inputs fed, by kind
# derandomized: CI runs the same examples every time and writes no example database
PROPERTY = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module", autouse=True)
def _count_inputs():
    yield
    if os.environ.get("ROPESEARCH_COUNT_INPUTS"):
        sys.__stderr__.write(f"\nmalformed inputs exercised: {sum(EXERCISED.values())} {dict(EXERCISED)}\n")


@contextmanager
def fresh_file(name: str, content: str | bytes):
    """A new temporary folder holding one file: (folder, file)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        yield Path(folder), path


def snapshot(folder: Path) -> list:
    return sorted((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) if p.is_file()
                  else (str(p.relative_to(folder)), -1, -1) for p in folder.rglob("*"))


def refused(args, watch: Path, kind: str) -> str:
    """Run the CLI; assert one `Error:` line, exit status 1, no traceback and nothing written under `watch`."""
    before = snapshot(watch)
    # a guard, not a stand-in: an input that is not refused must not start a real (long) run
    with mock.patch("transformers.AutoModelForCausalLM.from_pretrained", side_effect=AssertionError("model loaded")):
        result = CliRunner().invoke(cli, [str(a) for a in args])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1, f"{args}: exit {result.exit_code}\n{result.output}"
    assert not (result.exception and not isinstance(result.exception, SystemExit)), result.exception
    assert len(lines) == 1 and lines[0].startswith("Error: "), f"{args}:\n{result.output}"
    assert snapshot(watch) == before, f"{args} wrote into {watch}"
    EXERCISED[kind] += 1
    return lines[0]


# ---- malformed factor files ----------------------------------------------------------------------
def pocket_factors() -> dict:
    from ropesearch.export.factor_file import factors_to_dict
    from ropesearch.models import load_config, resolve_model, rope_base
    from ropesearch.rope import make_factors

    base = rope_base(load_config(resolve_model("pocket")))
    return factors_to_dict(make_factors("yarn", base, 4.0), monotone=True)


VALID_FACTORS = pocket_factors()
N_FACTORS = len(VALID_FACTORS["rope"]["long_factor"])
REQUIRED_NUMBERS = ["rotary_dim", "rope_theta", "original_context", "target_context", "attention_factor"]
BAD_NUMBERS = [None, "x", "", -1, 0, True, [], {}, float("nan"), float("inf"), -math.inf]
BAD_FACTOR_LISTS = [[], [1.0] * (N_FACTORS - 1), [0.0] * N_FACTORS, [-1.0] * N_FACTORS, ["a"] * N_FACTORS,
                    [float("nan")] * N_FACTORS, [True] * N_FACTORS, "1,2,3", None, {}]


broken_factor_documents = st.one_of(
    st.builds(lambda k, v: with_value(VALID_FACTORS, ("rope", k), v), st.sampled_from(REQUIRED_NUMBERS),
              st.sampled_from(BAD_NUMBERS + [DELETE])),
    st.builds(lambda k, v: with_value(VALID_FACTORS, ("rope", k), v), st.sampled_from(["long_factor", "short_factor"]),
              st.sampled_from(BAD_FACTOR_LISTS + [DELETE])),
    st.builds(lambda v: with_value(VALID_FACTORS, ("rope", "start_tokens"), v), st.sampled_from([-1, "x", 1.5, True, []])),
    st.builds(lambda v: with_value(VALID_FACTORS, ("rope", "dynamic_factor"), v), st.sampled_from([0.5, -1, "x", []])),
    st.builds(lambda v: with_value(VALID_FACTORS, ("format",), v), st.one_of(st.text(max_size=20), st.integers())),
    st.builds(lambda v: with_value(VALID_FACTORS, ("constraints", "monotone"), v), st.sampled_from(["yes", 1, []])),
    st.builds(lambda k: with_value(VALID_FACTORS, (k,), DELETE), st.sampled_from(["format", "rope"])),
    st.recursive(st.none() | st.booleans() | st.floats() | st.text(max_size=8),
                 lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                 max_leaves=8),
)


@PROPERTY
@given(document=broken_factor_documents)
def test_malformed_factor_documents_are_refused_by_show_and_export(document):
    with fresh_file("factors.json", json.dumps(document)) as (folder, path):
        refused(["show", path], folder, "factor file")
        refused(["export", path, "--model", "pocket", "--out", folder / "out"], folder, "factor file (export)")


READERS = {  # a file name and the command that reads it
    "factors.json": lambda f, out: ["show", f],
    "space.yaml": lambda f, out: ["search", "--model", "pocket", "-t", 1024, "--space", f, "--out", out],
    "plan.yaml": lambda f, out: ["run", f, "--out", out],
    "long.csv": lambda f, out: ["factors", "longrope", "--model", "pocket", "--scale", 8, "--csv", f, "--out", out],
    "docs.jsonl": lambda f, out: ["search", "--model", "pocket", "-t", 1024, "--data", f, "--out", out],
}


@PROPERTY
@given(content=st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode)),
       name=st.sampled_from(sorted(READERS)))
def test_random_bytes_are_refused_wherever_a_file_is_read(content, name):
    with fresh_file(name, content) as (folder, path):
        refused(READERS[name](path, folder / "out"), folder, f"random bytes ({name})")


# ---- malformed search spaces ---------------------------------------------------------------------
FAST = yaml.safe_load((ROOT / "search_spaces" / "fast.yaml").read_text())
NUMBER_FIELDS = [("factors", "low"), ("factors", "high"), ("factors", "step"), ("operators", "mutation_prob"),
                 ("operators", "mutation_sigma"), ("budget", "population"), ("budget", "generations"),
                 ("budget", "mutations"), ("budget", "crossovers"), ("budget", "top_k"), ("budget", "max_evals"),
                 ("budget", "time_minutes"), ("budget", "patience"), ("budget", "min_improvement"),
                 ("fidelity", "screen_samples"), ("fidelity", "promote"), ("fidelity", "screen_length_fraction"),
                 ("samples",)]
TEXT_FIELDS = [("operators", "mutation"), ("operators", "crossover"), ("algorithm",), ("objective",), ("name",),
               ("description",)]
BOOL_FIELDS = [("factors", "monotone"), ("fidelity", "initial")]
not_a_number = st.one_of(st.text(max_size=6), st.lists(st.integers(), min_size=1, max_size=2), st.booleans(),
                         st.sampled_from([float("nan"), float("inf"), {"a": 1}]))
OUT_OF_RANGE = {("factors", "low"): -1, ("factors", "step"): 0, ("operators", "mutation_prob"): 2,
                ("operators", "mutation_sigma"): -0.1, ("budget", "population"): 1, ("budget", "generations"): -1,
                ("budget", "top_k"): 1, ("budget", "max_evals"): 0, ("budget", "time_minutes"): 0,
                ("budget", "patience"): 0, ("budget", "min_improvement"): -0.5, ("fidelity", "screen_samples"): 0,
                ("fidelity", "promote"): 0, ("fidelity", "screen_length_fraction"): 1.5, ("samples",): 0}


def _space_with(path: tuple, value) -> dict:
    document = copy.deepcopy(FAST)
    return with_value(document, path, value)


broken_spaces = st.one_of(
    st.builds(_space_with, st.sampled_from(NUMBER_FIELDS), not_a_number),
    st.builds(lambda item: _space_with(*item), st.sampled_from(sorted(OUT_OF_RANGE.items()))),
    st.builds(_space_with, st.sampled_from(TEXT_FIELDS), st.one_of(st.integers(), st.lists(st.text(max_size=3)))),
    st.builds(_space_with, st.sampled_from(TEXT_FIELDS[:4]),
              st.text(max_size=8).filter(lambda t: t not in ("segment", "neighbour", "uniform", "one-point", "blend",
                                                              "ga", "nsga2", "ppl", "needle", "ppl+short"))),
    st.builds(_space_with, st.sampled_from(BOOL_FIELDS), st.one_of(st.integers(), st.text(max_size=4))),
    st.builds(_space_with, st.sampled_from([("seeds",), ("start_tokens",), ("attention_factor",)]),
              st.one_of(st.text(min_size=1, max_size=4), st.integers(), st.just([[1], "a"]))),
    st.builds(_space_with, st.sampled_from([("factors",), ("budget",), ("fidelity",), ("operators",)]),
              st.one_of(st.text(min_size=1, max_size=4), st.integers(), st.lists(st.integers(), min_size=1))),
    st.builds(lambda key: _space_with((key,), 1), st.text(min_size=1, max_size=6).filter(lambda k: k not in FAST)),
    st.builds(lambda: with_value(FAST, ("name",), DELETE)),
    st.text(max_size=30),  # not a mapping at all
)


@PROPERTY
@given(space=broken_spaces)
def test_malformed_spaces_are_refused_before_the_model_loads(space):
    with fresh_file("space.yaml", yaml.safe_dump(space) if not isinstance(space, str) else space + "\n: [") as (
            folder, path):
        refused(["search", "--model", "pocket", "--target-length", 1024, "--space", path, "--out", folder / "run"],
                folder, "search space")


# ---- malformed plans ---------------------------------------------------------------------------------
QUICKSTART = yaml.safe_load((ROOT / "search_spaces" / "plans" / "pocket-quickstart.yaml").read_text())
PLAN_SETTINGS = [(0, "target"), (0, "time_minutes"), (0, "samples"), (0, "max_evals"), (0, "seed"), (0, "space"),
                 (0, "objective"), (0, "relative"), (1, "formats"), (2, "lengths"), (2, "methods"), (2, "samples"),
                 (2, "passkey"), (2, "passkey_depths"), (2, "passkey_trials")]
BAD_SETTING = {"target": ["big", 1, -5, 2.5, [1]], "time_minutes": ["x", 0, -1, True], "samples": [0, "two", 1.5],
               "max_evals": [0, "x", []], "seed": [-1, "x"], "space": [5, "no-such-space", []],
               "objective": [3, "bleu"], "relative": ["yes", 1], "formats": ["hf", ["onnx"], [], [1]],
               "lengths": ["1k", [0], ["a"], 5], "methods": [["rope9"], "pi", [1]], "passkey": ["yes", 2],
               "passkey_depths": [[1.5], ["a"], 0.5], "passkey_trials": [0, "x"]}
BAD_TOP = {"name": [5, "../escape", "", "a b"], "model": [5, "./no-such-model"], "device": ["gpu", "cuda:x", 3, "tpu"],
           "data": [5, "./no-such-folder", {"search": 5}, {"colour": "x"}], "stages": [[], "search", [{"warp": {}}],
                                                                                      [{"export": {}}]]}


def _plan_with(stage: int, key: str, value) -> dict:
    plan = copy.deepcopy(QUICKSTART)
    settings_ = plan["stages"][stage]
    kind = next(iter(settings_))
    settings_[kind] = dict(settings_[kind] or {}, **{key: value})
    return plan


broken_plans = st.one_of(
    st.sampled_from(PLAN_SETTINGS).flatmap(lambda item: st.sampled_from(BAD_SETTING[item[1]]).map(
        lambda value: _plan_with(item[0], item[1], value))),
    st.sampled_from(sorted(BAD_TOP)).flatmap(lambda key: st.sampled_from(BAD_TOP[key]).map(
        lambda value: with_value(QUICKSTART, (key,), value))),
    st.builds(lambda key: with_value(QUICKSTART, (key,), DELETE), st.sampled_from(["name", "model", "stages"])),
)


@PROPERTY
@given(plan=broken_plans)
def test_malformed_plans_are_refused_before_anything_is_written(plan):
    with fresh_file("plan.yaml", yaml.safe_dump(plan)) as (folder, path):
        refused(["run", path, "--out", folder / "run"], folder, "plan")


# ---- malformed CLI values ----------------------------------------------------------------------
printable = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=8)
not_int = printable.filter(lambda t: not re.fullmatch(r"\+?\d+", t.strip()))
not_positive_number = st.one_of(st.floats(max_value=0), st.sampled_from(["nan", "inf", "-inf", "x", "1e999"]),
                                printable.filter(lambda t: not re.fullmatch(r"[+]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?", t)))
SEARCH_VALUES = {
    "--max-evals": st.one_of(st.integers(max_value=0), not_int),
    "--time-budget": not_positive_number,
    "--samples": st.one_of(st.integers(max_value=0), not_int),
    "--seed": st.one_of(st.integers(max_value=-1), st.integers(min_value=2**32), not_int),
    "--max-batch": st.one_of(st.integers(max_value=0), not_int),
    "--target-length": st.one_of(st.integers(max_value=1), not_int),
    "--device": st.one_of(st.sampled_from(["gpu", "cuda", "cuda:0", "tpu", "cpu:x", "meta", "cuda:-1"]),
                          printable.filter(lambda t: not re.fullmatch(r"(cpu|mps)(:\d+)?", t))),
    "--objective": printable.filter(lambda t: t not in OBJECTIVES),
    "--backend": printable.filter(lambda t: t not in ("torch", "vllm")),
}


@PROPERTY
@given(option=st.sampled_from(sorted(SEARCH_VALUES)).flatmap(lambda o: st.tuples(st.just(o), SEARCH_VALUES[o])))
def test_malformed_search_values_are_refused_before_anything_is_written(option):
    import torch

    name, value = option
    if name == "--device" and str(value).startswith("cuda") and torch.cuda.is_available():
        return  # only a CPU machine makes every cuda value wrong
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        args = ["search", "--model", "pocket", "--target-length", 1024, "--out", folder / "run", f"{name}={value}"]
        refused(args, folder, "search option")


EVAL_VALUES = {"--samples": st.integers(max_value=0), "--seed": st.integers(max_value=-1),
               "--lengths": st.sampled_from(["", "x", "0", "1", "4k,abc", ",", "-5"]),
               "--scale": not_positive_number, "--max-batch": st.integers(max_value=0)}


@PROPERTY
@given(option=st.sampled_from(sorted(EVAL_VALUES)).flatmap(lambda o: st.tuples(st.just(o), EVAL_VALUES[o])))
def test_malformed_eval_values_are_refused(option):
    name, value = option
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        args = ["eval", "--model", "pocket", "--method", "yarn", "--lengths", "512", "--json", folder / "t.json",
                f"{name}={value}"]
        refused(args, folder, "eval option")


# ---- the cases found by hand ----------------------------------------------------------------------------
@pytest.fixture
def workspace(tmp_path):
    """A copy of the pocket model, a factor file for it, a text data folder and a folder of random bytes."""
    model = tmp_path / "mypocket"
    shutil.copytree(POCKET, model)
    (tmp_path / "pi8.json").write_text(json.dumps(with_value(VALID_FACTORS, ("rope", "method"), "pi")))
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text((ROOT / "README.md").read_text())
    noise = tmp_path / "noise"
    noise.mkdir()
    for i in range(3):
        (noise / f"{i}.txt").write_bytes(os.urandom(4000))
    return tmp_path


SEARCH = ["search", "--model", "pocket", "--target-length", 1024]


@pytest.mark.parametrize("args,message", [
    (SEARCH + ["--max-evals", "0"], "--max-evals"),
    (SEARCH + ["--time-budget", "0"], "--time-budget"),
    (SEARCH + ["--samples", "-2"], "--samples"),
    (SEARCH + ["--device", "gpu"], "--device"),
    (SEARCH + ["--device", "cuda:99"], "--device"),
    (["eval", "--model", "pocket", "--method", "pi", "--lengths", "512", "--device", "cuda:99"], "--device"),
    (["factors", "yarn", "--model", "pocket", "--scale", "nan"], "--scale"),
    (["factors", "yarn", "--model", "pocket", "--scale", "0.5"], "--scale"),
    (["passkey", "--model", "pocket", "--lengths", "512", "--depths", "1.5"], "--depths"),
    (["passkey", "--model", "pocket", "--lengths", "512", "--trials", "0"], "--trials"),
])
def test_found_bad_values_are_one_line(args, message, tmp_path):
    assert message in refused(args + ["--out", tmp_path / "run"] if args[0] == "search" else args, tmp_path, "found")


def test_found_bad_files_are_one_line_and_write_nothing(workspace):
    space = yaml.safe_load((ROOT / "search_spaces" / "fast.yaml").read_text()) | {"samples": "two"}
    (workspace / "space.yaml").write_text(yaml.safe_dump(space))
    line = refused(SEARCH + ["--space", workspace / "space.yaml", "--out", workspace / "run"], workspace, "found")
    assert "samples must be a whole number" in line
    plan = _plan_with(0, "target", "big")
    (workspace / "plan.yaml").write_text(yaml.safe_dump(plan))
    # plans take token counts (2048, 2k, 1M), so a word is refused as one
    assert "target must be a token count" in refused(["run", workspace / "plan.yaml", "--out", workspace / "r"],
                                                     workspace, "found")
    # random bytes as documents: refused, not scored
    line = refused(SEARCH + ["--data", workspace / "noise", "--out", workspace / "run"], workspace, "found")
    assert "not text" in line
    line = refused(["eval", "--model", "pocket", "--data", workspace / "noise", "--method", "pi", "--lengths", "512"],
                   workspace, "found")
    assert "not text" in line
    # a truncated weights file is named before it is loaded
    weights = workspace / "mypocket" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    for args in (["search", "--model", workspace / "mypocket", "--target-length", 1024, "--out", workspace / "run"],
                 ["eval", "--model", workspace / "mypocket", "--method", "pi", "--lengths", "512"]):
        assert "truncated" in refused(args, workspace, "found")
    # an output under a file, and a run directory that is a file
    (workspace / "afile").write_text("x")
    assert "is a file" in refused(SEARCH + ["--out", workspace / "afile" / "run"], workspace, "found")
    assert "is a file" in refused(SEARCH + ["--out", workspace / "afile"], workspace, "found")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder_is_one_line(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        assert "not writable" in refused(SEARCH + ["--out", locked / "run"], tmp_path, "found")
    finally:
        locked.chmod(0o755)


# /proc takes no new files, even from root (the read-only folder above is root-proof only for users)
UNWRITABLE = [Path("/proc")] if Path("/proc/self").is_dir() else []


@pytest.mark.parametrize("args,flag", [
    (["baselines", "--model", "pocket", "--methods", "pi", "--lengths", 512, "--json"], "--json"),
    (["eval", "--model", "pocket", "--method", "pi", "--lengths", 512, "--json"], "--json"),
    (["passkey", "--model", "pocket", "--lengths", 512, "--json"], "--json"),
    (["passkey", "--model", "pocket", "--lengths", 512, "--plots"], "--plots"),
    (["ruler", "--model", "pocket", "--lengths", 512, "--json"], "--json"),
    (["ruler", "--model", "pocket", "--lengths", 512, "--plots"], "--plots"),
    (["lm-eval", "--model", "pocket", "--tasks", "ropesearch_passkey", "--json"], "--json"),
    (["factors", "yarn", "--model", "pocket", "--scale", 4, "--out"], "--out"),
])
def test_an_output_that_cannot_be_written_is_refused_before_the_work(args, flag, tmp_path):
    """Not after it: baselines and passkey used to score every length, then lose it all to the write."""
    (tmp_path / "afile").write_text("x")
    line = refused(args + [tmp_path / "afile" / "out.json"], tmp_path, "found")
    assert f"{flag} {tmp_path / 'afile' / 'out.json'}: {tmp_path / 'afile'} is a file, not a folder" in line
    for folder in UNWRITABLE:
        line = refused(args + [folder / "sub" / "out.json"], tmp_path, "found")
        assert f"{folder} is not writable" in line and f"choose another {flag}" in line


# ---- nothing destroyed ----------------------------------------------------------------------------
def test_overwrite_never_deletes_an_input_or_a_folder_export_did_not_write(workspace):
    model, factors = workspace / "mypocket", workspace / "pi8.json"
    model_files = snapshot(model)
    line = refused(["export", factors, "--model", model, "--out", model, "--overwrite"], workspace, "destroy")
    assert "the model" in line and snapshot(model) == model_files
    refused(["export", factors, "--model", model, "--out", workspace, "--overwrite"], workspace, "destroy")
    refused(["export", factors, "--model", model, "--out", model / "sub", "--format", "csv"], workspace, "destroy")
    # a search run (or any folder an export did not write) is never replaced
    run = workspace / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    (run / "history.jsonl").write_text("{}\n")
    line = refused(["export", factors, "--model", "pocket", "--out", run, "--overwrite", "--format", "csv"],
                   workspace, "destroy")
    assert "--overwrite replaces only folders" in line
    # an earlier export is replaced as before
    out = workspace / "csv"
    for _ in range(2):
        result = CliRunner().invoke(cli, ["export", str(factors), "--model", "pocket", "--out", str(out), "--format",
                                          "csv", "--overwrite"])
        assert result.exit_code == 0, result.output
    # an output file that is an input
    refused(["factors", "longrope", "--model", "pocket", "--scale", 8, "--csv", out / "long_factor.csv", "--out",
             out / "long_factor.csv"], workspace, "destroy")
    refused(["eval", "--model", "pocket", "--factors", factors, "--lengths", 512, "--json", factors], workspace,
            "destroy")


# ---- nothing executed --------------------------------------------------------------------------------
UNSAFE = [r"\bpickle\.loads?\(", r"\bcPickle\b", r"\bdill\b", r"\bjoblib\.load\(", r"\bmarshal\.loads?\(",
          r"allow_pickle\s*=\s*True", r"\byaml\.load\(", r"\byaml\.unsafe_load\(", r"weights_only\s*=\s*False"]


def test_no_code_path_unpickles_a_file():
    """The package, the GPU scripts and the other test lanes' fixtures. The old checkpoint.pkl files
    committed under results/ are data: no code opens a .pkl, except the run directory's refusal."""
    offenders = []
    code = [ROOT / folder for folder in ("ropesearch", "eval", "tests_tf4", "tests_vllm")]
    for path in sorted(p for folder in code for p in folder.rglob("*.py")):
        text = path.read_text()
        offenders += [f"{path.relative_to(ROOT)}: {p}" for p in UNSAFE if re.search(p, text)]
        if ".pkl" in text and path != ROOT / "ropesearch" / "search" / "rundir.py":
            offenders.append(f"{path.relative_to(ROOT)}: names a .pkl file")
        for call in re.finditer(r"torch\.load\(", text):
            depth, end = 0, call.end()
            while end < len(text) and (depth or text[end] != ")"):
                depth += {"(": 1, ")": -1}.get(text[end], 0)
                end += 1
            if not re.search(r"weights_only\s*=\s*True", text[call.start():end]):
                offenders.append(f"{path.relative_to(ROOT)}: torch.load without weights_only=True")
    assert not offenders, offenders


class _Payload:
    """Unpickling this runs os.system: what a shared run directory could carry."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ---- run directories: kill, corrupt, share, plant ---------------------------------------------------
@pytest.fixture(scope="module")
def loaded():
    from conftest import tiny_model, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    return tiny_model("llama", vocab_size=len(tokenizer)), tokenizer


def tiny_search(loaded, out, **kwargs):
    from dataclasses import replace

    from ropesearch.search import load_space
    from ropesearch.search.session import SearchConfig, run_search

    space = load_space("fast")
    space = replace(space, budget=replace(space.budget, generations=2, population=6, top_k=3))
    config, runtime = search_kwargs(kwargs)
    return run_search(SearchConfig("tiny", "builtin", 256, space=space, **config), out, loaded=loaded,
                      log=lambda m: None, **runtime)


@pytest.fixture(scope="module")
def one_run(loaded, tmp_path_factory):
    run = tmp_path_factory.mktemp("finished") / "run"
    tiny_search(loaded, run)
    return run


@pytest.fixture
def finished_run(one_run, tmp_path):
    """A copy of a finished tiny search, for a test to damage."""
    return Path(shutil.copytree(one_run, tmp_path / "run"))


def history_rows(run: Path) -> list[dict]:
    """The history without its timings (which differ from run to run)."""
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
            for line in (run / "history.jsonl").read_text().splitlines()]


def _resume_error(loaded, run) -> str:
    with pytest.raises(RopesearchError) as error:
        tiny_search(loaded, run, resume=True)
    EXERCISED["damaged run"] += 1
    return str(error.value)


def test_run_files_are_data_only_and_readable_as_the_umask_says(finished_run):
    names = {p.name for p in finished_run.iterdir()}
    assert "checkpoint.json" in names and not any(n.endswith((".pkl", ".tmp")) for n in names)
    mask = os.umask(0)
    os.umask(mask)
    for name in ("config.json", "history.jsonl", "checkpoint.json", "best.json", "progress.json"):
        assert (finished_run / name).stat().st_mode & 0o777 == 0o666 & ~mask, name


def test_atomic_writes_follow_the_umask(tmp_path):
    from ropesearch.own_files import atomic_write_text

    previous = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
    finally:
        os.umask(previous)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o640


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_planted_pickle_is_never_executed(loaded, finished_run, tmp_path):
    marker = tmp_path / "pwned"
    for stale in finished_run.glob("checkpoint*"):
        stale.unlink()
    (finished_run / "checkpoint.pkl").write_bytes(pickle.dumps(_Payload(marker)))
    message = _resume_error(loaded, finished_run)
    assert "pickle" in message and "never loaded" in message and not marker.exists()
    # the fine-tuning checkpoint too: torch.load(weights_only=True) refuses the payload
    import torch

    (tmp_path / "trainer.pt").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(pickle.UnpicklingError):
        torch.load(tmp_path / "trainer.pt", weights_only=True)
    assert not marker.exists()


def test_damaged_runs_are_named_never_restarted(loaded, finished_run):
    history = finished_run / "history.jsonl"
    checkpoint = finished_run / "checkpoint.json"
    lines, saved, rows = history.read_bytes(), checkpoint.read_bytes(), history_rows(finished_run)
    history.write_bytes(lines[: len(lines) // 2])
    assert "history.jsonl is truncated" in _resume_error(loaded, finished_run)
    history.write_bytes(lines.replace(b'"generation": 0', b'"generation": 7', 1))
    assert "does not match checkpoint.json" in _resume_error(loaded, finished_run)
    history.write_bytes(lines)
    for damaged in (b"", saved[: len(saved) // 2], b"[1, 2]"):
        checkpoint.write_bytes(damaged)
        assert "checkpoint.json is damaged" in _resume_error(loaded, finished_run)
    next(finished_run.glob("checkpoint-g*.npz")).write_bytes(b"PK\x03\x04 not an archive")
    checkpoint.write_bytes(saved)
    assert "checkpoint.json is damaged" in _resume_error(loaded, finished_run)
    checkpoint.unlink()
    assert "checkpoint.json is missing" in _resume_error(loaded, finished_run)
    assert history.read_bytes() == lines, "a refused resume changed the history"
    # killed after writing its config but before the first generation ended: --resume starts it
    for stale in finished_run.glob("checkpoint-g*.npz"):
        stale.unlink()
    history.write_bytes(b"")
    result = tiny_search(loaded, finished_run, resume=True)
    assert result.state.stop_reason == "2 generations done" and history_rows(finished_run) == rows


def test_changed_inputs_are_refused_on_resume(loaded, finished_run):
    import torch

    model, _ = loaded
    weight = next(model.parameters())
    original = weight.detach().clone()
    with torch.no_grad():
        weight.add_(0.01)
    try:
        assert "the model weights changed" in _resume_error(loaded, finished_run)
    finally:
        with torch.no_grad():
            weight.copy_(original)
    result = tiny_search(loaded, finished_run, resume=True)  # unchanged inputs resume as before
    assert result.state.stop_reason == "2 generations done"


LOCK_HOLDER = """
import sys, time
from ropesearch.lock import DirectoryLock
DirectoryLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(120)
"""


def test_one_writer_per_run_and_the_lock_dies_with_its_process(finished_run, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("ROPESEARCH_CACHE", str(tmp_path / "cache"))
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(finished_run)], stdout=subprocess.PIPE,
                              env=os.environ | {"PYTHONPATH": str(ROOT)}, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        model, docs = tiny_model_dir
        args = ["search", "--model", model, "--data", docs, "--target-length", 256, "--out", finished_run, "--resume"]
        line = refused(args, finished_run, "concurrent resume")
        assert f"in use by another ropesearch process (pid {holder.pid})" in line
        plan = tmp_path / "plan"
        plan.mkdir()
        holder2 = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(plan)], stdout=subprocess.PIPE,
                                   env=os.environ | {"PYTHONPATH": str(ROOT)}, text=True)
        assert holder2.stdout.readline().strip() == "held"
        (tmp_path / "p.yaml").write_text(yaml.safe_dump(QUICKSTART))
        assert "in use by another" in refused(["run", tmp_path / "p.yaml", "--out", plan, "--resume"], plan,
                                              "concurrent plan")
        holder2.kill()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    from ropesearch.lock import DirectoryLock

    with DirectoryLock(finished_run):  # kill -9 left the lock file, but the OS released the lock
        pass


KILLED_SEARCH = """
import sys
from dataclasses import replace
from ropesearch.search import load_space
from ropesearch.search.session import SearchConfig, run_search
space = load_space("fast")
space = replace(space, budget=replace(space.budget, generations=4, population=6, top_k=3))
run_search(SearchConfig(sys.argv[1], sys.argv[2], 256, space=space, device="cpu"), sys.argv[3], log=lambda m: None,
           resume=len(sys.argv) > 4)
"""


def test_kill_9_mid_search_then_resume_gives_the_uninterrupted_result(tiny_model_dir, tmp_path, monkeypatch):
    model, docs = tiny_model_dir
    monkeypatch.setenv("ROPESEARCH_CACHE", str(tmp_path / "cache"))
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-c", KILLED_SEARCH, str(model), str(docs), str(killed)],
                               env=os.environ | {"PYTHONPATH": str(ROOT)}, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (killed / "checkpoint.json").is_file() and time.time() < deadline and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)  # somewhere in generation 1 or 2, the lock still held
    assert process.wait() == -signal.SIGKILL, process.stderr.read().decode()[-2000:]
    # the same search in this process: straight through, then the killed one resumed
    from dataclasses import replace

    from ropesearch.search import load_space
    from ropesearch.search.session import SearchConfig, run_search

    space = load_space("fast")
    space = replace(space, budget=replace(space.budget, generations=4, population=6, top_k=3))
    for out, resume in ((straight, False), (killed, True)):
        run_search(SearchConfig(str(model), str(docs), 256, space=space, device="cpu"),
                   out, log=lambda m: None, resume=resume)

    assert history_rows(killed) == history_rows(straight)
    best = [json.loads((run / "best.json").read_text())["rope"]["long_factor"] for run in (straight, killed)]
    assert best[0] == best[1]


# ---- failed candidates ---------------------------------------------------------------------------------
def test_non_finite_scores_are_failed_candidates_never_best(loaded, tmp_path, monkeypatch):
    import numpy as np

    from ropesearch.search import objectives

    real = objectives.Objective.score

    def half_broken(self, candidates):
        values, seconds, notes = real(self, candidates)
        values = [np.full_like(v, np.nan) if i % 2 == 0 else v for i, v in enumerate(values)]
        return values, seconds, notes

    monkeypatch.setattr(objectives.Objective, "score", half_broken)
    result = tiny_search(loaded, tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    failed = [r for r in rows if r.get("failed")]
    assert failed and all("non-finite" in r["failed"] and None in r["metrics"].values() for r in failed)
    assert all(math.isfinite(v) for v in result.values)
    best = json.loads((tmp_path / "run" / "best.json").read_text())
    assert all(math.isfinite(v) for v in best["provenance"]["scores"].values())

    def all_broken(self, candidates):
        values, seconds, notes = real(self, candidates)
        return [np.full_like(v, np.inf) for v in values], seconds, notes

    monkeypatch.setattr(objectives.Objective, "score", all_broken)
    with pytest.raises(RopesearchError, match="every candidate .* failed"):
        tiny_search(loaded, tmp_path / "all-failed")
    assert not (tmp_path / "all-failed" / "best.json").exists()


def test_eval_prints_failed_not_nan(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("ROPESEARCH_CACHE", str(tmp_path / "cache"))
    model, docs = tiny_model_dir
    from ropesearch.export.factor_file import save_factors
    from ropesearch.models import load_config, resolve_model, rope_base
    from ropesearch.rope import make_factors

    from safetensors.torch import load_file, save_file

    # an overflowing output layer: the loss is not finite (an attention factor of 1e30 did it before
    # factor files were bounded)
    model = Path(shutil.copytree(model, tmp_path / "model"))
    weights = load_file(model / "model.safetensors")
    weights["lm_head.weight"] = weights["lm_head.weight"] * 1e38
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    base = rope_base(load_config(resolve_model(str(model))))
    save_factors(make_factors("yarn", base, 4.0), tmp_path / "broken.json")
    result = CliRunner().invoke(cli, ["eval", "--model", str(model), "--data", str(docs), "--lengths", "256",
                                      "--samples", "1", "--factors", str(tmp_path / "broken.json"), "--json",
                                      str(tmp_path / "t.json")])
    assert result.exit_code == 1 and "failed" in result.output and "nan" not in result.output.lower()
    assert result.output.strip().splitlines()[-1].startswith("Error: non-finite perplexity")
    assert not (tmp_path / "t.json").exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_damaged_records_of_plans_finetuning_and_runs_are_one_line(tmp_path):
    import torch

    from conftest import tiny_model
    from ropesearch.data import TokenizedDocument
    from ropesearch.evaluate.runs import searched_documents
    from ropesearch.pipeline.finetune import FinetuneConfig, Finetuner
    from ropesearch.rope import RopeBase, make_factors

    (tmp_path / "config.json").write_text('{"windows": [')
    with pytest.raises(RopesearchError, match="search config .* is damaged"):
        searched_documents(tmp_path)
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump(QUICKSTART))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "plan.json").write_text('{"name": ')
    result = CliRunner().invoke(cli, ["run", str(tmp_path / "plan.yaml"), "--out", str(tmp_path / "run"), "--resume"])
    assert result.exit_code == 1 and result.output.startswith("Error: the plan copy") and "damaged" in result.output
    factors = make_factors("pi", RopeBase(100.0, 32, 64), 2.0)
    documents = [TokenizedDocument("d", torch.arange(600).numpy() % 100)]
    config = FinetuneConfig(length=128, steps=2, global_batch=1, save_every=1, gradient_checkpointing=False)
    Finetuner(tiny_model("llama"), factors, documents, config, tmp_path / "ft", log=lambda m: None).run()
    checkpoint = tmp_path / "ft" / "checkpoint"
    for name, damage in (("trainer.pt", pickle.dumps(_Payload(tmp_path / "pwned"))), ("model.safetensors", b"\0" * 9),
                         ("state.json", b'{"step": ')):
        saved = (checkpoint / name).read_bytes()
        (checkpoint / name).write_bytes(damage)
        with pytest.raises(RopesearchError, match=f"remove {checkpoint} to fine-tune again"):
            Finetuner(tiny_model("llama"), factors, documents, config, tmp_path / "ft", log=lambda m: None).run()
        (checkpoint / name).write_bytes(saved)
        EXERCISED["damaged fine-tuning checkpoint"] += 1
    assert not (tmp_path / "pwned").exists()


def test_model_fingerprint_is_the_same_with_or_without_the_weights_loaded(tiny_model_dir):
    """A search may resume with Ray workers (this process loads only the config) or without."""
    from ropesearch.models import load_config, load_model, resolve_model
    from ropesearch.search.session import _model_fingerprints

    ref = resolve_model(str(tiny_model_dir[0]))
    assert _model_fingerprints(ref, load_model(ref, device="cpu")) == _model_fingerprints(ref, load_config(ref))
