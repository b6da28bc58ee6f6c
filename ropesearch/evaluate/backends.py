"""One evaluator in this process for a loaded model: torch (default) or vLLM."""

from __future__ import annotations

from ropesearch.errors import RopesearchError
from ropesearch.evaluate.torch_backend import TorchEvaluator
from ropesearch.export.transformers_config import partial_rotary_factor
from ropesearch.models import config_of, dtype_of, resolve_model, rope_base

BACKENDS = ("torch", "vllm")


def local_evaluator(model, backend: str = "torch", model_spec: str | None = None, max_length: int | None = None,
                    **options):
    """torch: a TorchEvaluator of `model`; vllm: an engine over the model's folder (`model_spec`) for
    windows up to `max_length`, where `model` may be just its config (torch-only options are ignored)."""
    if backend == "torch":
        return TorchEvaluator(model, **options)
    if backend == "vllm":
        from ropesearch.evaluate.vllm_backend import VllmEvaluator  # vLLM: an optional dependency

        ref = resolve_model(model_spec) if model_spec else None
        if ref is None or ref.gguf_file:
            raise RopesearchError(f"the vLLM backend needs a transformers model folder, not {model_spec!r}: "
                                  "export one with `ropesearch export FACTORS --model M --out DIR` and use --model DIR")
        config = config_of(model)
        return VllmEvaluator(ref.path, rope_base(config), max_length or config.max_position_embeddings,
                             dtype=str(dtype_of(model)).removeprefix("torch."),
                             partial_rotary_factor=partial_rotary_factor(config))
    raise RopesearchError(f"unknown evaluator backend {backend!r}: choose one of {', '.join(BACKENDS)}")
