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

ARRAY_KEYS = ("X", "F")
OPTIONAL_KEYS = ("rank", "crowding")  # set by rank-and-crowding survival (NSGA-II)


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


def restore_algorithm(algorithm, meta: dict, arrays: dict[str, np.ndarray]) -> None:
    """Put a saved state into a freshly built (set up, not yet asked) algorithm."""
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
