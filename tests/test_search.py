"""The search: spaces, operators that keep factors legal, and a loop that resumes to the same result."""

import json
from dataclasses import replace

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from conftest import search_kwargs, tiny_model, tiny_tokenizer
from ropesearch.cli import cli
from ropesearch.errors import RopesearchError
from ropesearch.rope import RopeBase, critical_dimension, in_range_length, methods, unturned
from ropesearch.search import load_space, space_from_dict
from ropesearch.search.space import space_to_dict
from ropesearch.search.encoding import Encoding
from ropesearch.search.operators import FactorCrossover, FactorMutation
from ropesearch.search.session import SearchConfig, run_search

BASE = RopeBase(10_000.0, 32, 64)
TARGET = 256


@pytest.fixture(scope="module")
def loaded():
    tokenizer = tiny_tokenizer()
    return tiny_model("llama", vocab_size=len(tokenizer)), tokenizer


def tiny_space(name="fast", **budget):
    space = load_space(name)
    return replace(space, budget=replace(space.budget, **({"generations": 3} | budget)))


def search(loaded, out, space, **kwargs):
    # the loop's mechanics without the short guard (which caps the attention gene); it has its own tests
    kwargs.setdefault("short_tolerance", None)
    config, runtime = search_kwargs(kwargs)
    return run_search(SearchConfig("tiny", "builtin", TARGET, space=space, **config), out, loaded=loaded,
                      log=lambda m: None, **runtime)


def history_without_timing(path):
    rows = [json.loads(line) for line in (path / "history.jsonl").read_text().splitlines()]
    for row in rows:
        row.pop("seconds")
    return rows


# ---- spaces ------------------------------------------------------------------------------
def test_shipped_spaces_load_with_the_documented_settings():
    longrope = load_space("longrope")
    assert (longrope.budget.population, longrope.budget.generations, longrope.budget.mutations,
            longrope.budget.crossovers, longrope.budget.top_k) == (64, 40, 16, 16, 32)
    assert longrope.operators.mutation_prob == 0.3 and longrope.factors.step == 0.01 and longrope.factors.high == 1.25
    assert longrope.start_tokens[:4] == (0, 1, 2, 4) and longrope.start_tokens[-1] == 256
    assert load_space("longrope2").factors.critical_dimension == "theory"
    assert load_space("longrope2").objective == "needle"
    assert load_space("fast").fidelity.screen_samples == 1


@pytest.mark.parametrize("change,message", [
    ({"budget": {"top_k": 100}}, "top_k"),
    ({"factors": {"lowest": 1}}, "unknown key 'lowest'"),
    ({"factors": {"monotone": "yes"}}, "monotone must be true or false"),
    ({"operators": {"mutation": "gauss"}}, "operators.mutation must be segment or neighbour"),
    ({"budget": {"population": 10.5}}, "population must be a whole number"),
    ({"factors": {"critical_dimension": 7}}, "critical_dimension must be null, 'theory' or an even number"),
    ({"factors": {"floor_unturned": 1.5}}, r"floor_unturned must be null or a share in \(0, 1\]"),
    ({"factors": {"floor_unturned": True}}, "floor_unturned must be a number or null"),
    ({"seeds": ["pi", "rope9"]}, "unknown seed method 'rope9'"),
    ({"colour": "red"}, "unknown key 'colour'"),
    ({"objective": "bleu"}, r"objective must be one of ppl, needle, ppl\+needle, ppl\+short"),
])
def test_bad_spaces_are_named(tmp_path, change, message):
    data = yaml.safe_load(open("search_spaces/fast.yaml"))
    for key, value in change.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) and isinstance(data.get(key), dict) else value
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(RopesearchError, match=message):
        load_space(path)
    with pytest.raises(RopesearchError, match="neither a file nor shipped .shipped search spaces, usable by name: fast, longrope"):
        load_space("no-such-space")


# ---- encoding and operators --------------------------------------------------------------------
@pytest.mark.parametrize("name", ["fast", "longrope", "longrope2"])
def test_operators_keep_genomes_on_grid_in_bounds_and_monotone(name):
    encoding = Encoding(load_space(name), BASE, TARGET)
    rng = np.random.default_rng(0)
    low, high = encoding.bounds
    parents = encoding.repair(rng.uniform(low, high, (40, encoding.n_var)))
    mutated = FactorMutation(encoding)._do(None, parents, random_state=rng)
    crossed = FactorCrossover(encoding)._do(None, np.stack([parents[:20], parents[20:]]), random_state=rng)[0]
    n = encoding.n_factor_genes
    for genomes in (parents, mutated, crossed):
        factors = genomes[:, :n]
        assert np.all(factors >= low[:n]) and np.all(factors <= high[:n] + 1e-12)
        assert np.all(np.diff(factors, axis=1) >= 0)
        assert np.allclose(factors / 0.01, np.round(factors / 0.01))
        for genome in genomes:
            decoded = encoding.decode(genome)
            assert decoded.is_monotone() and len(decoded.long_factor) == BASE.n_factors
    assert not np.array_equal(mutated, parents) and not np.array_equal(crossed, parents[:20])


def test_segment_mutation_moves_a_flat_run_as_a_block():
    encoding = Encoding(load_space("fast"), BASE, TARGET)
    genome = encoding.encode([1.0] * 4 + [2.0] * 8 + [3.0] * 4)
    rng = np.random.default_rng(1)
    children = FactorMutation(encoding)._do(None, np.repeat(genome[None], 200, axis=0), random_state=rng)
    run = children[:, 5:11]  # strictly inside the flat run: repair alone could never move these together
    moved = (run[:, 0] != 2.0) & np.all(run == run[:, :1], axis=1)
    assert moved.sum() >= 5


def test_neighbour_mutation_needs_no_repair_to_stay_ordered():
    encoding = Encoding(load_space("longrope"), BASE, TARGET)
    genome = encoding.seed_genomes()["yarn"]
    children = FactorMutation(encoding)._do(None, np.repeat(genome[None], 50, axis=0),
                                            random_state=np.random.default_rng(2))
    assert np.all(np.diff(children[:, : encoding.n_factor_genes], axis=1) >= 0)


def test_seeds_are_the_methods_true_vectors():
    encoding = Encoding(load_space("fast"), BASE, TARGET)
    seeds = encoding.seed_genomes()
    for method in ("pi", "ntk", "yarn"):
        true = np.asarray(methods.make_factors(method, BASE, 4).long_factor)
        assert np.allclose(encoding.decode(seeds[method]).long_factor, np.clip(true, 1, 5), atol=0.005 + 1e-9)


def test_searched_attention_seeds_each_curve_with_longrope_attention_too():
    encoding = Encoding(load_space("fast"), BASE, TARGET)
    seeds = {name: encoding.decode(genome) for name, genome in encoding.seed_genomes().items()}
    longrope_attention = methods.longrope_mscale(TARGET / BASE.original_context, BASE.original_context)
    yarn = methods.make_factors("yarn", BASE, 4)
    assert seeds["yarn"].attention_factor == pytest.approx(yarn.attention_factor, abs=1e-3)
    assert seeds["yarn+longrope-attention"].attention_factor == pytest.approx(longrope_attention, abs=1e-3)
    assert seeds["yarn+longrope-attention"].long_factor == seeds["yarn"].long_factor
    ntk, blend = np.asarray(seeds["ntk"].long_factor), np.asarray(seeds["ntk~yarn"].long_factor)
    assert np.all(blend >= np.minimum(ntk, seeds["yarn"].long_factor) - 0.01)
    assert np.all(blend <= np.maximum(ntk, seeds["yarn"].long_factor) + 0.01) and not np.allclose(blend, ntk)
    # every seed fits in the initial population
    assert len(seeds) <= load_space("fast").budget.population


def test_attention_mutation_nudges_rather_than_resamples():
    encoding = Encoding(load_space("fast"), BASE, TARGET)
    genome = encoding.seed_genomes()["ntk~yarn"]
    children = FactorMutation(encoding)._do(None, np.repeat(genome[None], 400, axis=0),
                                            random_state=np.random.default_rng(3))
    column = encoding.attention_column
    moved = children[:, column] != genome[column]
    low, high = encoding.bounds
    assert moved.sum() >= 20  # it does mutate
    # a uniform resample over [1, 1.5] would put about a third of them over 0.15 away
    assert np.max(np.abs(children[moved, column] - genome[column])) < 0.15 * (high[column] - low[column]) / 0.5


def test_blend_seeds_lie_between_ntk_and_yarn_in_order_of_their_weight():
    encoding = Encoding(load_space("fast"), BASE, TARGET)
    seeds = {name: np.asarray(encoding.decode(g).long_factor) for name, g in encoding.seed_genomes().items()}
    # more NTK weight: closer to NTK's curve everywhere (up to the 0.01 grid)
    ntk = np.log(seeds["ntk"])
    distance = [np.abs(np.log(seeds[name]) - ntk).sum() for name in ("ntk~yarn@0.25", "ntk~yarn", "ntk~yarn@0.75")]
    assert distance[0] > distance[1] > distance[2] > 0


def test_critical_dimension_fills_fast_dims_with_an_ntk_curve():
    space = load_space("longrope2")
    encoding = Encoding(space, BASE, TARGET)
    first = critical_dimension(BASE) // 2
    assert encoding.first_free == first and encoding.n_factor_genes == BASE.n_factors - first
    genome = encoding.seed_genomes()["pi"]
    factors = np.asarray(encoding.decode(genome).long_factor)
    assert factors[0] == 1.0 and np.allclose(factors[:first], factors[first] ** (np.arange(first) / first))
    assert np.all(np.diff(factors) >= 0)


def test_floor_unturned_holds_untrained_dims_at_the_scale_relative_to_the_fine_tuned_window():
    floored = replace(load_space("million"), factors=replace(load_space("million").factors, floor_unturned=1.0))
    plain = replace(floored, factors=replace(floored.factors, floor_unturned=None))
    rng = np.random.default_rng(0)
    for reference in (None, methods.yarn(BASE, 2.0)):  # direct, and on top of a model fine-tuned at 2x
        target = TARGET if reference is None else 4 * TARGET
        encoding = Encoding(floored, BASE, target, reference=reference)
        window = BASE.original_context if reference is None else reference.target_context
        ref_factors = np.ones(BASE.n_factors) if reference is None else np.asarray(reference.long_factor)
        # pairs that never turned once in the window trained at, with the factors trained with
        never = window * BASE.inv_freq() / ref_factors < 2 * np.pi
        assert 0 < never.sum() < BASE.n_factors and np.array_equal(unturned(BASE, reference), never)
        genomes = [*encoding.seed_genomes().values(), *np.exp(rng.normal(0, 1.5, (64, encoding.n_var)))]
        for genome in encoding.repair(np.asarray(genomes)):
            factors = encoding.decode(genome)
            relative = np.asarray(factors.long_factor) / ref_factors
            assert np.all(relative[never] >= encoding.search_scale - 1e-9)
            assert in_range_length(factors, reference) >= target - 1e-6  # no trained angle left at the target
        # without the floor the same genomes reach below it (the first 1M run's factors did, and failed past 41%)
        loose = Encoding(plain, BASE, target, reference=reference)
        lowest = [np.asarray(loose.decode(g).long_factor)[never] / ref_factors[never] for g in loose.repair(np.asarray(genomes))]
        assert min(x.min() for x in lowest) < loose.search_scale
    # the short regime searches short_factor, which the floor leaves alone
    short = Encoding(floored, BASE, TARGET, reference=methods.yarn(BASE, 4.0), regime="short")
    assert not short.floored.any()
    # a share: in range up to that share of the target, and no further guarantee
    half = replace(floored, factors=replace(floored.factors, floor_unturned=0.5))
    encoding = Encoding(half, BASE, TARGET)
    lengths = [in_range_length(encoding.decode(g)) for g in encoding.repair(np.asarray(genomes))]
    assert min(lengths) >= TARGET / 2 - 1e-6 and min(lengths) < TARGET


def test_a_space_without_the_floor_fingerprints_as_before():
    assert "floor_unturned" not in space_to_dict(load_space("fast"))["factors"]  # earlier runs resume
    floored = replace(load_space("fast"), factors=replace(load_space("fast").factors, floor_unturned=0.75))
    assert space_to_dict(floored)["factors"]["floor_unturned"] == 0.75
    assert space_from_dict(space_to_dict(floored)) == floored


# ---- the loop ----------------------------------------------------------------------------------
def test_search_improves_on_its_seeds_and_writes_the_run(loaded, tmp_path):
    result = search(loaded, tmp_path / "run", tiny_space(generations=4))
    history = history_without_timing(tmp_path / "run")
    full = [r for r in history if r["fidelity"] == "full"]
    seeds = [r["metrics"]["ppl@256"] for r in full if r["generation"] == 0][:3]
    assert result.values[0] <= min(seeds)
    assert any(r["fidelity"] == "screen" for r in history)
    assert len({json.dumps(r["genome"]) for r in full}) == len(full), "a genome was scored twice"
    best = json.loads((tmp_path / "run" / "best.json").read_text())
    assert best["provenance"]["scores"]["ppl@256"] == pytest.approx(result.values[0])
    assert best["constraints"]["monotone"] is True
    assert result.state.stop_reason == "4 generations done"


def test_initial_screening_scores_only_the_promoted_part_of_the_start_in_full(loaded, tmp_path):
    space = tiny_space(generations=1, population=12, top_k=4)
    space = replace(space, fidelity=replace(space.fidelity, initial=True, promote=0.25))
    search(loaded, tmp_path / "run", space)
    start = [r for r in history_without_timing(tmp_path / "run") if r["generation"] == 0]
    screened = [r for r in start if r["fidelity"] == "screen"]
    full = [r for r in start if r["fidelity"] == "full"]
    assert len(screened) == 12 and len(full) == 3
    # the promoted ones are the best screened ones
    cut = sorted(r["metrics"]["screen_ppl"] for r in screened)[2]
    by_genome = {json.dumps(r["genome"]): r["metrics"]["screen_ppl"] for r in screened}
    assert all(by_genome[json.dumps(r["genome"])] <= cut for r in full)


def test_killed_search_resumes_to_the_same_result(loaded, tmp_path):
    space = tiny_space(generations=5)
    straight = search(loaded, tmp_path / "straight", space)
    # a session that stops after 2 generations, then one killed inside generation 4, then a resume
    search(loaded, tmp_path / "resumed", space, stop_after=2)
    from ropesearch.search import objectives

    real_score = objectives.Objective.score
    calls = {"n": 0}

    def dying(self, candidates):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # killed mid-generation, after writing nothing of it
        return real_score(self, candidates)

    objectives.Objective.score = dying
    try:
        with pytest.raises(KeyboardInterrupt):
            search(loaded, tmp_path / "resumed", space, resume=True)
    finally:
        objectives.Objective.score = real_score
    resumed = search(loaded, tmp_path / "resumed", space, resume=True)
    assert resumed.factors == straight.factors and resumed.values == straight.values
    assert history_without_timing(tmp_path / "resumed") == history_without_timing(tmp_path / "straight")
    assert resumed.state.full_evals == straight.state.full_evals
    # the data-only checkpoint carries the baselines, the evaluator's seconds and the offspring's origins
    assert resumed.state.baselines == straight.state.baselines and set(straight.state.baselines) == {"pi", "ntk", "yarn"}
    assert resumed.state.evaluator_seconds > 0
    saved = {name: json.loads((tmp_path / name / "checkpoint.json").read_text()) for name in ("straight", "resumed")}
    assert saved["resumed"]["algorithm"]["origins"] == saved["straight"]["algorithm"]["origins"] != {}
    assert saved["resumed"]["baselines"] == saved["straight"]["baselines"]


def test_budgets_and_early_stopping(loaded, tmp_path):
    result = search(loaded, tmp_path / "evals", tiny_space(generations=50), max_evals=21)
    assert result.state.full_evals == 21 and "evaluation budget" in result.state.stop_reason
    flat = replace(tiny_space(generations=50, patience=1, min_improvement=0.5))
    result = search(loaded, tmp_path / "patience", flat)
    assert result.state.generation == 2 and "no improvement for 1" in result.state.stop_reason


def test_two_objectives_and_needle(loaded, tmp_path):
    result = search(loaded, tmp_path / "nsga", tiny_space("fast", generations=2), objective="ppl+short")
    assert len(result.values) == 2
    assert result.factors.long_factor == result.factors.short_factor
    best = json.loads((tmp_path / "nsga" / "best.json").read_text())
    assert set(best["provenance"]["scores"]) == {"ppl@256", "ppl@64"}
    needle_space = replace(tiny_space("longrope2", generations=1, population=6, mutations=2, crossovers=2,
                                      top_k=3), samples=2)
    result = search(loaded, tmp_path / "needle", needle_space)
    assert "needle_ppl@256" in json.loads((tmp_path / "needle" / "best.json").read_text())["provenance"]["scores"]


def test_cli_search_refuses_to_clobber_and_checks_resume_settings(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("ROPESEARCH_CACHE", str(tmp_path / "cache"))
    model, docs = tiny_model_dir
    space = tmp_path / "small.yaml"
    data = yaml.safe_load(open("search_spaces/fast.yaml"))
    data["budget"].update(generations=1, population=6, top_k=3)
    space.write_text(yaml.safe_dump(data))
    args = ["search", "--model", str(model), "--data", str(docs), "--target-length", "256", "--space", str(space),
            "--out", str(tmp_path / "run")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "best:" in result.output and (tmp_path / "run" / "best.json").is_file()
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1 and "not empty: pass --resume" in result.output
    result = CliRunner().invoke(cli, args + ["--resume", "--seed", "3"])
    assert result.exit_code == 1 and "cannot resume" in result.output and "seed" in result.output
    result = CliRunner().invoke(cli, args + ["--resume"])
    assert result.exit_code == 0 and "resuming" in result.output
    result = CliRunner().invoke(cli, args[:5] + ["--target-length", "32", "--out", str(tmp_path / "x")])
    assert result.exit_code == 1 and "not beyond the model's window" in result.output

    # held-out evaluation: the documents the search saw are left out
    searched = {w.split("@")[0] for w in json.loads((tmp_path / "run" / "config.json").read_text())["windows"]}
    table = tmp_path / "heldout.json"
    result = CliRunner().invoke(cli, ["baselines", "--model", str(model), "--data", str(docs), "--lengths", "256",
                                      "--samples", "2", "--heldout-of", str(tmp_path / "run"), "--factors",
                                      str(tmp_path / "run" / "best.json"), "--json", str(table)])
    assert result.exit_code == 0, result.output
    evaluated = {w.split("@")[0] for w in json.loads(table.read_text())["windows"]}
    assert len(searched) == 2 and len(evaluated) == 2 and not searched & evaluated


def test_space_from_dict_needs_a_name():
    with pytest.raises(RopesearchError, match="missing key 'name'"):
        space_from_dict({"budget": {}})


def test_the_demo_search_is_budgeted_in_evaluations_so_a_slow_machine_finds_the_same(loaded, tmp_path, monkeypatch):
    """`make demo` counts its search in evaluations (its time cap is only a safety net), and nothing in
    the loop decides by wall time: a clock that makes every generation look 30 s slower changes nothing."""
    import time
    from pathlib import Path

    from ropesearch.pipeline.plan import load_plan

    plan = load_plan(Path(__file__).parents[1] / "search_spaces" / "plans" / "pocket-quickstart.yaml")
    stage = next(s.settings for s in plan.stages if s.kind == "search")
    assert stage.max_evals is not None and stage.time_minutes is not None and stage.time_minutes >= 30
    budget = {"max_evals": 30, "time_minutes": stage.time_minutes}  # the plan's time cap, a tiny model's evaluations
    quick = search(loaded, tmp_path / "quick", tiny_space(generations=50), **budget)
    real_clock, calls = time.perf_counter, iter(range(10**9))
    monkeypatch.setattr(time, "perf_counter", lambda: real_clock() + 15.0 * next(calls))  # each call: 15 s later
    slow = search(loaded, tmp_path / "slow", tiny_space(generations=50), **budget)
    assert slow.state.elapsed > quick.state.elapsed + 60  # it did look slow
    assert slow.factors == quick.factors and slow.values == quick.values
    assert history_without_timing(tmp_path / "slow") == history_without_timing(tmp_path / "quick")
    assert slow.state.stop_reason == quick.state.stop_reason == "evaluation budget (30) spent"


def test_a_search_config_without_a_target_is_one_clear_error():
    from ropesearch.search.session import SearchConfig

    with pytest.raises(RopesearchError, match="a search needs a target length"):
        SearchConfig("pocket").checked()
    assert SearchConfig("pocket", target_length=512).checked().samples == load_space("fast").samples


def test_ppl_needle_searches_packed_windows_and_resumes_to_the_same_result(loaded, tmp_path):
    """`ppl+needle` plants a needle in each search window, so it runs where whole documents are
    shorter than the target (packed windows, the 1M stage); a stopped run resumes to the same best."""
    space = tiny_space("fast", generations=2, population=6, mutations=3, crossovers=1, top_k=3)
    whole = search(loaded, tmp_path / "whole", space, objective="ppl+needle", pack=True, samples=2)
    best = json.loads((tmp_path / "whole" / "best.json").read_text())
    assert set(best["provenance"]["scores"]) == {f"ppl+needle@{TARGET}"}
    rows = [json.loads(line) for line in (tmp_path / "whole" / "history.jsonl").read_text().splitlines()]
    assert all(f"ppl+needle@{TARGET}" in r["metrics"] for r in rows if r["fidelity"] == "full")
    assert any(r["fidelity"] == "screen" for r in rows)  # screened by the same mix (each screen with its needle)
    search(loaded, tmp_path / "split", space, objective="ppl+needle", pack=True, samples=2, stop_after=1)
    resumed = search(loaded, tmp_path / "split", space, objective="ppl+needle", pack=True, samples=2, resume=True)
    assert resumed.values == whole.values
