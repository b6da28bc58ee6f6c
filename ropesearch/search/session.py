"""`ropesearch search` as a function: load the model and data, build the search, run it."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ropesearch import __version__
from ropesearch.data import build_windows, load_documents, plant_needle, tokenize_documents
from ropesearch.errors import RopesearchError
from ropesearch.data.tokens import tokenizer_fingerprint
from ropesearch.evaluate import make_evaluator
from ropesearch.evaluate.runs import window_parts
from ropesearch.evaluate.workers import WorkerOptions
from ropesearch.export.factor_file import check_fits
from ropesearch.fingerprint import (config_file_fingerprint, config_fingerprint, data_fingerprint, files_fingerprint,
                                    weight_files, weights_fingerprint, windows_fingerprint)
from ropesearch.models import config_of, load_config, load_for_backend, load_tokenizer, resolve_model, rope_base
from ropesearch.rope import RopeFactors
from ropesearch.search.encoding import Encoding
from ropesearch.search.loop import Search, SearchResult
from ropesearch.search.objectives import OBJECTIVES, ShortObjective, screening_windows
from ropesearch.search.rundir import RunDir
from ropesearch.search.short_guard import ShortGuard, guarded_space, measure_guard
from ropesearch.search.space import SearchSpace, load_space, space_to_dict
from ropesearch.validate import check_model_folder, read_json, require
from ropesearch.rope.methods import longrope_mscale


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


@dataclass(frozen=True)
class SearchConfig:
    """Everything one search is asked for: what `ropesearch search`'s options and a plan's search
    (or recover-short) stage both say. `run_search(config, out)` runs it.

    `reference`: factors the model was fine-tuned with; the search multiplies them (progressive
    stages). With `short_lengths` too, it searches their short_factor at those lengths instead.
    `pack` joins documents into the windows; `documents` (loaded Documents, e.g. a plan's split)
    replaces reading `data`. `workers`: WorkerOptions (or a started WorkerPool) to score on Ray
    workers; None takes the space's `workers`. `short_tolerance` None: no short guard.
    """

    model: str
    data: str = "builtin"
    target_length: int | None = None
    space: str | SearchSpace = "fast"
    objective: str | None = None
    samples: int | None = None
    seed: int = 0
    max_evals: int | None = None
    time_minutes: float | None = None
    short_tolerance: float | None = 0.01
    short_length: int | None = None
    short_lengths: tuple[int, ...] = ()
    reference: RopeFactors | None = None
    device: str | None = None
    dtype: object = None
    max_batch: int | None = None
    backend: str = "torch"
    text_field: str = "text"
    split: str = "test"
    pack: bool = False
    documents: object = None
    workers: object = None

    @property
    def regime(self) -> str:
        return "short" if self.short_lengths else "long"

    def checked(self) -> SearchConfig:
        """The config with its space loaded, its objective and samples settled and its workers taken
        from the space where none were given; a number out of range is a clear error."""
        for name, ok in (("max_evals", self.max_evals is None or self.max_evals >= 1),
                         ("time_minutes", self.time_minutes is None or 0 < self.time_minutes < math.inf),
                         ("samples", self.samples is None or self.samples >= 1),
                         ("short_tolerance", self.short_tolerance is None or 0 <= self.short_tolerance < math.inf)):
            if not ok:
                need = {"time_minutes": "> 0", "short_tolerance": ">= 0 (or None: no guard)"}.get(name, ">= 1")
                raise RopesearchError(f"{name} must be {need}, got {getattr(self, name)}")
        if self.regime == "long" and self.target_length is None:
            raise RopesearchError("a search needs a target length (--target-length), or short_lengths to recover")
        space = self.space if isinstance(self.space, SearchSpace) else load_space(self.space)
        objective = "short" if self.short_lengths else (self.objective or space.objective)
        if self.regime == "long" and objective not in OBJECTIVES:
            raise RopesearchError(f"unknown objective {objective!r}: choose one of {', '.join(OBJECTIVES)}")
        workers = self.workers
        if workers is None and space.workers:
            workers = WorkerOptions(count=space.workers, dtype=self.dtype)
        return replace(self, space=space, objective=objective, samples=self.samples or space.samples,
                       short_lengths=tuple(self.short_lengths), workers=workers)


def run_search(config: SearchConfig, out: str | Path, resume: bool = False, log=print,
               stop_after: int | None = None, loaded=None) -> SearchResult:
    """Search factors for `config.target_length`; results, history and checkpoints go to `out`.

    `resume` continues the run in `out`; `stop_after` ends this session after that many
    generations; `loaded` = (model, tokenizer) skips loading (tests, pipelines that hold the model).
    """
    c = config.checked()
    ref = resolve_model(c.model)
    if loaded is None:
        check_model_folder(ref.path)
        _check_target(c.target_length if c.regime == "long" else None, rope_base(load_config(ref)))  # the config only
    documents = c.documents
    if documents is None:
        documents = load_documents(c.data, text_field=c.text_field, split=c.split)  # bad data fails before any write
    # the run directory is checked and locked before anything loads; a new run that fails before
    # it starts leaves no folder behind
    with RunDir(out).opened(resume) as run_dir, contextlib.ExitStack() as cleanup:
        if loaded is None:
            # vLLM, or workers that load the model themselves: the config only
            tokenizer = load_tokenizer(ref)  # a bad tokenizer fails before a long model load
            loaded = (load_config(ref) if c.workers else load_for_backend(ref, c.backend, device=c.device,
                                                                             dtype=c.dtype), tokenizer)
        model, tokenizer = loaded
        base = rope_base(config_of(model))
        if c.reference is not None:
            check_fits(c.reference, base, source="the reference factors")
        target = c.reference.target_context if c.regime == "short" else c.target_length
        _check_target(target, base)
        kind = ShortObjective if c.regime == "short" else OBJECTIVES[c.objective]
        length = max(c.short_lengths) if c.regime == "short" else target
        windows = search_windows(tokenizer, c.data, length, c.samples, c.seed, kind.needle, c.text_field, c.split,
                                 pack=c.pack, documents=documents)
        evaluator = make_evaluator(model, backend=c.backend, model_spec=c.model, max_length=windows[0].length,
                                   max_batch=c.max_batch, progress=False, workers=c.workers)
        if c.workers is not None and evaluator is not c.workers:  # a pool started here (not one handed in)
            cleanup.callback(evaluator.close)
        space, guard = c.space, None
        if c.short_tolerance is not None and c.regime == "long" and c.reference is None and kind.guarded:
            guard = _short_guard(out, resume, evaluator, windows, base, target, c.short_tolerance, space)
            space = guarded_space(space, guard.attention_cap)
            log(guard.describe())
        fidelity = space.fidelity
        screen = (screening_windows(windows, fidelity.screen_samples, fidelity.screen_length_fraction)
                  if fidelity.screen_samples else None)
        planted = planted_screen = None
        if kind.plants_needles:  # the same windows, each with a needle (numbers and depths from the seed)
            rng = np.random.default_rng(c.seed)
            planted = [plant_needle(window, tokenizer, rng) for window in windows]
            planted_screen = [plant_needle(window, tokenizer, rng) for window in screen] if screen else None
        scorer = kind(evaluator, windows, target, short_length=c.short_length or base.original_context,
                      screen_windows=screen, short_lengths=c.short_lengths, needle_windows=planted,
                      needle_screen_windows=planted_screen)
        if scorer.algorithm and space.algorithm != scorer.algorithm:
            space = replace(space, algorithm=scorer.algorithm)  # two objectives need a multi-objective survival
        record = _run_config(c, space, scorer, guard, base, windows, _model_fingerprints(ref, model), tokenizer)
        encoding = Encoding(space, base, target, reference=c.reference, regime=c.regime,
                            short_unscaled=guard is not None)
        search = Search(encoding, scorer, run_dir, seed=c.seed, max_evals=c.max_evals, time_minutes=c.time_minutes,
                        log=log, provenance={"model": c.model, "data": c.data, "windows": record["windows"],
                                             "ropesearch_version": __version__}
                        | ({"short_guard": guard.as_dict()} if guard else {}),
                        status=evaluator.status if c.workers else None)
        return search.run(resume=resume, config=record, stop_after=stop_after)


def _run_config(c: SearchConfig, space: SearchSpace, scorer, guard, base, windows, model_fingerprints: dict,
                tokenizer) -> dict:
    """The run directory's config.json: what the search was asked, and fingerprints of its inputs
    (a resume compares them)."""
    record = {
        "model": c.model, "data": c.data, "target_length": scorer.target, "objective": c.objective,
        "space": {k: v for k, v in space_to_dict(space).items() if k != "workers"},  # any count gives the same
        "samples": c.samples, "seed": c.seed,
        "short_length": scorer.short_length if scorer.n_obj > 1 else None,
        "regime": c.regime, "short_lengths": list(c.short_lengths),
        "short_guard": None if guard is None else guard.as_dict(),
        "reference": None if c.reference is None else list(c.reference.long_factor),
        "windows": [w.name for w in windows], "rope": {"rope_theta": base.rope_theta, "rotary_dim": base.rotary_dim,
                                                       "original_context": base.original_context},
    }
    if c.pack:  # (only then: configs of earlier runs have no such keys, and resume compares them)
        record |= {"pack": True, **window_parts(windows)}
    record["inputs"] = {**model_fingerprints, "tokenizer": tokenizer_fingerprint(tokenizer),
                        "data": windows_fingerprint(windows), "space": data_fingerprint(record["space"]),
                        "seed": c.seed}
    return record


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
    saved = Path(out) / "config.json"
    if resume and saved.is_file():
        earlier = read_json(saved, "search config", "start a new run with another --out").get("short_guard")
        if isinstance(earlier, dict) and earlier.get("tolerance") == tolerance:
            return _saved_guard(earlier, saved)

    highest = space.attention_factor[1] if space.attention_factor else longrope_mscale(
        target / base.original_context, base.original_context)
    return measure_guard(evaluator, windows, base, target, tolerance, highest)
