"""Model resolution, loading and the demo-model cache."""

from ropesearch.models.loading import ModelRef, config_of, default_dtype, dtype_of, load_config, load_for_backend, load_model, load_tokenizer, resolve_model, rope_base
from ropesearch.models.registry import DEMO_MODELS, cache_dir, fetch_model

__all__ = [
    "DEMO_MODELS",
    "ModelRef",
    "cache_dir",
    "config_of",
    "default_dtype",
    "dtype_of",
    "fetch_model",
    "load_config",
    "load_for_backend",
    "load_model",
    "load_tokenizer",
    "resolve_model",
    "rope_base",
]
