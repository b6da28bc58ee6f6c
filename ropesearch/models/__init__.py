"""Model resolution, loading and the demo-model cache."""

from ropesearch.models.loading import ModelRef, default_dtype, load_config, load_for_backend, load_model, load_tokenizer, resolve_model, rope_base
from ropesearch.models.registry import DEMO_MODELS, cache_dir, fetch_model

__all__ = [
    "DEMO_MODELS",
    "ModelRef",
    "cache_dir",
    "default_dtype",
    "fetch_model",
    "load_config",
    "load_for_backend",
    "load_model",
    "load_tokenizer",
    "resolve_model",
    "rope_base",
]
