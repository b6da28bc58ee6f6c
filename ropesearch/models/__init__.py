"""Model resolution, loading and the demo-model cache."""

from ropesearch.models.loading import ModelRef, load_config, load_model, load_tokenizer, resolve_model, rope_base
from ropesearch.models.registry import DEMO_MODELS, cache_dir, fetch_model

__all__ = [
    "DEMO_MODELS",
    "ModelRef",
    "cache_dir",
    "fetch_model",
    "load_config",
    "load_model",
    "load_tokenizer",
    "resolve_model",
    "rope_base",
]
