"""Evolutionary search for LongRoPE factors: spaces, operators, objectives, the resumable loop."""

from ropesearch.search.encoding import Encoding
from ropesearch.search.loop import Search, SearchResult, SearchState
from ropesearch.search.objectives import OBJECTIVES, Objective
from ropesearch.search.rundir import RunDir
from ropesearch.search.space import SearchSpace, load_space, space_from_dict

__all__ = [
    "OBJECTIVES",
    "Encoding",
    "Objective",
    "RunDir",
    "Search",
    "SearchResult",
    "SearchSpace",
    "SearchState",
    "load_space",
    "space_from_dict",
]
