"""The pymoo algorithm's state as plain data, and back.

A checkpoint must never be code (a pickle runs whatever its author put in it), so instead of
saving the algorithm object we save what the ask/tell loop depends on between generations:
the surviving population (genomes, objective values, and the rank/crowding NSGA-II's survival
attaches), the iteration counter, the random generator's state and where the last offspring
came from (`origins`, named in history rows). Restoring sets exactly
these on a freshly built algorithm, which then asks for the same offspring the saved one would.
"""

from __future__ import annotations

import numpy as np
from pymoo.core.population import Population

from ropesearch.errors import RopesearchError
from ropesearch.validate import damaged, kind_of, require

ARRAY_KEYS = ("X", "F")
OPTIONAL_KEYS = ("rank", "crowding")  # set by rank-and-crowding survival (NSGA-II)

# the checkpoint's fields (SearchState's, and the run directory's own) with their JSON types; the
# required ones are there in every checkpoint ever written, the others have SearchState's defaults
_NUMBER, _TEXT_OR_NULL, _NUMBER_OR_NULL = float, (str, type(None)), (float, type(None))
REQUIRED_FIELDS = {"generation": int, "history_lines": int, "history_sha256": str, "algorithm": dict}
OPTIONAL_FIELDS = {"full_evals": int, "screen_evals": int, "elapsed": _NUMBER, "evaluator_seconds": _NUMBER,
                   "gpu_seconds": _NUMBER, "cache": dict, "screen_cache": dict, "progress": list, "best": _NUMBER,
                   "stale": int, "short_reference": _NUMBER_OR_NULL, "stop_reason": _TEXT_OR_NULL, "baselines": dict}
META_FIELDS = {"initialized": bool, "n_iter": (int, type(None)), "rng": dict, "origins": dict, "arrays": str}


def check_state(state: dict, source: str, fix: str) -> None:
    """A checkpoint's fields have the types and ranges a resume relies on: one line naming the first
    that does not (hand edits, another tool's file), never a traceback later in the search."""
    for key, kind in {**REQUIRED_FIELDS, **OPTIONAL_FIELDS}.items():
        value = require(state, key, kind, source, fix, **({} if key in REQUIRED_FIELDS else {"default": None}))
        if kind is int and value is not None and value < 0:
            raise damaged(source, f"field {key} must be >= 0, got {value}", fix)
    for key in ("cache", "screen_cache", "baselines"):
        for name, value in (state.get(key) or {}).items():
            scores = value if key == "cache" else [value]
            if not isinstance(scores, list) or not scores or not all(_is_number(v) for v in scores):
                raise damaged(source, f"field {key}[{name!r}] must be {'a list of numbers' if key == 'cache' else 'a number'}"
                              f", got {kind_of(value)}", fix)
    for i, entry in enumerate(state.get("progress") or []):
        if not isinstance(entry, dict):
            raise damaged(source, f"field progress[{i}] must be a JSON object, got {kind_of(entry)}", fix)
    meta = state["algorithm"]
    for key, kind in META_FIELDS.items():
        require(meta, key, kind, source, fix, prefix="algorithm.", **({"default": {}} if key == "origins" else {}))
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.get("origins", {}).items()):
        raise damaged(source, "field algorithm.origins must map genome keys to strings", fix)
    try:  # what restore sets on the algorithm's generator, tried on a throwaway one of the same kind
        np.random.PCG64().state = meta["rng"]
    except (TypeError, ValueError, KeyError, OverflowError) as exc:
        raise damaged(source, f"field algorithm.rng is not a PCG64 random state: {exc}", fix) from None


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_arrays(arrays: dict[str, np.ndarray], initialized: bool, source: str, fix: str) -> None:
    """The population's arrays: only the known ones, numbers, X and F 2-D with one row per member,
    rank and crowding 1-D of the same length; genomes finite, objective values not NaN."""
    unknown = sorted(set(arrays) - set(ARRAY_KEYS) - set(OPTIONAL_KEYS))
    if unknown:
        raise damaged(source, f"unknown array {unknown[0]!r} (known: {', '.join(ARRAY_KEYS + OPTIONAL_KEYS)})", fix)
    if not initialized:
        return
    missing = [key for key in ARRAY_KEYS if key not in arrays]
    if missing:
        raise damaged(source, f"array {missing[0]} is missing", fix)
    for key, values in arrays.items():
        if not (np.issubdtype(values.dtype, np.floating) or np.issubdtype(values.dtype, np.integer)):
            raise damaged(source, f"array {key} holds {values.dtype}, not numbers", fix)
    rows = arrays["X"].shape[0] if arrays["X"].ndim == 2 else -1
    for key, values in arrays.items():
        wanted = 2 if key in ARRAY_KEYS else 1
        if values.ndim != wanted or values.shape[0] != rows or rows < 1 or 0 in values.shape:
            raise damaged(source, f"array {key} has shape {values.shape}; expected {wanted}-D with one row per member "
                          f"of the population ({max(rows, 0)} rows in X)", fix)
    if not np.all(np.isfinite(arrays["X"])):
        raise damaged(source, "array X holds non-finite genomes", fix)
    if np.any(np.isnan(arrays["F"])):
        raise damaged(source, "array F holds NaN scores", fix)


def algorithm_state(algorithm) -> tuple[dict, dict[str, np.ndarray]]:
    """(JSON-able fields, arrays) of an algorithm between generations."""
    meta = {"initialized": bool(algorithm.is_initialized), "n_iter": algorithm.n_iter,
            "rng": algorithm.random_state.bit_generator.state,
            "origins": dict(getattr(algorithm, "origins", {}))}
    arrays: dict[str, np.ndarray] = {}
    pop = algorithm.pop
    if algorithm.is_initialized and pop is not None:
        arrays = {key: np.asarray(pop.get(key), dtype=np.float64) for key in ARRAY_KEYS}
        for key in OPTIONAL_KEYS:
            values = pop.get(key)
            if all(v is not None for v in values):
                arrays[key] = np.asarray(values, dtype=np.float64)
    return meta, arrays


def restore_algorithm(algorithm, meta: dict, arrays: dict[str, np.ndarray], source: str = "the checkpoint") -> None:
    """Put a saved state (checked by check_state and check_arrays) into a freshly built (set up, not yet
    asked) algorithm; arrays that do not fit its problem (genome length, objectives) are one line."""
    problem = algorithm.problem
    if meta["initialized"] and (arrays["X"].shape[1] != problem.n_var or arrays["F"].shape[1] != problem.n_obj):
        raise RopesearchError(f"{source} does not fit this search: its population has genomes of "
                              f"{arrays['X'].shape[1]} genes and {arrays['F'].shape[1]} objective(s), this search "
                              f"{problem.n_var} and {problem.n_obj}; start a new run with another --out")
    algorithm.random_state.bit_generator.state = meta["rng"]
    if hasattr(algorithm, "origins"):  # the dict its sampling and mating share: filled in place
        algorithm.origins.clear()
        algorithm.origins.update(meta.get("origins") or {})
    if not meta["initialized"]:
        return
    pop = Population.new("X", np.asarray(arrays["X"], dtype=np.float64))
    pop.set("F", np.asarray(arrays["F"], dtype=np.float64))
    for key in OPTIONAL_KEYS:
        if key in arrays:
            values = arrays[key]
            pop.set(key, values.astype(int) if key == "rank" else values)
    algorithm.pop = pop
    algorithm.n_iter = meta["n_iter"]
    algorithm.is_initialized = True
    algorithm._set_optimum()
