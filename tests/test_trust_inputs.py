"""Issue 35, silently wrong results: a resume notices every change to the model, a plan's records
point only at the files its stages wrote, and typed numbers and factor files mean what they say."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from ropesearch.cli import cli
from ropesearch.errors import RopesearchError


def one_error_line(args) -> str:
    """Run the CLI; assert exit 1 and a single `Error:` line (no traceback); return that line."""
    result = CliRunner().invoke(cli, [str(a) for a in args])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1, f"{args}: exit {result.exit_code}\n{result.output}"
    assert not (result.exception and not isinstance(result.exception, SystemExit)), result.exception
    assert len(lines) == 1 and lines[0].startswith("Error: "), f"{args}:\n{result.output}"
    return lines[0]


# ---- item 5: the whole weights and the model config are fingerprinted -----------------------------------
@pytest.fixture
def model_copy(tiny_model_dir, tmp_path, monkeypatch):
    """A copy of the tiny model folder (for a test to edit), its documents, a fresh cache."""
    monkeypatch.setenv("ROPESEARCH_CACHE", str(tmp_path / "cache"))
    model, docs = tiny_model_dir
    return Path(shutil.copytree(model, tmp_path / "model")), docs


def search_args(model, docs, out, *extra):
    return ["search", "--model", model, "--data", docs, "--target-length", 256, "--out", out, "--max-evals", 4,
            "--samples", 1, "--device", "cpu", "--no-short-guard", *extra]


def test_a_change_between_the_old_sample_points_is_refused_on_resume(model_copy, tmp_path):
    model, docs = model_copy
    run = tmp_path / "run"
    assert CliRunner().invoke(cli, [str(a) for a in search_args(model, docs, run)]).exit_code == 0
    weights = model / "model.safetensors"
    data = bytearray(weights.read_bytes())
    # the fingerprint used to read 16 pieces of 64 KiB at k * size / 16: change a byte just before piece 1
    offset = len(data) // 16 - 100
    assert offset > 1 << 16
    data[offset] ^= 1
    weights.write_bytes(bytes(data))
    line = one_error_line(search_args(model, docs, run, "--resume"))
    assert "the model weights changed" in line and str(run) in line
    data[offset] ^= 1
    weights.write_bytes(bytes(data))  # the same bytes again (a new mtime): the run resumes
    assert CliRunner().invoke(cli, [str(a) for a in search_args(model, docs, run, "--resume")]).exit_code == 0


@pytest.mark.parametrize("field, value", [("hidden_act", "gelu"), ("rms_norm_eps", 1e-3)])
def test_a_changed_model_config_is_refused_on_resume(model_copy, tmp_path, field, value):
    model, docs = model_copy
    run = tmp_path / "run"
    assert CliRunner().invoke(cli, [str(a) for a in search_args(model, docs, run)]).exit_code == 0
    config_file = model / "config.json"
    config = json.loads(config_file.read_text())
    assert config[field] != value
    config_file.write_text(json.dumps(config | {field: value}, indent=2))
    line = one_error_line(search_args(model, docs, run, "--resume"))
    assert "the model config (config.json) changed" in line
    config_file.write_text(json.dumps(config, indent=4, sort_keys=True))  # the same settings, laid out anew
    assert CliRunner().invoke(cli, [str(a) for a in search_args(model, docs, run, "--resume")]).exit_code == 0


def test_a_run_from_before_whole_file_hashes_is_refused(model_copy, tmp_path):
    """Its sampled weight fingerprint cannot rule out a change: a new run is the safe answer."""
    model, docs = model_copy
    run = tmp_path / "run"
    assert CliRunner().invoke(cli, [str(a) for a in search_args(model, docs, run)]).exit_code == 0
    config = json.loads((run / "config.json").read_text())
    inputs = config["inputs"]
    old = {"model": "0123456789abcdef"} | {k: v for k, v in inputs.items() if k not in ("weights", "model_config")}
    (run / "config.json").write_text(json.dumps(config | {"inputs": old}))
    line = one_error_line(search_args(model, docs, run, "--resume"))
    assert "records no fingerprint of the model weights (an older ropesearch wrote it)" in line
    assert "another --out" in line


def test_the_whole_file_hash_is_cached_and_renewed_when_the_file_changes(tmp_path, monkeypatch):
    import hashlib

    from ropesearch.fingerprint import file_sha256

    monkeypatch.setenv("ROPESEARCH_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "w.bin"
    path.write_bytes(b"a" * 100_000)
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    assert file_sha256(path) == expected
    cache = tmp_path / "cache" / "file-hashes.json"
    entry = json.loads(cache.read_text())["entries"][os.path.realpath(path)]
    assert entry["sha256"] == expected and entry["size"] == 100_000
    # a cached entry is what answers while the file is as it was: plant a wrong hash to see it used
    planted = json.loads(cache.read_text())
    planted["entries"][os.path.realpath(path)]["sha256"] = "f" * 64
    cache.write_text(json.dumps(planted))
    assert file_sha256(path) == "f" * 64
    # the same size, other bytes, and the old mtime put back: the inode's ctime still moved
    stat = path.stat()
    path.write_bytes(b"b" * 100_000)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert file_sha256(path) == hashlib.sha256(b"b" * 100_000).hexdigest()
    for damage in ("{", "[1]", '{"format": "ropesearch/file-hashes@1", "entries": [1]}', "[" * 100_000):
        cache.write_text(damage)  # a damaged cache is no cache, never an error
        assert file_sha256(path) == hashlib.sha256(b"b" * 100_000).hexdigest()
    assert json.loads(cache.read_text())["entries"][os.path.realpath(path)]["sha256"] == \
        hashlib.sha256(b"b" * 100_000).hexdigest()


def test_weights_in_memory_are_hashed_whole(tiny_llama):
    import torch

    from ropesearch.fingerprint import weights_fingerprint

    before = weights_fingerprint(tiny_llama)
    weight = tiny_llama.model.layers[0].mlp.up_proj.weight
    original = weight[3, 5].item()
    with torch.no_grad():
        weight[3, 5] = original + 1e-3  # one value, off every stride a sample would take
        assert weights_fingerprint(tiny_llama) != before
        weight[3, 5] = original
    assert weights_fingerprint(tiny_llama) == before
    bf16 = weights_fingerprint(tiny_llama.to(torch.bfloat16))
    assert bf16 != before and weights_fingerprint(tiny_llama) == bf16


def test_a_run_on_a_model_in_memory_refuses_a_changed_config(tmp_path, monkeypatch):
    from dataclasses import replace

    from conftest import tiny_model, tiny_tokenizer
    from ropesearch.search import load_space
    from ropesearch.search.session import SearchConfig, run_search

    monkeypatch.setenv("ROPESEARCH_CACHE", str(tmp_path / "cache"))
    tokenizer = tiny_tokenizer()
    model = tiny_model("llama", vocab_size=len(tokenizer))
    space = load_space("fast")
    space = replace(space, budget=replace(space.budget, generations=1, population=4, top_k=2))

    def search(resume=False):
        return run_search(SearchConfig("tiny", "builtin", 256, space=space, short_tolerance=None, samples=1),
                          tmp_path / "run", loaded=(model, tokenizer), log=lambda m: None, resume=resume)

    search()
    model.config.rms_norm_eps = 1e-2
    with pytest.raises(RopesearchError, match="the model config .* changed"):
        search(resume=True)


# ---- item 6: a plan's done.json points only at what its stage wrote, inside the run directory -------------
@pytest.fixture
def two_stage_plan(tiny_model_dir, tmp_path, monkeypatch):
    """A search, then an evaluation that fails at first (more samples than documents): the plan
    file, its dict, and the run directory after that first session."""
    import yaml

    monkeypatch.setenv("ROPESEARCH_CACHE", str(tmp_path / "cache"))
    model, docs = tiny_model_dir
    space = yaml.safe_load(open(Path(__file__).resolve().parents[1] / "search_spaces" / "fast.yaml"))
    space["budget"].update(population=4, top_k=2, mutations=2, crossovers=1, generations=1)
    (tmp_path / "tiny-space.yaml").write_text(yaml.safe_dump(space))
    plan = {"name": "tiny", "model": str(model), "data": {k: str(docs) for k in ("search", "finetune", "evaluate")},
            "stages": [{"search": {"target": 256, "space": str(tmp_path / "tiny-space.yaml"), "samples": 1,
                                   "short_tolerance": None}},
                       {"evaluate": {"lengths": [256], "methods": [], "samples": 50, "heldout": False}}]}
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan))
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["run", str(path), "--out", str(out)])
    assert result.exit_code == 1 and "stage 02-evaluate failed" in result.output, result.output
    plan["stages"][1]["evaluate"]["samples"] = 1  # fixed: the next session finishes
    path.write_text(yaml.safe_dump(plan))
    return path, out


def test_done_json_records_paths_inside_the_run_with_their_sha256(two_stage_plan):
    _, out = two_stage_plan
    record = json.loads((out / "01-search" / "done.json").read_text())
    assert record["outputs"]["factors"] == "01-search/search/best.json"
    assert record["outputs"]["search_dir"] == "01-search/search"
    import hashlib

    assert record["sha256"] == {"01-search/search/best.json":
                                hashlib.sha256((out / "01-search/search/best.json").read_bytes()).hexdigest()}


@pytest.mark.parametrize("edit", ["other file", "outside", "absolute", "changed bytes"])
def test_an_edited_stage_record_or_output_is_refused(two_stage_plan, tmp_path, edit):
    path, out = two_stage_plan
    done = out / "01-search" / "done.json"
    record = json.loads(done.read_text())
    best = out / "01-search" / "search" / "best.json"
    other = json.loads(best.read_text())
    other["rope"]["long_factor"] = [2.0] * len(other["rope"]["long_factor"])
    if edit == "changed bytes":
        best.write_text(json.dumps(other))
    else:
        (out / "01-search" / "other.json").write_text(json.dumps(other))
        (tmp_path / "outside.json").write_text(json.dumps(other))
        record["outputs"]["factors"] = {"other file": "01-search/other.json", "outside": "../outside.json",
                                        "absolute": str(tmp_path / "outside.json")}[edit]
        done.write_text(json.dumps(record))
    line = one_error_line(["run", path, "--out", out, "--resume"])
    assert "01-search" in line and "done.json" in line
    assert ("not the file that stage wrote" in line) if edit in ("other file", "changed bytes") else \
        ("not inside the run directory" in line)
    assert not (out / "02-evaluate" / "done.json").exists()


def test_a_run_directory_resumes_from_another_folder_and_as_a_copy(two_stage_plan, tmp_path, monkeypatch):
    path, out = two_stage_plan
    copy = Path(shutil.copytree(out, tmp_path / "elsewhere" / "copy"))
    shutil.rmtree(out)  # the copy must read only its own files
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    result = CliRunner().invoke(cli, ["run", str(path), "--out", "../elsewhere/copy", "--resume"])
    assert result.exit_code == 0, result.output
    assert "01-search: done earlier, skipped" in result.output and not out.exists()
    table = json.loads((copy / "02-evaluate" / "perplexity.json").read_text())
    assert "found" in table["ppl"]
    assert json.loads((copy / "02-evaluate" / "done.json").read_text())["outputs"]["table"] == \
        "02-evaluate/perplexity.json"


def test_an_older_done_json_with_working_folder_paths_is_read_inside_the_run(two_stage_plan, tmp_path, monkeypatch):
    path, out = two_stage_plan
    done = out / "01-search" / "done.json"
    record = json.loads(done.read_text())
    old = {"outputs": record["outputs"] | {"factors": "runs/tiny/01-search/search/best.json",
                                          "search_dir": "runs/tiny/01-search/search"}, "seconds": 1.0}
    done.write_text(json.dumps(old))
    monkeypatch.chdir(tmp_path / "cache")  # not where that run's paths point
    result = CliRunner().invoke(cli, ["run", str(path), "--out", str(out), "--resume"])
    assert result.exit_code == 0, result.output
    assert json.loads(done.read_text()) == record | {"seconds": 1.0}  # recorded anew, with the file's hash
    done.write_text(json.dumps({"outputs": record["outputs"] | {"factors": "/etc/passwd"}}))
    line = one_error_line(["run", path, "--out", out, "--resume"])
    assert "older ropesearch" in line and "'/etc/passwd' is not in the stage's folder 01-search" in line


# ---- item 7: factor files, scales and token counts mean what they say -----------------------------------
@pytest.fixture
def pocket_factor_file(tmp_path):
    from ropesearch.export.factor_file import save_factors
    from ropesearch.models import load_config, resolve_model, rope_base
    from ropesearch.rope import make_factors

    base = rope_base(load_config(resolve_model("pocket")))
    path = tmp_path / "f.json"
    save_factors(make_factors("yarn", base, 4.0), path, monotone=True)
    return path


@pytest.mark.parametrize("where, key, hint", [
    (("rope",), "start_token", "did you mean 'start_tokens'?"),
    (("rope",), "colour", "known: method, rope_theta"),
    ((), "provenace", "did you mean 'provenance'?"),
    (("constraints",), "monotonic", "did you mean 'monotone'?"),
])
def test_unknown_keys_of_a_factor_file_are_refused(pocket_factor_file, where, key, hint):
    document = json.loads(pocket_factor_file.read_text())
    target = document
    for part in where:
        target = target[part]
    target[key] = 8
    pocket_factor_file.write_text(json.dumps(document))
    line = one_error_line(["show", pocket_factor_file])
    field = ".".join((*where, key))
    assert f"field {field} is not a field" in line and hint in line and str(pocket_factor_file) in line


@pytest.mark.parametrize("key, value, message", [
    ("attention_factor", 70.0, "at most 16"),
    ("target_context", 10**12, "at most 134217728 tokens"),
    ("long_factor", "huge", "at most 65536"),
])
def test_factor_values_out_of_range_are_refused(pocket_factor_file, key, value, message):
    document = json.loads(pocket_factor_file.read_text())
    if value == "huge":
        value = [1e300] * len(document["rope"]["long_factor"])
    document["rope"][key] = value
    pocket_factor_file.write_text(json.dumps(document))
    assert message in one_error_line(["show", pocket_factor_file])


def test_a_huge_scale_is_refused_before_anything_is_written(tmp_path):
    from ropesearch.rope import RopeBase, make_factors

    line = one_error_line(["factors", "yarn", "--model", "pocket", "--scale", "1e300", "--out", tmp_path / "f.json"])
    assert "--scale" in line and "1024" in line and not (tmp_path / "f.json").exists()
    with pytest.raises(RopesearchError, match="at most 1024"):
        make_factors("yarn", RopeBase(1e4, 64, 2048), 1e300)
    assert "1 to 1024" in CliRunner().invoke(cli, ["factors", "--help"]).output


def test_a_model_config_with_an_absurd_trained_window_is_refused(tmp_path):
    from ropesearch.models import load_config, resolve_model

    pocket = resolve_model("pocket").path
    folder = Path(shutil.copytree(pocket, tmp_path / "m", ignore=shutil.ignore_patterns("*.safetensors")))
    config = json.loads((folder / "config.json").read_text())
    rope = config.get("rope_parameters") or {}
    for value in (1e12, 10**12, 2048.5, "2048"):
        (folder / "config.json").write_text(json.dumps(config | {"rope_parameters": rope | {
            "original_max_position_embeddings": value}}))
        line = one_error_line(["factors", "yarn", "--model", folder, "--scale", 2])
        # the config check (a float or a string is no token count) or the range check (10**12) names it
        assert "original_max_position_embeddings" in line and "whole number" in line, line
        if type(value) is int:
            assert "between 1 and" in line, line
    from ropesearch.models import rope_base

    (folder / "config.json").write_text(json.dumps(config))
    assert rope_base(load_config(resolve_model(str(folder)))).original_context == config["max_position_embeddings"]


def test_token_counts_are_parsed_exactly_and_bounded():
    from ropesearch.units import parse_tokens

    assert parse_tokens("128k") == 131072 and parse_tokens("1M") == 1048576 and parse_tokens("65536") == 65536
    assert parse_tokens("1.5k") == 1536 and parse_tokens("134217727") == 134217727  # exact, no float on the way
    for text, message in (("9999999999999999", "at most 134217728"), ("1.1k", "whole number"),
                          ("1e12", "like 2048"), ("1" + "0" * 5000, "like 2048"), (2**40, "at most")):
        with pytest.raises(RopesearchError, match=message):
            parse_tokens(text, "--target-length")
    line = one_error_line(["eval", "--model", "pocket", "--lengths", "9999999999999999", "--method", "yarn"])
    assert "--lengths must be at most 134217728 tokens" in line
    from ropesearch.pipeline.plan import plan_from_dict

    with pytest.raises(RopesearchError, match="target must be at most 134217728"):
        plan_from_dict({"name": "x", "model": "m", "stages": [{"search": {"target": 9999999999999999}}]})


def test_a_moved_run_continues_the_search_and_passkey_of_its_fine_tuned_model(tiny_model_dir, tmp_path, monkeypatch):
    """The search after a fine-tuning names the model by its path inside the run directory, which
    moved: the weights' fingerprint, not that name, says it is the same model."""
    import yaml

    monkeypatch.setenv("ROPESEARCH_CACHE", str(tmp_path / "cache"))
    model, docs = tiny_model_dir
    space = yaml.safe_load(open(Path(__file__).resolve().parents[1] / "search_spaces" / "fast.yaml"))
    space["budget"].update(population=4, top_k=2, mutations=2, crossovers=1, generations=1)
    (tmp_path / "tiny-space.yaml").write_text(yaml.safe_dump(space))
    search = {"space": str(tmp_path / "tiny-space.yaml"), "samples": 1, "short_tolerance": None}
    plan = {"name": "tiny", "model": str(model), "data": {k: str(docs) for k in ("search", "finetune", "evaluate")},
            "stages": [{"search": {"target": 256, **search}},
                       {"finetune": {"length": 256, "steps": 1, "global_batch": 1, "micro_batch": 1}},
                       {"search": {"target": 512, "relative": True, **search}},
                       {"passkey": {"lengths": [320], "depths": [0.5], "trials": 1, "methods": []}}]}
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan))
    assert CliRunner().invoke(cli, ["run", str(path), "--out", str(tmp_path / "run")]).exit_code == 0
    moved = tmp_path / "moved"
    (tmp_path / "run").rename(moved)
    for stage in ("03-search", "04-passkey"):  # as if killed at their ends: both resume
        (moved / stage / "done.json").unlink()
    result = CliRunner().invoke(cli, ["run", str(path), "--out", str(moved), "--resume"])
    assert result.exit_code == 0, result.output
    assert result.output.count("done earlier, skipped") == 2
    config = json.loads((moved / "03-search" / "search" / "config.json").read_text())
    assert config["model"] == str(tmp_path / "run" / "02-finetune" / "model")  # the name it started with
