"""RoPE settings as data (factors, methods); their application to loaded models is
`ropesearch.rope.patching` (the one module here that needs torch)."""

from ropesearch.rope.factors import RopeBase, RopeFactors
from ropesearch.rope.methods import METHODS, critical_dimension, in_range_length, longrope, make_factors, unturned

__all__ = [
    "METHODS",
    "RopeBase",
    "RopeFactors",
    "critical_dimension",
    "in_range_length",
    "longrope",
    "make_factors",
    "unturned",
]
