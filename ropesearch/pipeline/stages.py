"""Every kind of plan stage, in one table: `STAGES` maps a kind's name (as plans write it) to a
`StageKind`: its settings (a frozen dataclass, checked field by field), the ranges the types alone do
not pin down (`check`), whether it needs factors from an earlier search, and how it runs.

A stage runs as `kind.run(pipeline, stage, folder) -> outputs`: `pipeline` (runner.Pipeline) holds
the current model, factors and documents between stages; `folder` is the stage's own folder; the
outputs (paths, numbers) are what done.json records and what later stages read (`factors`, `model`,
`search_dir`, `documents`). Adding a kind is one entry here (and a test); plan parsing, the order
check, the runner and `ropesearch run`'s summary read it from the table.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ropesearch.errors import RopesearchError
from ropesearch.export.factor_file import load_factors, save_factors
from ropesearch.export.model_folder import FORMATS, save_model_folder
from ropesearch.own_files import atomic_write_bytes, atomic_write_text
from ropesearch.pipeline.finetune import FinetuneConfig
from ropesearch.rope import make_factors
from ropesearch.rope.methods import METHODS
from ropesearch.search.objectives import OBJECTIVES
from ropesearch.search.space import load_space
from ropesearch.validate import check_safetensors, read_json
from ropesearch.api import export
from ropesearch.data import tokenize_documents
from ropesearch.export import apply_to_config
from ropesearch.models import load_config, load_model, load_tokenizer, resolve_model
from ropesearch.search.screening import screen_rank_correlation


# ---- settings --------------------------------------------------------------------------------
@dataclass(frozen=True)
class SearchStage:
    target: int
    space: str = "fast"
    objective: str | None = None
    relative: bool = False  # search on top of the previous stage's factors (after fine-tuning)
    time_minutes: float | None = None
    max_evals: int | None = None
    samples: int | None = None
    seed: int = 0
    short_tolerance: float | None = 0.01  # the short guard (see search/short_guard.py); null: off
    workers: int | None = None  # score on Ray workers (as search --workers; ray_address, gpus_per_worker too)
    ray_address: str | None = None
    gpus_per_worker: int | None = None


@dataclass(frozen=True)
class RecoverShortStage:
    lengths: tuple[int, ...] = ()  # default: the original window and twice it
    high: float = 1.25  # ceiling of the short factors (absolute)
    space: str = "fast"
    time_minutes: float | None = None
    max_evals: int | None = None
    samples: int | None = None
    seed: int = 0


@dataclass(frozen=True)
class ExportStage:
    formats: tuple[str, ...] = ("hf", "vllm", "csv")


@dataclass(frozen=True)
class EvaluateStage:
    lengths: tuple[int, ...] = ()
    methods: tuple[str, ...] = ("ntk", "yarn")
    samples: int = 4
    seed: int = 0
    heldout: bool = True  # leave out the documents the last search stage scored on
    passkey: bool = False
    passkey_lengths: tuple[int, ...] = ()  # default: the evaluation lengths
    passkey_depths: tuple[float, ...] = (0.1, 0.5, 0.9)
    passkey_trials: int = 3
    native: bool = False  # also the unscaled model reading the same text in windows of its own length
    unscaled: bool = True  # the unscaled model at every length (false: only its native-window column)
    baseline_scale: str = "target"  # baselines at the final target's scale at every length, or "length"


@dataclass(frozen=True)
class PasskeyStage:
    """Passkey retrieval of the current model and factors against baselines on the starting model,
    resumable cell by cell (one cell: a length and a depth; at 1M tokens a trial is a 1M prefill)."""
    lengths: tuple[int, ...] = ()  # default: the original window x 2^k up to the target
    depths: tuple[float, ...] = (0.1, 0.5, 0.9)
    trials: int = 3  # keys per length and depth, found factors
    baseline_trials: int | None = None  # keys per length and depth for the baselines (default: trials)
    methods: tuple[str, ...] = ("ntk", "yarn")  # baselines at the target's scale; none: the unscaled model
    seed: int = 0


@dataclass(frozen=True)
class ReportStage:
    pass


# ---- checks: (holds, what to say if not) ------------------------------------------------------------
def _budget_checks(s) -> list[tuple[bool, str]]:
    load_space(s.space)  # a missing or invalid space fails here, before any stage runs
    return [(s.time_minutes is None or s.time_minutes > 0, "time_minutes must be > 0"),
            (s.max_evals is None or s.max_evals >= 1, "max_evals must be >= 1"),
            (s.samples is None or s.samples >= 1, "samples must be >= 1"),
            (s.seed >= 0, "seed must be >= 0")]


def _search_checks(s: SearchStage) -> list[tuple[bool, str]]:
    return _budget_checks(s) + [
        (s.target >= 2, f"target must be a length >= 2 tokens, got {s.target}"),
        (s.objective is None or s.objective in OBJECTIVES,
         f"objective must be one of {', '.join(OBJECTIVES)}, got {s.objective!r}"),
        (s.short_tolerance is None or s.short_tolerance >= 0,
         f"short_tolerance must be >= 0 (or null: no guard), got {s.short_tolerance}")]


def _recover_short_checks(s: RecoverShortStage) -> list[tuple[bool, str]]:
    return _budget_checks(s) + [(all(n >= 2 for n in s.lengths), "lengths must be >= 2 tokens"),
                                (s.high > 0, "high must be > 0")]


def _export_checks(s: ExportStage) -> list[tuple[bool, str]]:
    return [(bool(s.formats) and set(s.formats) <= set(FORMATS),
             f"formats must be a non-empty list of {', '.join(FORMATS)}, got {list(s.formats)}")]


def _methods_check(methods) -> tuple[bool, str]:
    return set(methods) <= set(METHODS), f"methods must be among {', '.join(METHODS)}, got {list(methods)}"


def _evaluate_checks(s: EvaluateStage) -> list[tuple[bool, str]]:
    return [(all(n >= 2 for n in s.lengths + s.passkey_lengths), "lengths must be >= 2 tokens"),
            _methods_check(s.methods),
            (s.samples >= 1 and s.passkey_trials >= 1, "samples and passkey_trials must be >= 1"),
            (all(0 <= d <= 1 for d in s.passkey_depths), "passkey_depths must lie in [0, 1]"),
            (s.seed >= 0, "seed must be >= 0"),
            (s.baseline_scale in ("target", "length"),
             f"baseline_scale must be target or length, got {s.baseline_scale!r}")]


def _passkey_checks(s: PasskeyStage) -> list[tuple[bool, str]]:
    return [(all(n >= 2 for n in s.lengths), "lengths must be >= 2 tokens"),
            _methods_check(s.methods),
            (s.trials >= 1 and (s.baseline_trials is None or s.baseline_trials >= 1),
             "trials and baseline_trials must be >= 1"),
            (bool(s.depths) and all(0 <= d <= 1 for d in s.depths), "depths must lie in [0, 1]"),
            (len(set(s.lengths)) == len(s.lengths), f"lengths must differ, got {list(s.lengths)}"),
            (len({f"{d:g}" for d in s.depths}) == len(s.depths), f"depths must differ, got {list(s.depths)}"),
            (s.seed >= 0, "seed must be >= 0")]


# ---- running ----------------------------------------------------------------------------------------
def run_search_stage(p, stage, folder: Path) -> dict:
    from ropesearch.evaluate.workers import worker_options
    from ropesearch.search.session import SearchConfig, run_search
    from ropesearch.search.rundir import RunDir

    s = stage.settings
    workers = worker_options(s.workers, s.ray_address, s.gpus_per_worker)
    config = SearchConfig(p.model_spec, p.plan.data["search"], s.target, space=s.space, objective=s.objective,
                          samples=s.samples, seed=s.seed, max_evals=s.max_evals, time_minutes=s.time_minutes,
                          reference=p.factors if s.relative else None, short_tolerance=s.short_tolerance,
                          pack=p.plan.pack, documents=p.documents("search"), workers=workers)
    result = run_search(config, folder / "search", resume=(folder / "search" / "config.json").is_file(),
                        log=p.log, loaded=None if workers else p.loaded())  # workers load their own model
    rank = screen_rank_correlation(RunDir(folder / "search").history())
    if rank["pairs"]:
        shown = ("n/a (fewer than 3)" if rank["spearman"] is None
                 else f"{rank['spearman']:.2f} (Kendall {rank['kendall']:.2f})")
        p.log(f"screen vs full score over {rank['pairs']} candidates: Spearman {shown}")
    return {"factors": str(folder / "search" / "best.json"), "values": result.values,
            "search_dir": str(folder / "search"), "screen_rank": rank}


def run_recover_short_stage(p, stage, folder: Path) -> dict:
    from ropesearch.search.session import SearchConfig, run_search

    s = stage.settings
    factors = p.factors
    space = load_space(s.space)
    # short factors only: no attention or n̂ genes (those are shared with the long regime)
    space = replace(space, factors=replace(space.factors, high=s.high, critical_dimension=None),
                    attention_factor=None, start_tokens=None, seeds=())
    config = SearchConfig(p.model_spec, p.plan.data["search"], factors.target_context, space=space,
                          samples=s.samples, seed=s.seed, max_evals=s.max_evals, time_minutes=s.time_minutes,
                          reference=factors, short_lengths=tuple(s.lengths) or (factors.base.original_context,),
                          pack=p.plan.pack, documents=p.documents("search"))
    result = run_search(config, folder / "search", resume=(folder / "search" / "config.json").is_file(),
                        log=p.log, loaded=p.loaded())
    return {"factors": str(folder / "search" / "best.json"), "values": result.values,
            "search_dir": str(folder / "search")}


def run_finetune_stage(p, stage, folder: Path) -> dict:
    import torch

    from ropesearch.pipeline.finetune import Finetuner

    ref = resolve_model(p.model_spec)
    factors = p.factors
    p.unload()
    # float32 master weights; the forward runs under bf16 autocast on a GPU
    model = load_model(ref, dtype=torch.float32, device=p.plan.device)
    tokenizer = load_tokenizer(ref)
    documents = tokenize_documents(p.documents("finetune"), tokenizer)
    trainer = Finetuner(model, factors, documents, stage.settings, folder, eos_id=tokenizer.eos_token_id, log=p.log)
    history = trainer.run()
    weights = trainer.full_state_dict()
    save_finetuned(model, tokenizer, ref, factors, folder, weights, training=_training_record(stage.settings))
    if stage.settings.trainable:  # the trained tensors alone: base model + this file = the fine-tuned model
        from safetensors.torch import save

        trained = {name: weights[name].contiguous() for name, parameter in model.named_parameters()
                   if parameter.requires_grad and name in weights}
        atomic_write_bytes(folder / "trained.safetensors", save(trained))
    atomic_write_text(folder / "history.json", json.dumps(history, indent=1) + "\n")
    return {"model": str(folder / "model"), "factors": str(folder / "model" / "ropesearch_factors.json"),
            "final_loss": history[-1]["loss"] if history else None,
            "documents": sorted(d.name for d in documents)}


def _training_record(settings) -> dict:
    """What the factor file of a fine-tuned model says of its training: the length, and for a
    mixed-window run the runtime whose original window the short micro-batches kept."""
    record = {"length": settings.length, "steps": settings.steps}
    if settings.mixed_window:
        record |= {"mixed_window": settings.mixed_window, "mixed_window_rope": settings.short_window_rope}
    return record


def save_finetuned(model, tokenizer, ref, factors, folder: Path, weights=None, training: dict | None = None) -> None:
    """folder/model: the weights, the tokenizer and the config with the factors, plus the factor file."""
    config = load_config(ref)
    apply_to_config(config, factors, allow_start_tokens=True)
    save_model_folder(model, tokenizer, config, folder / "model", state_dict=weights)
    save_factors(factors, folder / "model" / "ropesearch_factors.json",
                 provenance={"finetuned": str(folder), **({"training": training} if training else {})})


def restore_finetune_stage(p, folder: Path, record: dict, check) -> dict:
    """A completed fine-tuning stage whose model folder is gone (a run directory copied to a fresh
    machine without weights): rebuilt from the base model and trained.safetensors. Returns the record."""
    outputs = record["outputs"]
    if any(Path(outputs.get("model") or folder / "model").glob("*.safetensors")):
        return record
    kept = outputs.get("factors")
    if kept and Path(kept).is_file() and not record["legacy"]:  # the rebuild applies it: as written
        check(record | {"outputs": {"factors": kept}})
    _rebuild_finetuned(p, folder, outputs)
    return record | {"legacy": True}  # its factor file is new too: recorded anew


def _rebuild_finetuned(p, folder: Path, outputs: dict) -> None:
    import torch
    from safetensors.torch import load_file

    trained, target = folder / "trained.safetensors", folder / "model"
    again = "run the fine-tuning again (delete its done.json) or restore the folder"
    if Path(outputs.get("model") or target).resolve() != target.resolve():  # rebuilt only where it was written
        raise RopesearchError(f"{folder / 'done.json'} names model {outputs.get('model')!r}, not {target}: {again}")
    named = outputs.get("factors")
    if named and Path(named).resolve() != (target / "ropesearch_factors.json").resolve():
        raise RopesearchError(f"{folder / 'done.json'} names factors {named!r}, not the fine-tuned model's: {again}")
    if not trained.is_file():
        raise RopesearchError(f"{target} is missing and {folder} has no trained.safetensors to rebuild "
                              f"it from: {again}")
    check_safetensors(trained, "fine-tuned weights", again)
    p.log(f"rebuilding {target} from {p.model_spec} and {trained.name}")
    ref = resolve_model(p.model_spec)
    model = load_model(ref, dtype=torch.float32, device="cpu")
    tensors = load_file(trained)
    shapes = {name: tuple(parameter.shape) for name, parameter in model.named_parameters()}
    wrong = sorted(name for name, tensor in tensors.items() if shapes.get(name, tuple(tensor.shape)) != tuple(tensor.shape))
    missing = sorted(set(tensors) - set(shapes))
    if missing or wrong:
        name = (missing or wrong)[0]
        raise RopesearchError(f"{trained} holds {name!r}, which {p.model_spec} does not have"
                              + (" in that shape" if not missing else "") + f": {again}")
    model.load_state_dict(tensors, strict=False)
    saved = outputs.get("factors")
    factors, training = p.factors, None
    if saved and Path(saved).is_file():  # as written, with what it says of its training
        factors = load_factors(saved)
        training = (read_json(saved, "fine-tuned factor file", again, expect=dict).get("provenance") or {}).get("training")
    save_finetuned(model, load_tokenizer(ref), ref, factors, folder, training=training)


def run_export_stage(p, stage, folder: Path) -> dict:
    return {"exports": {fmt: str(export(p.factors_file, p.model_spec, folder / fmt, fmt=fmt, overwrite=True,
                                        allow_start_tokens=True)) for fmt in stage.settings.formats}}


def run_evaluate_stage(p, stage, folder: Path) -> dict:
    from ropesearch.tasks.passkey_run import passkey_entries
    from ropesearch.evaluate.baselines import baseline_table, format_table, original_window_warnings
    from ropesearch.evaluate.runs import save_json, searched_documents, setup, WindowSpec

    s = stage.settings
    factors = p.factors
    original = factors.base.original_context
    lengths = sorted(set(s.lengths) or {original * 2**k for k in range(8)
                                        if original * 2**k <= factors.target_context})
    data = p.plan.data["evaluate"]
    exclude = ()
    if s.heldout and p.plan.holdout is None:
        # without a holdout split: leave out what the searches scored and fine-tuning read
        if data == p.plan.data["search"]:
            exclude = {name for run in p.search_dirs for name in searched_documents(run)}
        if data == p.plan.data["finetune"]:
            exclude = set(exclude) | set(p.finetuned_documents)
        exclude = sorted(exclude)
    tables, passkey = {}, {}
    scale = factors.target_context / original  # baselines: the found factors' scale at every length
    # the baselines on the model the plan started from; the found factors on the current model
    unscaled = ("none",) if s.unscaled else ()
    for label, spec, methods, files in (("baselines", p.plan.model, unscaled + tuple(s.methods), ()),
                                        ("found", p.model_spec, (), (str(p.factors_file),))):
        text = WindowSpec(data, s.samples, s.seed, pack=p.plan.pack, exclude=exclude, documents=p.documents("evaluate"))
        run = setup(spec, text, max(lengths), loaded=p.loaded(spec))
        tables[label] = baseline_table(run, lengths, methods=methods, factor_files=files,
                                       scale=scale if s.baseline_scale == "target" else None,
                                       per_length=s.baseline_scale == "length",
                                       native=s.native and label == "baselines")
        if s.passkey:  # while this model is loaded
            entries = _passkey_entries(p, methods if label == "baselines" else ("found",), s.passkey_trials)
            passkey = passkey_entries(entries, p.loaded, s.passkey_lengths or lengths, s.passkey_depths, s.seed,
                                      results=passkey, log=p.log)
    if passkey:
        save_json({"passkey": passkey, "found_model": p.model_spec, "baseline_scale": scale}, folder / "passkey.json")
    merged = dict(tables["baselines"])
    found = tables["found"]
    merged["ppl"] = {**tables["baselines"]["ppl"], "found": next(iter(found["ppl"].values()))}
    merged["seconds"] = {**tables["baselines"]["seconds"], "found": next(iter(found["seconds"].values()))}
    merged["scales"] = {**tables["baselines"]["scales"], "found": factors.scale}
    merged["original_window"] = {"found": next(iter(found.get("original_window", {}).values()), None)}
    if merged["original_window"]["found"] is None:
        del merged["original_window"]
    merged["found_model"] = p.model_spec
    path = save_json(merged, folder / "perplexity.json")
    p.log(format_table(merged))
    for warning in original_window_warnings(merged):
        p.log(warning)
    return {"table": str(path)}


def _passkey_entries(p, names, trials: int, baseline_trials: int | None = None) -> list:
    """"found" (the current model and factors), then each baseline method on the model the plan
    started from, at the found factors' scale ("none": that model unscaled)."""
    from ropesearch.tasks.passkey_run import PasskeyEntry

    factors = p.factors
    scale = factors.target_context / factors.base.original_context
    return [PasskeyEntry("found", factors, trials, p.model_spec) if name == "found" else
            PasskeyEntry(name, None if name == "none" else make_factors(name, factors.base, scale),
                         baseline_trials or trials, p.plan.model) for name in names]


def run_passkey_stage(p, stage, folder: Path) -> dict:
    """The found model first, then each baseline on the starting model at the target's scale;
    every finished (length, depth) cell is saved, and a rerun keeps them."""
    from ropesearch.tasks.passkey import passkey_prompt
    from ropesearch.tasks.passkey_run import passkey_entries
    from ropesearch.evaluate.runs import save_json

    s = stage.settings
    factors = p.factors
    original = factors.base.original_context
    lengths = list(s.lengths) or [original * 2**k for k in range(12) if original * 2**k <= factors.target_context]
    path = folder / "passkey.json"
    header = {"found_model": p.model_spec, "baseline_scale": factors.target_context / original, "seed": s.seed,
              "lengths": lengths}
    saved = read_json(path, "the passkey results so far", "remove it to start the stage again") if path.is_file() else {}
    # found_model is not compared: the completed stages (checked) decide it, and its path moves
    # with a moved run directory
    changed = [k for k in header if k != "found_model" and saved and saved.get(k) != header[k]]
    if changed:
        raise RopesearchError(f"{path} was made with other settings ({', '.join(changed)}): "
                              "restore them, or remove the file to start the stage again")
    _, tokenizer = p.loaded()
    for length in lengths:  # a length too short for the prompt fails now, not after hours of longer ones
        passkey_prompt(tokenizer, length, 0.5, "12345")
    entries = _passkey_entries(p, ("found", *s.methods), s.trials, s.baseline_trials)
    passkey_entries(entries, p.loaded, lengths, s.depths, s.seed, results=saved.get("passkey", {}),
                    save=lambda results: save_json(header | {"passkey": results}, path), log=p.log)
    return {"passkey": str(path)}


def run_report_stage(p, stage, folder: Path) -> dict:
    from ropesearch.report import build_report

    return {"report": str(build_report(p.out, folder))}


# ---- what a finished stage says (ropesearch run's summary, and a resume that skips it) -----------------
def _searched(outputs: dict) -> str:
    from ropesearch.evaluate.baselines import format_ppl

    best = Path(outputs["factors"])
    scores = (read_json(best, "the found factors", "remove the stage's done.json to run it again")
              .get("provenance") or {}).get("scores") if best.is_file() else None
    if not isinstance(scores, dict):  # without its file: the values alone
        scores = {"score": outputs["values"][0]} if outputs.get("values") else {}
    shown = ", ".join(f"{name} {format_ppl(value)}" for name, value in scores.items())
    return f"best {shown} on its search windows; factors in {best}" if shown else f"factors in {best}"


def _finetuned(outputs: dict) -> str:
    loss = "" if outputs.get("final_loss") is None else f", final loss {outputs['final_loss']:.3f}"
    return f"fine-tuned model in {outputs['model']}{loss}"


def _exported(outputs: dict) -> str:
    written = ", ".join(f"{fmt} in {path}" for fmt, path in outputs["exports"].items())
    return f"exported {written}" if written else "nothing exported"


def _evaluated(outputs: dict) -> str:
    from ropesearch.evaluate.baselines import format_ppl

    table = read_json(outputs["table"], "the evaluation table", "remove the stage's done.json to run it again") \
        if Path(outputs["table"]).is_file() else {}
    if not table.get("lengths"):
        return f"perplexity table in {outputs['table']}"
    longest = str(max(table["lengths"]))
    scores = ", ".join(f"{name} {format_ppl(row[longest])}" for name, row in table["ppl"].items()
                       if row.get(longest) is not None)
    return f"perplexity at {longest} tokens: {scores} (table in {outputs['table']})"


def _evaluated_again(p, outputs: dict) -> None:
    """A skipped evaluation stage shows its table again."""
    from ropesearch.evaluate.baselines import format_table

    if Path(outputs.get("table", "")).is_file():
        p.log(format_table(read_json(outputs["table"], "the evaluation table",
                                     "remove the stage's done.json to run it again")))


@dataclass(frozen=True)
class StageKind:
    settings: type  # a frozen dataclass; a plan's mapping for the stage fills it (unknown keys fail)
    run: Callable[[Any, Any, Path], dict]  # (pipeline, stage, folder) -> outputs
    checks: Callable[[Any], list[tuple[bool, str]]] = lambda settings: []
    needs_factors: Callable[[Any], bool] = lambda settings: True  # from an earlier search stage
    gives_factors: bool = False  # later stages may need its factors
    produced: Callable[[dict], str] | None = None  # one line for run's summary (None: the outputs listed)
    restore: Callable | None = None  # (pipeline, folder, record, check) -> record, on resume of a finished stage
    skipped: Callable[[Any, dict], None] | None = None  # (pipeline, outputs): what a resume shows of it
    placement: tuple[str, ...] = ()  # settings that say where it runs, not what: plan.json leaves them out


STAGES: dict[str, StageKind] = {
    "search": StageKind(SearchStage, run_search_stage, _search_checks, lambda s: s.relative, gives_factors=True,
                        produced=_searched, placement=("workers", "ray_address", "gpus_per_worker")),
    "finetune": StageKind(FinetuneConfig, run_finetune_stage, produced=_finetuned, restore=restore_finetune_stage),
    "recover-short": StageKind(RecoverShortStage, run_recover_short_stage, _recover_short_checks, produced=_searched),
    "export": StageKind(ExportStage, run_export_stage, _export_checks, produced=_exported),
    "evaluate": StageKind(EvaluateStage, run_evaluate_stage, _evaluate_checks, produced=_evaluated,
                          skipped=_evaluated_again),
    "passkey": StageKind(PasskeyStage, run_passkey_stage, _passkey_checks,
                         produced=lambda outputs: f"passkey accuracy in {outputs['passkey']}"),
    "report": StageKind(ReportStage, run_report_stage, needs_factors=lambda s: False,
                        produced=lambda outputs: f"report in {outputs['report']}"),
}
