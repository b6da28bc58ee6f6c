"""ropesearch: evolutionary search for LongRoPE rescale factors."""

__version__ = "0.1.0"
