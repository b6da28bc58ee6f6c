"""`ropesearch run`: a whole progressive plan on a tiny model, a failing stage, and a resume that skips done stages."""

import json

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from transformers import AutoModelForCausalLM

from conftest import tiny_model
from ropesearch.cli import cli
from ropesearch.data import TokenizedDocument
from ropesearch.errors import RopesearchError
from ropesearch.export import load_factors
from ropesearch.models import rope_base
from ropesearch.pipeline.finetune import FinetuneConfig, Finetuner, length_at, lr_factor
from ropesearch.pipeline.plan import load_plan, plan_from_dict
from ropesearch.rope import methods


@pytest.fixture
def plan_file(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("ROPESEARCH_CACHE", str(tmp_path / "cache"))
    model, docs = tiny_model_dir
    space = yaml.safe_load(open("search_spaces/fast.yaml"))
    space["budget"].update(population=6, top_k=3, mutations=3, crossovers=1, generations=1)
    (tmp_path / "tiny-space.yaml").write_text(yaml.safe_dump(space))
    plan = {
        "name": "tiny",
        "model": str(model),
        "data": {"search": str(docs), "finetune": str(docs), "evaluate": str(docs)},
        "stages": [
            {"search": {"target": 256, "space": str(tmp_path / "tiny-space.yaml"), "samples": 1}},
            {"finetune": {"length": 256, "steps": 2, "global_batch": 2, "micro_batch": 1, "lr": 1e-3,
                          "save_every": 1, "length_warmup": 0.5}},
            {"search": {"target": 512, "relative": True, "space": str(tmp_path / "tiny-space.yaml"), "samples": 1}},
            {"recover-short": {"lengths": [32, 64], "space": str(tmp_path / "tiny-space.yaml"), "samples": 1}},
            {"export": {"formats": ["hf", "csv"]}},
            # more samples than documents: fails when the stage runs (inputs are checked up front)
            {"evaluate": {"lengths": [64, 256, 512], "methods": ["yarn"], "samples": 50, "passkey": True,
                          "passkey_lengths": [320], "passkey_depths": [0.5], "passkey_trials": 1}},
            {"report": {}},
        ],
    }
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan))
    return path, plan, docs


def test_plan_runs_fails_cleanly_and_resumes(plan_file, tmp_path):
    path, plan, docs = plan_file
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["run", str(path), "--out", str(out)])
    assert result.exit_code == 1
    assert "stage 06-evaluate failed" in result.output and "--resume" in result.output
    done = {name: (out / name / "done.json").stat().st_mtime_ns
            for name in ("01-search", "02-finetune", "03-search", "04-recover-short", "05-export")}

    # the failed session's time is kept; pretend it was long, and the finished stage counts it
    spent = json.loads((out / "06-evaluate" / "spent.json").read_text())["seconds"]
    assert spent > 0
    (out / "06-evaluate" / "spent.json").write_text(json.dumps({"seconds": 1000.0}))

    # fix the failing stage (fewer samples, on documents neither searched nor fine-tuned on), then resume
    from conftest import stdlib_text

    evaluate_docs = tmp_path / "evaluate-docs"
    evaluate_docs.mkdir()
    for name in ("argparse.py", "doctest.py"):
        (evaluate_docs / name.replace(".py", ".txt")).write_text(stdlib_text(name))
    plan["data"]["evaluate"] = str(evaluate_docs)
    plan["stages"][5]["evaluate"]["samples"] = 1
    path.write_text(yaml.safe_dump(plan))
    result = CliRunner().invoke(cli, ["run", str(path), "--out", str(out), "--resume"])
    assert result.exit_code == 0, result.output
    assert result.output.count("done earlier, skipped") == 5
    assert 1000.0 < json.loads((out / "06-evaluate" / "done.json").read_text())["seconds"] < 2000.0
    assert {name: (out / name / "done.json").stat().st_mtime_ns for name in done} == done

    # the relative search multiplies the fine-tuned factors; short recovery keeps the long ones
    first = load_factors(out / "01-search" / "search" / "best.json")
    second = load_factors(out / "03-search" / "search" / "best.json")
    final = load_factors(out / "04-recover-short" / "search" / "best.json")
    assert second.target_context == 512 and all(b >= a - 1e-9 for a, b in zip(first.long_factor, second.long_factor))
    assert final.long_factor == second.long_factor and final.target_context == 512
    # exported folder carries both factor sets and loads in transformers
    exported = AutoModelForCausalLM.from_pretrained(out / "05-export" / "hf")
    assert exported.config.rope_parameters["short_factor"] == list(final.short_factor)
    assert exported.config.max_position_embeddings == 512
    # the fine-tuned weights are the ones exported (they differ from the starting model)
    start = AutoModelForCausalLM.from_pretrained(plan["model"])
    assert not torch.equal(exported.model.layers[0].mlp.up_proj.weight, start.model.layers[0].mlp.up_proj.weight)
    table = json.loads((out / "06-evaluate" / "perplexity.json").read_text())
    assert set(table["ppl"]) == {"none", "yarn", "found"} and table["lengths"] == [64, 256, 512]
    searched = {w.split("@")[0] for stage in ("01-search", "03-search", "04-recover-short")
                for w in json.loads((out / stage / "search" / "config.json").read_text())["windows"]}
    assert not searched & {w.split("@")[0] for w in table["windows"]}, "evaluated on searched documents"
    passkey = json.loads((out / "06-evaluate" / "passkey.json").read_text())["passkey"]
    assert set(passkey) == {"none", "yarn", "found"} and passkey["found"]["lengths"] == [320]
    report = (out / "07-report" / "report.md").read_text()
    assert "02-finetune" in report and "fine-tuning loss" in report and "perplexity by length" in report
    assert "Passkey retrieval" in report

    # a changed completed stage is refused on resume
    plan["stages"][1]["finetune"]["steps"] = 3
    path.write_text(yaml.safe_dump(plan))
    result = CliRunner().invoke(cli, ["run", str(path), "--out", str(out), "--resume"])
    assert result.exit_code == 1 and "completed stage 02-finetune is not in the plan as it was" in result.output


@pytest.mark.parametrize("change,message", [
    ({"stages": [{"finetune": {"length": 64, "steps": 1}}]}, "needs factors from an earlier search stage"),
    ({"stages": [{"search": {"target": 64, "colour": 1}}]}, "unknown search setting 'colour'"),
    ({"stages": [{"warp": {}}]}, "unknown kind 'warp'"),
    ({"stages": [{"search": {"target": 64}}, {"finetune": {"length": 64, "steps": 1, "schedule": "step"}}]},
     "schedule must be one of linear, constant, cosine"),
    ({"stages": []}, "stages must be a non-empty list"),
])
def test_bad_plans_are_named(change, message):
    plan = {"name": "x", "model": "m", "stages": [{"search": {"target": 64}}]} | change
    with pytest.raises(RopesearchError, match=message):
        plan_from_dict(plan)


def test_example_plans_load():
    assert [s.kind for s in load_plan("search_spaces/plans/smollm2-progressive.yaml").stages] == [
        "search", "finetune", "search", "recover-short", "export", "evaluate", "report"]
    assert load_plan("search_spaces/plans/llama2-7b-2048k.yaml").stages[4].settings.target == 2097152


def test_schedules_and_length_warmup():
    config = FinetuneConfig(length=4096, steps=100, warmup_steps=10, length_warmup=0.5, schedule="linear")
    assert lr_factor(config, 0) == pytest.approx(0.1) and lr_factor(config, 9) == 1.0
    assert lr_factor(config, 55) == pytest.approx(0.5) and lr_factor(config, 100) == 0.0
    assert lr_factor(FinetuneConfig(length=64, steps=100, schedule="constant"), 99) == 1.0
    assert lr_factor(FinetuneConfig(length=64, steps=100, schedule="cosine"), 50) == pytest.approx(0.5)
    lengths = [length_at(config, step, 1024) for step in range(0, 101, 10)]
    assert lengths[0] == 1024 and lengths[5:] == [4096] * 6 and lengths == sorted(lengths)
    assert all(n % 64 == 0 for n in lengths)


def test_finetune_resumes_from_its_checkpoint(tmp_path):
    documents = [TokenizedDocument("d", np.random.default_rng(0).integers(3, 128, 4000).astype(np.int32))]
    config = FinetuneConfig(length=128, steps=4, global_batch=2, micro_batch=1, lr=1e-3, save_every=2,
                            gradient_checkpointing=False)
    straight_model = tiny_model("llama")
    factors = methods.yarn(rope_base(straight_model.config), 2)
    straight = Finetuner(straight_model, factors, documents, config, tmp_path / "a", log=lambda m: None).run()

    # a run killed right after its checkpoint at step 2
    killed = Finetuner(tiny_model("llama"), factors, documents, config, tmp_path / "b", log=lambda m: None)
    save = killed._save_checkpoint

    def save_then_die(step, *args):
        save(step, *args)
        if step == 2:
            raise KeyboardInterrupt

    killed._save_checkpoint = save_then_die
    with pytest.raises(KeyboardInterrupt):
        killed.run()
    resumed_model = tiny_model("llama", seed=5)  # different start: the checkpoint must overwrite it
    resumed = Finetuner(resumed_model, factors, documents, config, tmp_path / "b", log=lambda m: None).run()
    # the whole history comes back: steps before the kill from the checkpoint, the rest trained again
    assert [h["step"] for h in resumed] == [1, 2, 3, 4]
    assert [round(h["loss"], 5) for h in resumed] == [round(h["loss"], 5) for h in straight]
    for a, b in zip(straight_model.parameters(), resumed_model.parameters()):
        torch.testing.assert_close(a, b)


def test_finetune_under_torchrun_with_fsdp(tmp_path):
    """Two CPU processes (gloo): FSDP2 shards the model, the gathered weights have full shapes."""
    import subprocess
    import sys

    worker = __import__("pathlib").Path(__file__).with_name("fsdp_worker.py")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(worker), str(tmp_path)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["world"] == 2 and result["accumulation"] == 2 and len(result["losses"]) == 3
    assert all(np.isfinite(result["losses"]))
    reference = tiny_model("llama").state_dict()
    assert sorted(result["keys"]) == sorted(reference)
    assert all(result["shapes"][k] == list(v.shape) for k, v in reference.items())
    assert (tmp_path / "checkpoint" / "model.safetensors").is_file()


def test_tied_embeddings_checkpoint_and_resume_on_a_cpu(tmp_path):
    """A model whose LM head is its embedding (SmolLM2, Qwen2.5, pocket): the checkpoint used to fail
    on a CPU (safetensors refuses two names for one tensor); it now saves, resumes and stays tied."""
    from transformers import LlamaForCausalLM

    from conftest import tiny_config

    def tied():
        torch.manual_seed(0)
        config = tiny_config("llama")
        config.tie_word_embeddings = True
        return LlamaForCausalLM(config)

    documents = [TokenizedDocument("d", np.random.default_rng(0).integers(3, 128, 4000).astype(np.int32))]
    settings = dict(length=128, global_batch=1, micro_batch=1, save_every=2, gradient_checkpointing=False)
    model = tied()
    factors = methods.yarn(rope_base(model.config), 2)
    Finetuner(model, factors, documents, FinetuneConfig(steps=2, **settings), tmp_path, log=lambda m: None).run()
    again = tied()
    logged = []
    history = Finetuner(again, factors, documents, FinetuneConfig(steps=2, **settings), tmp_path, log=logged.append).run()
    assert logged == ["resuming fine-tuning at step 2"] and len(history) == 2
    assert again.lm_head.weight.data_ptr() == again.model.embed_tokens.weight.data_ptr()
    assert torch.equal(again.model.embed_tokens.weight, model.model.embed_tokens.weight)


def test_a_checkpoint_from_before_mixed_window_rope_resumes_as_it_was_trained(tmp_path, monkeypatch):
    """state.json without the key (every checkpoint written before it existed) still resumes; a
    mixed-window run keeps the unscaled RoPE its short windows were trained with."""
    from ropesearch.rope.patching import RopePatch

    documents = [TokenizedDocument("d", np.random.default_rng(0).integers(3, 128, 4000).astype(np.int32))]
    settings = dict(length=256, global_batch=2, micro_batch=1, mixed_window=0.5, save_every=2,
                    gradient_checkpointing=False)
    model = tiny_model("llama")
    factors = methods.yarn(rope_base(model.config), 4)
    saving = Finetuner._save_checkpoint

    def save_then_stop(self, *args):  # killed right after the checkpoint at step 2
        saving(self, *args)
        raise KeyboardInterrupt

    with monkeypatch.context() as patched:
        patched.setattr(Finetuner, "_save_checkpoint", save_then_stop)
        with pytest.raises(KeyboardInterrupt):
            Finetuner(model, factors, documents, FinetuneConfig(steps=8, **settings), tmp_path, log=lambda m: None).run()
    state_file = tmp_path / "checkpoint" / "state.json"
    state = json.loads(state_file.read_text())
    del state["config"]["mixed_window_rope"]
    state_file.write_text(json.dumps(state))
    seen, logged = [], []
    original_set = RopePatch.set_factors
    monkeypatch.setattr(RopePatch, "set_factors", lambda self, f: seen.append(f.method) or original_set(self, f))
    Finetuner(tiny_model("llama"), factors, documents, FinetuneConfig(steps=8, **settings), tmp_path,
              log=logged.append).run()
    assert any("predates mixed_window_rope" in line for line in logged)
    assert set(seen[1:]) == {"none", "yarn"}


def test_mixed_window_ropes_of_dynamic_ntk_follow_each_runtime():
    """transformers' dynamic NTK switches with the length (the set itself); vLLM's is fixed at the maximum."""
    from ropesearch.pipeline.finetune import MIXED_WINDOW_ROPE

    base = rope_base(tiny_model("llama").config)
    dynamic = methods.make_factors("dynamic-ntk", base, 4)
    (as_transformers,), (as_vllm,) = MIXED_WINDOW_ROPE["transformers"], MIXED_WINDOW_ROPE["vllm"]
    assert as_transformers(dynamic) == dynamic
    served = as_vllm(dynamic)
    assert served.dynamic_factor is None
    assert list(served.factors_for_length(base.original_context)) == list(dynamic.factors_for_length(4 * base.original_context))


@pytest.mark.parametrize("rope", ["transformers", "vllm", "both", "original"])
def test_mixed_window_trains_short_windows_with_the_runtimes_rope(tmp_path, monkeypatch, rope):
    """The original-window micro-batches get the RoPE the runtime applies there (transformers: the
    short factors with the attention factor; vLLM past the window: the long factors), the long ones
    the factor set."""
    from ropesearch.rope import longrope
    from ropesearch.rope.patching import RopePatch

    seen = []
    original_set = RopePatch.set_factors
    monkeypatch.setattr(RopePatch, "set_factors", lambda self, f: seen.append(f) or original_set(self, f))
    documents = [TokenizedDocument("d", np.random.default_rng(0).integers(3, 128, 4000).astype(np.int32))]
    model = tiny_model("llama")
    base = rope_base(model.config)
    factors = longrope(base, np.linspace(1, 4, base.n_factors), short_factor=np.linspace(1, 1.5, base.n_factors),
                       scale=4, attention_factor=1.1)
    config = FinetuneConfig(length=256, steps=10, global_batch=2, micro_batch=1, mixed_window=0.5, save_every=100,
                            gradient_checkpointing=False, mixed_window_rope=rope)
    Finetuner(model, factors, documents, config, tmp_path, log=lambda m: None).run()
    training = seen[1:]  # the first call installs the patch
    short = [f for f in training if f != factors]
    assert len(training) == 20 and 4 <= len(short) <= 16
    kinds = {("short" if f.long_factor == factors.short_factor else "long" if f.long_factor == factors.long_factor
              else f.method, f.attention_factor, f.same_at_all_lengths) for f in short}
    assert kinds == {"transformers": {("short", 1.1, True)}, "vllm": {("long", 1.1, True)},
                     "both": {("short", 1.1, True), ("long", 1.1, True)}, "original": {("none", 1.0, True)}}[rope]
    with pytest.raises(RopesearchError, match="mixed_window_rope must be one of transformers, vllm, both, original"):
        FinetuneConfig(length=256, steps=1, mixed_window_rope="sglang")


def test_passkey_stage_resumes_cell_by_cell(plan_file, tmp_path):
    """A plan's passkey stage: found factors then baselines; an interrupted stage keeps its finished
    (length, depth) cells and computes only the rest, with the keys of an uninterrupted run."""
    path, plan, _ = plan_file
    plan["stages"] = [plan["stages"][0],
                      {"passkey": {"lengths": [288, 320], "depths": [0.2, 0.8], "trials": 2, "baseline_trials": 1,
                                   "methods": ["yarn"]}},
                      {"report": {}}]
    path.write_text(yaml.safe_dump(plan))
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["run", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    file = out / "02-passkey" / "passkey.json"
    whole = json.loads(file.read_text())
    assert whole["baseline_scale"] == 256 / 64 and list(whole["passkey"]) == ["found", "yarn"]
    assert [len(v) for v in whole["passkey"]["found"]["answers"].values()] == [2] * 4
    assert [len(v) for v in whole["passkey"]["yarn"]["answers"].values()] == [1] * 4
    assert "Passkey retrieval (passkey.json)" in (out / "03-report" / "report.md").read_text()

    # as if killed in the found model's last cell after one trial: kept trials are not run again
    partial = json.loads(file.read_text())
    found = partial["passkey"]["found"]
    del found["accuracy"]["320@0.8"], found["accuracy"]["288@0.8"], found["answers"]["288@0.8"]
    del partial["passkey"]["yarn"]
    found["answers"]["320@0.8"] = [["kept", "kept"]]
    found["answers"]["288@0.2"] = [["kept", "kept"], ["kept", "kept"]]
    file.write_text(json.dumps(partial))
    (out / "02-passkey" / "done.json").unlink()
    result = CliRunner().invoke(cli, ["run", str(path), "--out", str(out), "--resume"])
    assert result.exit_code == 0, result.output
    again = json.loads(file.read_text())["passkey"]
    assert again["found"]["answers"]["288@0.2"] == [["kept", "kept"], ["kept", "kept"]]
    assert again["found"]["answers"]["288@0.8"] == whole["passkey"]["found"]["answers"]["288@0.8"]
    assert again["found"]["answers"]["320@0.8"] == [["kept", "kept"], whole["passkey"]["found"]["answers"]["320@0.8"][1]]
    assert again["found"]["accuracy"]["288@0.2"] == 1.0 and again["found"]["accuracy"]["320@0.8"] in (0.5, 1.0)
    assert again["yarn"] == whole["passkey"]["yarn"]

    # other settings with results on disk: one line naming them
    (out / "02-passkey" / "done.json").unlink()
    plan["stages"][1]["passkey"]["lengths"] = [288]
    path.write_text(yaml.safe_dump(plan))
    result = CliRunner().invoke(cli, ["run", str(path), "--out", str(out), "--resume"])
    assert result.exit_code == 1 and "was made with other settings (lengths)" in result.output

    # a length too short for the prompt fails before any trial of the longer ones
    file.unlink()
    plan["stages"][1]["passkey"]["lengths"] = [320, 8]
    path.write_text(yaml.safe_dump(plan))
    result = CliRunner().invoke(cli, ["run", str(path), "--out", str(out), "--resume"])
    assert result.exit_code == 1 and "passkey length 8 is too short" in result.output and not file.exists()


def test_settings_added_after_a_run_started_match_only_when_off():
    from ropesearch.pipeline.runner import _same_stage

    before = {"search": {"target": 64, "space": "fast"}}
    assert _same_stage(before, {"search": {"target": 64, "space": "fast", "short_tolerance": None}})
    assert not _same_stage(before, {"search": {"target": 64, "space": "fast", "short_tolerance": 0.01}})
    assert not _same_stage(before, {"search": {"target": 128, "space": "fast", "short_tolerance": None}})
    assert not _same_stage(before, {"finetune": {"target": 64, "space": "fast"}})
    assert not _same_stage({"search": {"target": 64, "gone": 1}}, {"search": {"target": 64}})
    assert not _same_stage(before, {"search": {"target": 64, "space": "fast", "short_tolerance": 0}})  # 0 is a value


def test_the_committed_million_run_resumes_with_the_shipped_plan():
    """results/million-smollm2 is a run directory: `ropesearch run smollm2-1m --out` a copy of it
    (with trained.safetensors) continues it; a changed completed stage would be refused."""
    from pathlib import Path

    from ropesearch.pipeline.runner import Pipeline

    run = Path(__file__).resolve().parents[1] / "results" / "million-smollm2"
    pipeline = Pipeline(load_plan("smollm2-1m"), run)
    saved = json.loads((run / "plan.json").read_text())
    pipeline._check_unchanged(saved, pipeline.describe())
    assert all((run / stage.name / "done.json").is_file() for stage in pipeline.plan.stages)
    changed = pipeline.describe()
    changed["stages"][2]["search"]["time_minutes"] = 8
    with pytest.raises(RopesearchError, match="completed stage 03-search"):
        pipeline._check_unchanged(saved, changed)


@pytest.mark.parametrize("settings,message", [
    ({"lengths": [300, 300]}, "lengths must differ"),
    ({"depths": [0.5, 0.5000001]}, "depths must differ"),
    ({"methods": ["longrope"]}, "methods must be among"),
    ({"trials": 0}, "trials and baseline_trials must be >= 1"),
])
def test_bad_passkey_stages_are_named(settings, message):
    plan = {"name": "x", "model": "m", "stages": [{"search": {"target": 64}}, {"passkey": settings}]}
    with pytest.raises(RopesearchError, match=message):
        plan_from_dict(plan)
