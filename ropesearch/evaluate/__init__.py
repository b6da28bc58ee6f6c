"""Candidates in, metrics out: perplexity of factor sets on evaluation windows."""

from ropesearch.evaluate.results import Score
from ropesearch.evaluate.torch_backend import TorchEvaluator, plan_jobs

BACKENDS = ("torch",)


def make_evaluator(model, backend: str = "torch", **options):
    """The evaluator for a loaded model; `backend` is torch (default)."""
    from ropesearch.errors import RopesearchError

    if backend == "torch":
        return TorchEvaluator(model, **options)
    raise RopesearchError(f"unknown evaluator backend {backend!r}: choose one of {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "Score", "TorchEvaluator", "make_evaluator", "plan_jobs"]
