"""Decoder layers over chunks of the sequence (attention whole): same losses, less memory, model restored."""

import numpy as np
import pytest
import torch
import transformers
from conftest import ARCHITECTURES, tiny_config, tiny_model

from ropesearch.data import Window
from ropesearch.errors import RopesearchError
from ropesearch.evaluate import TorchEvaluator
from ropesearch.evaluate.chunking import SequenceChunking
from ropesearch.evaluate.memory import PeakMemory
from ropesearch.models import rope_base
from ropesearch.rope import methods


def windows(count: int, length: int, vocab: int = 128, seed: int = 0) -> list[Window]:
    rng = np.random.default_rng(seed)
    return [Window(f"w{i}", rng.integers(0, vocab, length)) for i in range(count)]


def wide_mlp_llama():
    """MLP 16x the hidden size, as in real models (3.5x) but more so: the MLP dominates activations."""
    config = tiny_config("llama", head_dim=16)
    config.intermediate_size = 1024
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval()


def patched_forwards(model) -> list[str]:
    return [name for name, module in model.named_modules() if "forward" in vars(module)]


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_chunked_scores_equal_whole_ones(arch):
    model = tiny_model(arch)
    base = rope_base(model.config)
    candidates = [methods.none(base), methods.yarn(base, 4), methods.ntk(base, 4)]  # one row each, batched
    data = windows(2, 256)
    whole = TorchEvaluator(model, progress=False, sequence_chunk=0).score(candidates, data, [64, 256])
    chunked = TorchEvaluator(model, progress=False, sequence_chunk=100).score(candidates, data, [64, 256])
    for a, b in zip(whole, chunked):
        for length in (64, 256):
            assert b.nll[length] == pytest.approx(a.nll[length], rel=1e-6, abs=1e-6)
    assert patched_forwards(model) == []


def test_everything_but_attention_runs_chunked(monkeypatch):
    model = tiny_model("llama")
    mlp_calls, norm_calls, projection_calls = [], [], []
    for layer in model.model.layers:
        layer.mlp.register_forward_hook(lambda module, args, out: mlp_calls.append(args[0].shape[1]))
        for projection in (layer.self_attn.q_proj, layer.self_attn.o_proj):
            projection.register_forward_hook(lambda module, args, out: projection_calls.append(args[0].shape[1]))
    norm_forward = type(model.model.norm).forward

    def counted_norm(norm, x):
        norm_calls.append(x.shape[1])
        return norm_forward(norm, x)

    monkeypatch.setattr(type(model.model.norm), "forward", counted_norm)
    with torch.no_grad(), SequenceChunking(model, 100) as chunking:
        model.model(input_ids=torch.zeros(2, 130, dtype=torch.long), use_cache=False)
        assert chunking.layers == 2
    # 100 tokens across 2 rows: 50 positions a chunk; 2 layers x 2 norms + the final norm
    assert mlp_calls == [50, 50, 30] * 2
    assert projection_calls == [50, 50, 30] * 4  # q_proj then o_proj, each layer
    assert norm_calls == [50, 50, 30] * 5
    assert patched_forwards(model) == []


def test_chunking_lowers_peak_memory_of_a_long_window():
    model = wide_mlp_llama()
    base = rope_base(model.config)
    data = windows(1, 4096)
    peaks = {}
    for chunk in (0, 512):
        evaluator = TorchEvaluator(model, progress=False, sequence_chunk=chunk)
        with PeakMemory() as peak:
            evaluator.score([methods.none(base)], data)
        peaks[chunk] = peak.bytes
    # unchunked: gate, up and their product, 3 x 4096 tokens x 1024 x 4 bytes = 48 MiB alive at once
    assert peaks[0] > 3 * 4096 * 1024 * 4
    assert peaks[512] < peaks[0] / 4


def test_peak_memory_counts_live_tensors():
    with PeakMemory() as peak:
        a = torch.ones(1000)  # 4000 bytes
        b = a[10:]  # a view: nothing more
        c = torch.ones(500)  # 2000
        del a, b, c
        d = torch.ones(250)  # 1000, after the others were freed
        del d
    assert peak.bytes == 6000


def test_training_and_autograd_run_the_layers_own_forward():
    model = tiny_model("llama")
    ids = torch.randint(0, 128, (1, 96))
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    embeddings = model.model.embed_tokens(ids).detach()
    with SequenceChunking(model, 32):
        logits = model(input_ids=ids).logits  # autograd on: nothing chunked, nothing done in place
        assert logits.requires_grad
        layer_input = embeddings.clone()
        model.model.layers[0](layer_input, position_embeddings=model.model.rotary_emb(layer_input, torch.arange(96)[None]))
        assert torch.equal(layer_input, embeddings)
    torch.testing.assert_close(logits.detach(), expected, rtol=1e-6, atol=1e-6)


def test_restored_after_an_error_and_refuses_to_stack():
    model = tiny_model("llama")
    def fail(module, args, out):
        raise ValueError("inside a layer")

    model.model.layers[1].mlp.register_forward_hook(fail)
    with pytest.raises(ValueError), torch.no_grad(), SequenceChunking(model, 16):
        model.model(input_ids=torch.zeros(1, 40, dtype=torch.long), use_cache=False)
    assert patched_forwards(model) == []
    with SequenceChunking(model, 16), pytest.raises(RopesearchError, match="already chunked"):
        SequenceChunking(model, 16)
    with pytest.raises(RopesearchError, match="positive"):
        SequenceChunking(model, 0)
    with pytest.raises(RopesearchError, match="sequence_chunk"):
        TorchEvaluator(model, sequence_chunk=-1)


def test_default_chunks_hold_about_a_gib_of_mlp_intermediates():
    from ropesearch.evaluate.chunking import auto_chunk_tokens

    config = transformers.LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=1,
                                      num_attention_heads=32, num_key_value_heads=8, vocab_size=1024)
    with torch.device("meta"):
        llama8b_layer = transformers.LlamaForCausalLM(config).to(torch.bfloat16)
    assert auto_chunk_tokens(llama8b_layer) == 12288  # 2^30 / (3 x 14336 x 2 bytes) = 12483, in 1024s
    tiny = tiny_model("llama")
    assert TorchEvaluator(tiny).sequence_chunk == 2**30 // (3 * 256 * 4) // 1024 * 1024  # float32: not for tests' windows
