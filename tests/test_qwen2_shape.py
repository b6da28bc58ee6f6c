"""What Qwen2.5-Coder-0.5B has that SmolLM2 has not, on a tiny random Qwen2 of the same shape: 7 query heads
per KV head (14 / 2), q/k/v biases, tied embeddings, rope_theta 1e6 and a vocabulary far larger than the
hidden size. Batched candidates, sequence chunking and the chunked loss must equal transformers' own loss."""

import math

import numpy as np
import pytest
import torch
import transformers

from ropesearch.data import Window
from ropesearch.evaluate import TorchEvaluator
from ropesearch.models import rope_base
from ropesearch.rope import methods
from ropesearch.rope.patching import patch_rope

ORIGINAL = 64
VOCAB = 3000  # ~50x the hidden size, as 151,936 is ~170x Qwen2.5-0.5B's 896


@pytest.fixture(scope="module")
def qwen():
    config = transformers.Qwen2Config(
        vocab_size=VOCAB, hidden_size=56, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=14, num_key_value_heads=2, head_dim=4 * 2, max_position_embeddings=ORIGINAL,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6}, tie_word_embeddings=True,
        initializer_range=0.1, bos_token_id=1, eos_token_id=2, use_sliding_window=False,
    )
    torch.manual_seed(0)
    model = transformers.Qwen2ForCausalLM(config).eval()
    with torch.no_grad():  # random biases: a zero bias (the default init) would hide one that is dropped
        for layer in model.model.layers:
            for projection in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                projection.bias.normal_(0, 0.5)
    return model


def windows(count, length, seed=0):
    rng = np.random.default_rng(seed)
    return [Window(f"w{i}", rng.integers(3, VOCAB, length).astype(np.int32)) for i in range(count)]


def hf_ppl(model, wins, length, factors):
    ids = torch.tensor(np.stack([w.ids[:length] for w in wins])).long()
    with torch.no_grad(), patch_rope(model, factors):
        return math.exp(model(ids, labels=ids).loss.item())


def test_the_shape_is_qwen25s(qwen):
    attention = qwen.model.layers[0].self_attn
    assert attention.num_key_value_groups == 7 and attention.q_proj.bias is not None
    assert qwen.lm_head.weight.data_ptr() == qwen.model.embed_tokens.weight.data_ptr()  # tied
    base = rope_base(qwen.config)
    assert (base.rope_theta, base.rotary_dim, base.original_context) == (1e6, 8, ORIGINAL)


def test_batched_candidates_equal_transformers_loss(qwen):
    base = rope_base(qwen.config)
    candidates = [methods.none(base), methods.yarn(base, 4), methods.ntk(base, 4), methods.pi(base, 4)]
    wins = windows(2, 256)
    scores = TorchEvaluator(qwen, progress=False).score(candidates, wins, [64, 256])
    for factors, score in zip(candidates, scores):
        for length in (64, 256):
            assert score.ppl[length] == pytest.approx(hf_ppl(qwen, wins, length, factors), rel=1e-5)


def test_chunked_sequence_and_loss_equal_whole(qwen):
    """Sequence chunks through GQA with biases, and the loss over a large vocabulary a few tokens at a time."""
    base = rope_base(qwen.config)
    candidates = [methods.yarn(base, 4), methods.ntk(base, 4)]
    wins = windows(2, 256, seed=1)
    whole = TorchEvaluator(qwen, progress=False, sequence_chunk=0).score(candidates, wins, [256])
    chunked = TorchEvaluator(qwen, progress=False, sequence_chunk=96, logits_tokens=37, max_batch=1).score(
        candidates, wins, [256])
    for a, b in zip(whole, chunked):
        assert b.nll[256] == pytest.approx(a.nll[256], rel=1e-6, abs=1e-6)
