"""Candidates in, metrics out: perplexity of factor sets on evaluation windows."""

from ropesearch.evaluate.results import Score
from ropesearch.evaluate.torch_backend import TorchEvaluator, plan_jobs

BACKENDS = ("torch", "vllm")


def make_evaluator(model, backend: str = "torch", model_spec: str | None = None, max_length: int | None = None,
                   workers=None, **options):
    """The evaluator for a loaded model: torch (default), or vllm (an engine over the model's folder,
    `model_spec`, for windows up to `max_length`; `model` may then be just its config, see
    `load_for_backend`; torch-only options are ignored).

    `workers` (WorkerOptions): a pool of Ray actors, each loading `model_spec` itself and scoring
    with that backend; `model` may then be just its config. Close the pool when done (`close()`).
    A started WorkerPool of the same model is used as it is (and stays open)."""
    from ropesearch.errors import RopesearchError

    if workers is not None:
        from ropesearch.evaluate.workers import WorkerPool

        if isinstance(workers, WorkerPool):
            if workers.model_spec != model_spec:
                raise RopesearchError(f"the worker pool holds {workers.model_spec!r}, not {model_spec!r}")
            return workers
        options.pop("progress", None)  # the pool shows its own line: candidates done, workers alive
        return WorkerPool(model_spec, workers, backend=backend, max_length=max_length, evaluator_options=options)

    if backend == "torch":
        return TorchEvaluator(model, **options)
    if backend == "vllm":
        from ropesearch.evaluate.vllm_backend import VllmEvaluator
        from ropesearch.export.transformers_config import partial_rotary_factor
        from ropesearch.models import config_of, dtype_of, resolve_model, rope_base

        ref = resolve_model(model_spec) if model_spec else None
        if ref is None or ref.gguf_file:
            raise RopesearchError(f"the vLLM backend needs a transformers model folder, not {model_spec!r}: "
                                  "export one with `ropesearch export FACTORS --model M --out DIR` and use --model DIR")
        config = config_of(model)
        return VllmEvaluator(ref.path, rope_base(config), max_length or config.max_position_embeddings,
                             dtype=str(dtype_of(model)).removeprefix("torch."),
                             partial_rotary_factor=partial_rotary_factor(config))
    raise RopesearchError(f"unknown evaluator backend {backend!r}: choose one of {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "Score", "TorchEvaluator", "make_evaluator", "plan_jobs"]
