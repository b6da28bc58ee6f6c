"""RoPE settings as data (factors, methods) and their application to loaded models (patching)."""

from ropesearch.rope.factors import RopeBase, RopeFactors
from ropesearch.rope.methods import METHODS, critical_dimension, longrope, make_factors
from ropesearch.rope.patching import RopePatch, patch_rope, rotary_modules

__all__ = [
    "METHODS",
    "RopeBase",
    "RopeFactors",
    "RopePatch",
    "critical_dimension",
    "longrope",
    "make_factors",
    "patch_rope",
    "rotary_modules",
]
