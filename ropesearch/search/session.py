"""`ropesearch search` as a function: load the model and data, build the search, run it."""

from __future__ import annotations

import contextlib
import math
from dataclasses import replace
from pathlib import Path

import torch

from ropesearch import __version__
from ropesearch.data import build_windows, load_documents, tokenize_documents
from ropesearch.errors import RopesearchError
from ropesearch.data.tokens import tokenizer_fingerprint
from ropesearch.evaluate import make_evaluator
from ropesearch.evaluate.runs import window_parts
from ropesearch.fingerprint import (config_file_fingerprint, config_fingerprint, data_fingerprint, files_fingerprint,
                                    weight_files, weights_fingerprint, windows_fingerprint)
from ropesearch.models import config_of, load_config, load_for_backend, load_tokenizer, resolve_model, rope_base
from ropesearch.rope import RopeFactors
from ropesearch.search.encoding import Encoding
from ropesearch.search.loop import Search, SearchResult
from ropesearch.search.objectives import OBJECTIVES, Objective, screening_windows
from ropesearch.search.rundir import RunDir
from ropesearch.search.short_guard import ShortGuard, guarded_space, measure_guard
from ropesearch.search.space import SearchSpace, load_space, space_to_dict
from ropesearch.validate import check_model_folder


def search_windows(tokenizer, data: str, length: int, samples: int, seed: int, needle: bool, text_field: str = "text",
                   split: str = "test", pack: bool = False, documents=None):
    """The search's windows; `documents` (loaded Document objects, e.g. a plan's non-held-out
    part) replaces reading `data`."""
    if documents is None:
        documents = load_documents(data, text_field=text_field, split=split)
    return build_windows(tokenize_documents(documents, tokenizer), tokenizer, length, samples, seed, needle=needle,
                         pack=pack)


def _check_target(target_length: int | None, base) -> None:
    if target_length is not None and target_length <= base.original_context:
        raise RopesearchError(f"--target-length {target_length} is not beyond the model's window "
                              f"({base.original_context}): nothing to extend")


def run_search(model: str, data: str, target_length: int, out: str | Path, space: str | SearchSpace = "fast",
               objective: str | None = None, samples: int | None = None, seed: int = 0, resume: bool = False,
               max_evals: int | None = None, time_minutes: float | None = None, short_length: int | None = None,
               device: str | None = None, max_batch: int | None = None, text_field: str = "text",
               split: str = "test", log=print, stop_after: int | None = None, loaded=None,
               reference: RopeFactors | None = None, short_lengths: tuple[int, ...] = (),
               backend: str = "torch", short_tolerance: float | None = 0.01, dtype=None, pack: bool = False,
               documents=None, workers=None) -> SearchResult:
    """Search factors for `target_length`; results, history and checkpoints go to `out`.

    `loaded` = (model, tokenizer) skips loading (tests, pipelines that hold the model already).
    `reference`: factors the model was fine-tuned with; the search multiplies them (progressive
    stages). With `short_lengths` too, it searches their short_factor at those lengths instead.
    `pack` joins documents into the windows; `documents` replaces reading `data` (a plan's split).
    """
    for name, value, ok in (("max_evals", max_evals, max_evals is None or max_evals >= 1),
                            ("time_minutes", time_minutes, time_minutes is None or 0 < time_minutes < math.inf),
                            ("samples", samples, samples is None or samples >= 1),
                            ("short_tolerance", short_tolerance,
                             short_tolerance is None or 0 <= short_tolerance < math.inf)):
        if not ok:
            need = {"time_minutes": "> 0", "short_tolerance": ">= 0 (or None: no guard)"}.get(name, ">= 1")
            raise RopesearchError(f"{name} must be {need}, got {value}")
    space = space if isinstance(space, SearchSpace) else load_space(space)
    regime = "short" if short_lengths else "long"
    objective = "short" if short_lengths else (objective or space.objective)
    if regime == "long" and objective not in OBJECTIVES:
        raise RopesearchError(f"unknown objective {objective!r}: choose one of {', '.join(OBJECTIVES)}")
    if objective == "ppl+short" and space.algorithm != "nsga2":
        space = replace(space, algorithm="nsga2")  # two objectives need a multi-objective survival
    samples = samples or space.samples
    ref = resolve_model(model)
    if workers is None and space.workers:
        from ropesearch.evaluate.workers import WorkerOptions

        workers = WorkerOptions(count=space.workers, dtype=dtype)
    if loaded is None:
        check_model_folder(ref.path)
        _check_target(target_length if regime == "long" else None, rope_base(load_config(ref)))  # the config only
    if documents is None:
        documents = load_documents(data, text_field=text_field, split=split)  # bad data fails before any write
    # the run directory is checked and locked before anything loads; a new run that fails before
    # it starts leaves no folder behind
    with RunDir(out).opened(resume) as run_dir, contextlib.ExitStack() as cleanup:
        if loaded is None:
            tokenizer = load_tokenizer(ref)
            # vLLM, or workers that load the model themselves: the config only
            loaded_model = (load_config(ref) if workers
                            else load_for_backend(ref, backend, device=device, dtype=dtype))
        else:
            loaded_model, tokenizer = loaded
        base = rope_base(config_of(loaded_model))
        if reference is not None:
            from ropesearch.export.factor_file import check_fits

            check_fits(reference, base, source="the reference factors")
        if regime == "short":
            target_length = reference.target_context
        _check_target(target_length, base)
        window_length = max(short_lengths) if regime == "short" else target_length
        windows = search_windows(tokenizer, data, window_length, samples, seed, objective == "needle", text_field,
                                 split, pack=pack, documents=documents)
        short = short_length or base.original_context
        fidelity = space.fidelity
        screen = (screening_windows(windows, fidelity.screen_samples, fidelity.screen_length_fraction)
                  if fidelity.screen_samples else None)
        evaluator = make_evaluator(loaded_model, backend=backend, model_spec=model, max_length=window_length,
                                   max_batch=max_batch, progress=False, workers=workers)
        if workers is not None and evaluator is not workers:  # a pool started here (not one handed in)
            cleanup.callback(evaluator.close)
        guard = None
        if short_tolerance is not None and regime == "long" and reference is None and objective != "ppl+short":
            guard = _short_guard(out, resume, evaluator, windows, base, target_length, short_tolerance, space)
            space = guarded_space(space, guard.attention_cap)
            log(guard.describe())
        scorer = Objective(objective, evaluator, windows, target_length,
                           short_length=short if objective == "ppl+short" else None, screen_windows=screen,
                           short_lengths=tuple(short_lengths))
        config = {
            "model": model, "data": data, "target_length": target_length, "objective": objective,
            "space": {k: v for k, v in space_to_dict(space).items() if k != "workers"},  # any count gives the same
            "samples": samples, "seed": seed,
            "short_length": short if objective == "ppl+short" else None,
            "regime": regime, "short_lengths": list(short_lengths),
            "short_guard": None if guard is None else guard.as_dict(),
            "reference": None if reference is None else list(reference.long_factor),
            "windows": [w.name for w in windows], "rope": {"rope_theta": base.rope_theta, "rotary_dim": base.rotary_dim,
                                                           "original_context": base.original_context},
        }
        if pack:  # (only then: configs of earlier runs have no such keys, and resume compares them)
            config |= {"pack": True, **window_parts(windows)}
        config["inputs"] = {**_model_fingerprints(ref, loaded_model), "tokenizer": tokenizer_fingerprint(tokenizer),
                            "data": windows_fingerprint(windows), "space": data_fingerprint(config["space"]),
                            "seed": seed}
        encoding = Encoding(space, base, target_length, reference=reference, regime=regime,
                            short_unscaled=guard is not None)
        search = Search(encoding, scorer, run_dir, seed=seed, max_evals=max_evals, time_minutes=time_minutes, log=log,
                        provenance={"model": model, "data": data, "windows": config["windows"],
                                    "ropesearch_version": __version__}
                        | ({"short_guard": guard.as_dict()} if guard else {}),
                        status=evaluator.status if workers else None)
        return search.run(resume=resume, config=config, stop_after=stop_after)


def _model_fingerprints(ref, loaded_model) -> dict[str, str]:
    """{"weights", "model_config"}: the weight files where the model is a local folder or file,
    whether this process loaded the weights or only the config (Ray workers, vLLM): a run may resume
    with or without workers. Weights in memory only (no local files) are hashed tensor by tensor."""
    local = Path(ref.path) if Path(ref.path).is_dir() else _hub_snapshot(ref)
    if ref.gguf_file:  # its metadata (the config) is inside the file
        weights = files_fingerprint([local / ref.gguf_file])
        return {"weights": weights, "model_config": weights}
    files = weight_files(local) if local is not None else []
    if files:
        weights = files_fingerprint(files)
    elif isinstance(loaded_model, torch.nn.Module):
        weights = weights_fingerprint(loaded_model)
    else:  # a hub id whose files are not in the local cache (vLLM fetches them itself): its name
        weights = data_fingerprint({"hub": ref.spec})
    local = local or Path(ref.path)
    config_file = local / "config.json"
    model_config = (config_file_fingerprint(config_file) if config_file.is_file()
                    else config_fingerprint(config_of(loaded_model).to_dict()))
    return {"weights": weights, "model_config": model_config}


def _hub_snapshot(ref) -> Path | None:
    """The local copy of a hub model's files, where the hub cache holds one."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(ref.spec, local_files_only=True))
    except Exception:  # not a hub id, or not cached: nothing local to read
        return None


def _saved_guard(earlier: dict, saved: Path) -> ShortGuard:
    """The guard a run measured, each field of the right type (a hand-edited config is one line)."""
    from dataclasses import fields as dataclass_fields

    from ropesearch.validate import require

    fix = "start a new run with another --out"
    unknown = set(earlier) - {f.name for f in dataclass_fields(ShortGuard)}
    if unknown:
        raise RopesearchError(f"search config {saved} is damaged: field short_guard.{sorted(unknown)[0]} is unknown; "
                              f"{fix}")
    kinds = {"tolerance": float, "length": int, "unscaled_ppl": float, "attention_cap": float, "capped_ppl": float,
             "margin": (float, type(None)), "windows": (int, type(None))}
    values = {key: require(earlier, key, kind, f"search config {saved}", fix, finite=True, prefix="short_guard.",
                           **({"default": None} if key in ("margin", "windows") else {}))
              for key, kind in kinds.items()}
    return ShortGuard(**values)


def _short_guard(out, resume: bool, evaluator, windows, base, target: int, tolerance: float,
                 space: SearchSpace) -> ShortGuard:
    """Measure the guard, or on resume take the one the run measured (so its config stays the same)."""
    from ropesearch.validate import read_json

    saved = Path(out) / "config.json"
    if resume and saved.is_file():
        earlier = read_json(saved, "search config", "start a new run with another --out").get("short_guard")
        if isinstance(earlier, dict) and earlier.get("tolerance") == tolerance:
            return _saved_guard(earlier, saved)
    from ropesearch.rope.methods import longrope_mscale

    highest = space.attention_factor[1] if space.attention_factor else longrope_mscale(
        target / base.original_context, base.original_context)
    return measure_guard(evaluator, windows, base, target, tolerance, highest)
