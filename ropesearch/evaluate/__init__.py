"""Candidates in, metrics out: perplexity of factor sets on evaluation windows."""

from ropesearch.errors import RopesearchError
from ropesearch.evaluate.backends import BACKENDS, local_evaluator
from ropesearch.evaluate.results import Evaluator, Score
from ropesearch.evaluate.torch_backend import TorchEvaluator, plan_jobs
from ropesearch.evaluate.workers import WorkerPool


def make_evaluator(model, backend: str = "torch", model_spec: str | None = None, max_length: int | None = None,
                   workers=None, **options):
    """The evaluator for a loaded model: torch (default), or vllm (an engine over the model's folder,
    `model_spec`, for windows up to `max_length`; `model` may then be just its config, see
    `load_for_backend`; torch-only options are ignored).

    `workers` (WorkerOptions): a pool of Ray actors, each loading `model_spec` itself and scoring
    with that backend; `model` may then be just its config. Close the pool when done (`close()`).
    A started WorkerPool of the same model is used as it is (and stays open)."""
    if workers is None:
        return local_evaluator(model, backend, model_spec, max_length, **options)
    if isinstance(workers, WorkerPool):
        if workers.model_spec != model_spec:
            raise RopesearchError(f"the worker pool holds {workers.model_spec!r}, not {model_spec!r}")
        return workers
    options.pop("progress", None)  # the pool shows its own line: candidates done, workers alive
    return WorkerPool(model_spec, workers, backend=backend, max_length=max_length, evaluator_options=options)


__all__ = ["BACKENDS", "Evaluator", "Score", "TorchEvaluator", "make_evaluator", "plan_jobs"]
