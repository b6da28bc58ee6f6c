"""Patched models equal models built from the exported config; per-row patching equals separate runs."""

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from conftest import ARCHITECTURES, ORIGINAL, tiny_model
from ropesearch.errors import RopesearchError
from ropesearch.export import export_hf
from ropesearch.models import ModelRef, rope_base
from ropesearch.rope import RopeBase, longrope
from ropesearch.rope.patching import patch_rope
from ropesearch.rope import methods

TOLERANCE = 1e-4
LONG = 200  # > ORIGINAL: transformers uses the long factors
SHORT = 48  # <= ORIGINAL: the short ones
SCALE = 4


def searched_like_factors(base: RopeBase, seed: int = 0, start_tokens: int = 0):
    """Factors as a search would find them: monotone long, arbitrary short, a non-default attention factor."""
    rng = np.random.default_rng(seed)
    long_factor = np.sort(rng.uniform(1.0, 1.25 * SCALE, base.n_factors))
    short_factor = rng.uniform(1.0, 1.5, base.n_factors)
    return longrope(base, long_factor, short_factor, scale=SCALE, attention_factor=1.0 + rng.uniform(0.05, 0.3),
                    start_tokens=start_tokens)


def logits(model, ids, factors=None):
    with torch.no_grad():
        if factors is None:
            return model(ids).logits
        with patch_rope(model, factors):
            return model(ids).logits


def ids_of(length, rows=1, seed=0):
    return torch.randint(3, 128, (rows, length), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Per architecture: the tiny model, its factors, and the model loaded from the exported folder."""
    cache = {}

    def get(arch):
        if arch not in cache:
            root = tmp_path_factory.mktemp(arch)
            model = tiny_model(arch)
            model.save_pretrained(root / "src")
            factors = searched_like_factors(rope_base(model.config))
            export_hf(factors, ModelRef(arch, str(root / "src")), root / "out")
            reloaded = AutoModelForCausalLM.from_pretrained(root / "out", dtype=torch.float32).eval()
            cache[arch] = (model, factors, reloaded)
        return cache[arch]

    return get


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
@pytest.mark.parametrize("length", [LONG, SHORT])
def test_patched_equals_exported_config(exported, arch, length):
    model, factors, reloaded = exported(arch)
    assert reloaded.config.rope_parameters["rope_type"] == "longrope"
    assert reloaded.config.max_position_embeddings == ORIGINAL * SCALE
    ids = ids_of(length)
    patched = logits(model, ids, factors)
    assert (patched - logits(reloaded, ids)).abs().max().item() <= TOLERANCE
    # and RoPE matters here: the unpatched model is far away
    assert (patched - logits(model, ids)).abs().max().item() > 100 * TOLERANCE


@pytest.mark.parametrize("which", ["long_factor", "short_factor", "attention_factor"])
def test_equivalence_fails_when_any_factor_moves_one_percent(exported, which):
    model, factors, reloaded = exported("llama")
    ids = ids_of(SHORT if which == "short_factor" else LONG)
    reference = logits(reloaded, ids)
    indices = range(1) if which == "attention_factor" else range(factors.base.n_factors)
    for i in indices:
        long_factor, short_factor = list(factors.long_factor), list(factors.short_factor)
        attention = factors.attention_factor
        if which == "long_factor":
            long_factor[i] *= 1.01
        elif which == "short_factor":
            short_factor[i] *= 1.01
        else:
            attention *= 1.01
        moved = longrope(factors.base, long_factor, short_factor, scale=SCALE, attention_factor=attention)
        diff = (logits(model, ids, moved) - reference).abs().max().item()
        assert diff > TOLERANCE, f"{which}[{i}] moved by 1% but logits changed only {diff:.1e}"


@pytest.mark.parametrize("arch", ["llama", "phi3"])
def test_per_row_patching_equals_separate_runs(arch):
    model = tiny_model(arch)
    base = rope_base(model.config)
    sets = [
        searched_like_factors(base, seed=1),
        methods.yarn(base, SCALE),
        searched_like_factors(base, seed=2, start_tokens=8),
        methods.dynamic_ntk(base, SCALE),
    ]
    for ids in (ids_of(LONG, rows=len(sets)), ids_of(LONG).expand(len(sets), -1)):
        batched = logits(model, ids, sets)
        for row, factors in enumerate(sets):
            alone = logits(model, ids[row : row + 1], factors)
            assert (batched[row] - alone[0]).abs().max().item() <= 1e-5
    # one set broadcasts to every row
    ids = ids_of(LONG, rows=3)
    torch.testing.assert_close(logits(model, ids, sets[0]), logits(model, ids, [sets[0]] * 3))


def test_restore_is_exact_and_patch_changes_output(tiny_llama):
    ids = ids_of(LONG)
    before = logits(tiny_llama, ids)
    factors = searched_like_factors(rope_base(tiny_llama.config))
    patch = patch_rope(tiny_llama, factors)
    with torch.no_grad():
        during = tiny_llama(ids).logits
    patch.restore()
    assert torch.equal(before, logits(tiny_llama, ids))
    assert (during - before).abs().max() > 1e-2
    assert "forward" not in vars(tiny_llama.model.rotary_emb)


def test_start_tokens_keep_original_rope(tiny_llama):
    base = rope_base(tiny_llama.config)
    ids = ids_of(LONG)
    # n̂ covering the whole window with attention factor 1: exactly the unscaled model
    everything_original = longrope(base, [SCALE] * base.n_factors, scale=SCALE, attention_factor=1.0, start_tokens=LONG)
    torch.testing.assert_close(logits(tiny_llama, ids, everything_original), logits(tiny_llama, ids), rtol=0, atol=1e-5)
    # n̂ = 16: the first 16 positions' logits are unscaled, later ones are not
    some = longrope(base, [SCALE] * base.n_factors, scale=SCALE, attention_factor=1.0, start_tokens=16)
    patched, plain = logits(tiny_llama, ids, some), logits(tiny_llama, ids)
    torch.testing.assert_close(patched[:, :16], plain[:, :16], rtol=0, atol=1e-5)
    assert (patched[:, 16:] - plain[:, 16:]).abs().max() > 1e-2


@pytest.mark.parametrize(
    "method,native",
    [
        ("pi", {"rope_type": "linear", "factor": SCALE}),
        ("yarn", {"rope_type": "yarn", "factor": SCALE, "original_max_position_embeddings": ORIGINAL}),
        ("llama3", {"rope_type": "llama3", "factor": SCALE, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                    "original_max_position_embeddings": ORIGINAL}),
        ("dynamic-ntk", {"rope_type": "dynamic", "factor": SCALE}),
    ],
)
def test_patched_baseline_equals_transformers_native_rope(tiny_llama, method, native):
    """Our YaRN/PI/Llama-3/dynamic NTK patched in == the same weights under transformers' own rope_type."""
    base = rope_base(tiny_llama.config)
    native_model = tiny_model("llama")
    config = native_model.config
    config.rope_parameters = {**native, "rope_theta": base.rope_theta}
    if method != "dynamic-ntk":
        config.max_position_embeddings = ORIGINAL * SCALE
    native_model = type(native_model)(config).eval()
    native_model.load_state_dict(tiny_llama.state_dict())
    ids = ids_of(LONG)
    ours = logits(tiny_llama, ids, methods.make_factors(method, base, SCALE))
    assert (ours - logits(native_model, ids)).abs().max().item() <= TOLERANCE


def test_model_without_rope_is_a_clear_error():
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64, architectures=["GPT2LMHeadModel"]))
    with pytest.raises(RopesearchError, match="GPT2LMHeadModel has no rotary embedding"):
        patch_rope(gpt2, methods.pi(RopeBase(10_000.0, 16, 64), 2))
    with pytest.raises(RopesearchError, match="has no rotary position embedding"):
        rope_base(gpt2.config)


def test_wrong_factor_count_and_double_patch_are_clear_errors(tiny_llama):
    with pytest.raises(RopesearchError, match="8 values per set but .* rotates 32 dims \\(16 factors\\)"):
        patch_rope(tiny_llama, methods.pi(RopeBase(100.0, 16, ORIGINAL), 2))
    factors = methods.pi(rope_base(tiny_llama.config), 2)
    with patch_rope(tiny_llama, factors):
        with pytest.raises(RopesearchError, match="already patched"):
            patch_rope(tiny_llama, factors)
    with pytest.raises(RopesearchError, match="3 rows but 2 factor sets"):
        logits(tiny_llama, ids_of(SHORT, rows=3), [factors, factors])


def test_transformers_uses_short_factors_up_to_the_original_window_and_long_ones_above(exported):
    """The exported config switches like this: at <= 64 tokens it equals the short set alone, above the long set."""
    model, factors, reloaded = exported("llama")
    short_only = longrope(factors.base, factors.short_factor, scale=SCALE, attention_factor=factors.attention_factor)
    long_only = longrope(factors.base, factors.long_factor, scale=SCALE, attention_factor=factors.attention_factor)
    for length, matching, other in ((ORIGINAL, short_only, long_only), (ORIGINAL + 1, long_only, short_only)):
        ids = ids_of(length)
        reference = logits(reloaded, ids)
        assert (logits(model, ids, matching) - reference).abs().max().item() <= TOLERANCE
        assert (logits(model, ids, other) - reference).abs().max().item() > 100 * TOLERANCE


def test_pinned_generation_uses_one_table_for_prompt_and_new_tokens(tiny_llama):
    """A prompt at the original window that generation carries past it: pinned to the final
    length, prompt and new tokens all use the long factors, as a set without a switch does."""
    base = rope_base(tiny_llama.config)
    long_factor = np.linspace(1.0, 6.0, base.n_factors)
    switching = longrope(base, long_factor, short_factor=np.ones(base.n_factors), scale=4)
    long_only = longrope(base, long_factor, short_factor=long_factor, scale=4)
    ids = torch.randint(0, tiny_llama.config.vocab_size, (1, ORIGINAL), generator=torch.Generator().manual_seed(0))

    def generate(factors, pin):
        with patch_rope(tiny_llama, factors) as patch:
            patch.pin(pin)
            out = tiny_llama.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False,
                                      output_logits=True, return_dict_in_generate=True, pad_token_id=0)
        return torch.stack(out.logits)

    expected = generate(long_only, None)
    assert torch.allclose(generate(switching, ORIGINAL + 4), expected, atol=1e-5)
    # unpinned, the prompt is rotated with the short factors and the new tokens with the long ones
    assert not torch.allclose(generate(switching, None), expected, atol=1e-3)


def test_mixed_window_ropes_are_what_each_runtime_applies_at_the_original_window(exported):
    """Fine-tuning's original-window micro-batches: the transformers view scores as transformers runs
    the exported folder there; the vLLM view is its long factors with long_mscale at every length
    (vLLM past the window, checked against vLLM in tests_vllm); neither is the set's own switch."""
    from ropesearch.export.transformers_config import rope_parameters
    from ropesearch.pipeline.finetune import MIXED_WINDOW_ROPE

    model, factors, reloaded = exported("llama")
    (as_transformers,), (as_vllm,) = MIXED_WINDOW_ROPE["transformers"], MIXED_WINDOW_ROPE["vllm"]
    ids = ids_of(ORIGINAL)
    reference = logits(reloaded, ids)
    assert (logits(model, ids, as_transformers(factors)) - reference).abs().max().item() <= TOLERANCE
    served = as_vllm(factors)
    assert list(served.factors_for_length(ORIGINAL)) == list(factors.long_factor)
    assert served.attention_factor == rope_parameters(factors)["long_mscale"]
    assert (logits(model, ids, served) - reference).abs().max().item() > 100 * TOLERANCE
