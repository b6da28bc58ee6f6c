"""Evolutionary search for LongRoPE factors: spaces, operators, objectives, the resumable loop.

The package exports the light parts (spaces, objectives: no torch); the loop, the encoding and
the run directory are imported from their modules (`ropesearch.search.loop`, ...)."""

from ropesearch.search.objectives import OBJECTIVES, Objective
from ropesearch.search.space import SearchSpace, load_space, space_from_dict

__all__ = [
    "OBJECTIVES",
    "Objective",
    "SearchSpace",
    "load_space",
    "space_from_dict",
]
