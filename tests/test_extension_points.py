"""The five common changes are one-file changes: each test adds a toy entry to one table (the
file named in its docstring) and shows every other part of ropesearch picking it up."""

import hashlib
import importlib
import json
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from transformers.models.llama.modeling_llama import LlamaAttention, LlamaDecoderLayer

import ropesearch.cli
from conftest import tiny_model, tiny_tokenizer
from ropesearch.data import Window
from ropesearch.errors import RopesearchError
from ropesearch.evaluate import TorchEvaluator
from ropesearch.evaluate.chunking import SequenceChunking
from ropesearch.tasks import ruler
from ropesearch.models import load_tokenizer, resolve_model, rope_base
from ropesearch.models.architectures import ARCHITECTURES, Architecture
from ropesearch.rope import methods
from ropesearch.rope.factors import RopeBase
from ropesearch.search import load_space, objectives
from ropesearch.search.session import SearchConfig, run_search
from ropesearch.search.space import space_from_dict, space_to_dict


@pytest.fixture
def fresh_cli(monkeypatch):
    """The CLI rebuilt from the tables as they are now (its choices and options derive from them
    when the module loads), and rebuilt again from the shipped tables afterwards."""
    yield lambda: importlib.reload(ropesearch.cli).cli
    monkeypatch.undo()  # the shipped tables first, then the CLI from them
    importlib.reload(ropesearch.cli)


def _half_way(base: RopeBase, scale: float, strength: float = 0.5):
    """A toy method: every factor s^strength."""
    return methods._same_everywhere(base, np.full(base.n_factors, scale ** strength), scale, "toy", strength=strength)


def test_a_method_is_one_entry_in_rope_methods(monkeypatch, fresh_cli, tmp_path):
    """ropesearch/rope/methods.py: METHODS gets the method; the CLI, its options and the seed check follow."""
    toy = methods.Method("toy", _half_way, "the toy method",
                         params=(methods.Param("strength", "the exponent of the scale"),))
    monkeypatch.setitem(methods.METHODS, "toy", toy)
    cli = fresh_cli()
    runner = CliRunner()

    help_text = runner.invoke(cli, ["factors", "--help"]).output
    assert "toy" in help_text and "--strength" in help_text and "the toy method: the exponent" in help_text
    out = tmp_path / "toy.json"
    result = runner.invoke(cli, ["factors", "toy", "-m", "pocket", "-s", "4", "--strength", "0.5", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["rope"]["long_factor"][0] == pytest.approx(2.0)
    result = runner.invoke(cli, ["factors", "pi", "-m", "pocket", "-s", "4", "--strength", "0.5"])
    assert result.exit_code != 0 and "takes no parameter 'strength'" in result.output

    result = runner.invoke(cli, ["baselines", "-m", "pocket", "--methods", "none,toy", "--lengths", "64",
                                 "--samples", "1", "--scale", "2"])
    assert result.exit_code == 0, result.output
    assert "toy@x2" in result.output

    assert space_from_dict({"name": "t", "seeds": ["toy", "pi"]}).seeds == ("toy", "pi")  # a seed, as the shipped methods are
    with pytest.raises(RopesearchError, match="unknown seed method 'toy2'"):
        space_from_dict({"name": "t", "seeds": ["toy2"]})


SHIPPED_SAMPLES = "ce3a9d8516890e28ab7859ba6102bf541dd586aac2480b407b5bf4d7a695a346"  # before seed keys existed


def _digest(suite, tasks) -> str:
    digest = hashlib.sha256()
    for task in tasks:
        for sample in suite.samples(task, 1024, 2):
            digest.update(sample.prompt.encode())
            digest.update("|".join(sample.answers).encode())
    return digest.hexdigest()


def _toy_task(suite, rng, spec, budget, what):
    """A toy family: remember one number said once in the filler."""
    value = str(int(rng.integers(10_000, 100_000)))
    return ruler._Layout("Remember the number.\n", "\nThe number was", suite._essay, inserts=[f" It is {value}."],
                         depths=[0.5]), [value]


def test_a_ruler_task_is_one_entry_in_tasks_ruler(monkeypatch, fresh_cli):
    """ropesearch/tasks/ruler.py: TASKS (and FAMILIES for a new kind of prompt) get the task; no
    other task's samples change, wherever it goes, and its own do not depend on its place."""
    suite = ruler.RulerSuite(load_tokenizer(resolve_model("pocket")))
    shipped = list(ruler.TASKS)
    assert _digest(suite, shipped) == SHIPPED_SAMPLES

    monkeypatch.setitem(ruler.FAMILIES, "toy", _toy_task)
    spec = ruler.TaskSpec("toy", 8)
    monkeypatch.setattr(ruler, "TASKS", {"toy": spec, **ruler.TASKS})  # first: every shipped task moves down
    suite = ruler.RulerSuite(load_tokenizer(resolve_model("pocket")))
    assert _digest(suite, shipped) == SHIPPED_SAMPLES
    first = suite.sample("toy", 1024, 0)
    assert first.prompt_tokens == 1024 - 8 and first.answers[0] in first.prompt
    assert ruler.parse_tasks("all")[0] == "toy"

    monkeypatch.setattr(ruler, "TASKS", {**{t: s for t, s in ruler.TASKS.items() if t != "toy"}, "toy": spec})
    assert ruler.RulerSuite(load_tokenizer(resolve_model("pocket"))).sample("toy", 1024, 0) == first
    help_text = " ".join(CliRunner().invoke(fresh_cli(), ["ruler", "--help"]).output.split())
    assert "fwe, toy; or all" in help_text  # ruler --tasks lists it


@dataclass
class _TwoLengths(objectives.Objective):
    """A toy objective: the geometric mean perplexity at half the target and at the target."""

    kind: ClassVar[str] = "toy"
    help: ClassVar[str] = "the toy objective"

    @property
    def names(self) -> list[str]:
        return [f"toy@{self.target}"]

    def lengths(self) -> list[int]:
        return [self.target // 2, self.target]

    def values(self, score) -> list[float]:
        return [float(np.sqrt(score.ppl[self.target // 2] * score.ppl[self.target]))]


def test_an_objective_is_one_entry_in_search_objectives(monkeypatch, fresh_cli, tmp_path):
    """ropesearch/search/objectives.py: a subclass and its OBJECTIVES entry; the CLI, spaces and the
    loop take it as they take the shipped ones."""
    monkeypatch.setitem(objectives.OBJECTIVES, "toy", _TwoLengths)
    help_text = " ".join(CliRunner().invoke(fresh_cli(), ["search", "--help"]).output.split())  # as wrapped
    assert "toy: the toy objective" in help_text
    assert space_from_dict({"name": "t", "objective": "toy"}).objective == "toy"

    tokenizer = tiny_tokenizer()
    fast = load_space("fast")
    small = replace(fast, budget=replace(fast.budget, generations=1))
    result = run_search(SearchConfig("tiny", "builtin", 256, space=small, objective="toy", short_tolerance=None),
                        tmp_path / "run", loaded=(tiny_model("llama", vocab_size=len(tokenizer)), tokenizer),
                        log=lambda m: None)
    best = json.loads((tmp_path / "run" / "best.json").read_text())["provenance"]
    assert best["objective"] == "toy" and list(best["scores"]) == ["toy@256"]
    assert best["scores"]["toy@256"] == pytest.approx(result.values[0])
    rows = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert {tuple(r["metrics"]) for r in rows if r["fidelity"] == "full"} == {("toy@256",)}


class ToyDecoderLayer(LlamaDecoderLayer):
    """A decoder family transformers does not have: Llama's layer under another name."""


class ToyAttention(LlamaAttention):
    """Its attention: Llama's, found (as a family's classes are) beside its modeling module's functions."""

    __module__ = LlamaAttention.__module__


def test_an_architecture_is_one_entry_in_models_architectures(monkeypatch):
    """ropesearch/models/architectures.py: ARCHITECTURES gets the family; the evaluator then runs its
    layers and attention over chunks of the sequence, with the same scores."""
    model = tiny_model("llama")
    for layer in model.model.layers:
        layer.__class__, layer.self_attn.__class__ = ToyDecoderLayer, ToyAttention
    base = rope_base(model.config)
    candidates = [methods.none(base), methods.yarn(base, 4)]
    rng = np.random.default_rng(0)
    data = [Window(f"w{i}", rng.integers(0, 128, 256)) for i in range(2)]
    whole = TorchEvaluator(model, progress=False, sequence_chunk=0).score(candidates, data, [256])

    with torch.no_grad(), SequenceChunking(model, 100) as chunking:
        assert chunking.layers == 0  # an unknown family runs whole
    monkeypatch.setitem(ARCHITECTURES, "toy", Architecture("toy", "ToyDecoderLayer", "ToyAttention"))
    projections = []
    model.model.layers[0].self_attn.q_proj.register_forward_hook(lambda m, args, out: projections.append(args[0].shape[1]))
    with torch.no_grad(), SequenceChunking(model, 100) as chunking:
        model.model(input_ids=torch.zeros(2, 130, dtype=torch.long), use_cache=False)
        assert chunking.layers == 2
    assert projections == [50, 50, 30]  # q/k/v too: Llama's attention, chunked
    chunked = TorchEvaluator(model, progress=False, sequence_chunk=100).score(candidates, data, [256])
    for a, b in zip(whole, chunked):
        assert b.nll[256] == pytest.approx(a.nll[256], rel=1e-6, abs=1e-6)


@dataclass(frozen=True)
class ToyStage:
    """A toy stage's settings: writes the current factors' mean."""
    digits: int = 3


def _toy_stage(pipeline, stage, folder):
    mean = round(float(np.mean(pipeline.factors.long_factor)), stage.settings.digits)
    (folder / "mean.txt").write_text(f"{mean}\n")
    return {"mean": mean}


def test_a_stage_kind_is_one_entry_in_pipeline_stages(monkeypatch, tiny_model_dir, tmp_path):
    """ropesearch/pipeline/stages.py: STAGES gets the kind; plans parse, check and order it, and
    `ropesearch run` runs it, records it, skips it on --resume and sums it up."""
    from ropesearch.pipeline import stages
    from ropesearch.pipeline.plan import plan_from_dict
    from ropesearch.pipeline.runner import run_plan, summary

    toy = stages.StageKind(ToyStage, _toy_stage, checks=lambda s: [(0 <= s.digits <= 6, "digits must be 0-6")],
                           produced=lambda outputs: f"mean factor {outputs['mean']}")
    monkeypatch.setitem(stages.STAGES, "toy-mean", toy)
    monkeypatch.setenv("ROPESEARCH_CACHE", str(tmp_path / "cache"))
    model, docs = tiny_model_dir
    space = space_to_dict(load_space("fast"))
    space["budget"].update(population=4, top_k=2, mutations=2, crossovers=1, generations=1)
    (tmp_path / "space.json").write_text(json.dumps(space))
    plan = {"name": "toy", "model": str(model), "data": str(docs),
            "stages": [{"search": {"target": 256, "space": str(tmp_path / "space.json"), "samples": 1}},
                       {"toy-mean": {"digits": 2}}]}
    with pytest.raises(RopesearchError, match=r"stage 2 \(toy-mean\): digits must be 0-6"):
        plan_from_dict(plan | {"stages": [plan["stages"][0], {"toy-mean": {"digits": 9}}]})
    with pytest.raises(RopesearchError, match="unknown toy-mean setting 'colour'"):
        plan_from_dict(plan | {"stages": [plan["stages"][0], {"toy-mean": {"colour": 1}}]})
    with pytest.raises(RopesearchError, match="stage 01-toy-mean needs factors from an earlier search stage"):
        plan_from_dict(plan | {"stages": [{"toy-mean": {}}]})

    outputs = run_plan(plan_from_dict(plan), tmp_path / "run", log=lambda line: None)
    best = float(np.mean(json.loads((tmp_path / "run" / "01-search" / "search" / "best.json").read_text())
                         ["rope"]["long_factor"]))
    assert outputs["02-toy-mean"] == {"mean": round(best, 2)}
    assert (tmp_path / "run" / "02-toy-mean" / "mean.txt").read_text() == f"{round(best, 2)}\n"
    assert summary(outputs)[1] == f"02-toy-mean: mean factor {round(best, 2)}"
    lines = []
    assert run_plan(plan_from_dict(plan), tmp_path / "run", resume=True, log=lines.append) == outputs
    assert "[2/2] 02-toy-mean: done earlier, skipped" in lines
