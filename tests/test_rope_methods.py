"""Our factor formulas give the same inverse frequencies and attention factors as transformers."""

import math

import numpy as np
import pytest
import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from ropesearch.errors import RopesearchError
from ropesearch.rope import RopeBase, critical_dimension, longrope, make_factors
from ropesearch.rope import methods
from ropesearch.rope.tables import inv_freq

SETTINGS = [
    # head_dim, rope_theta, original window, partial rotary factor
    (64, 10_000.0, 4096, 1.0),
    (64, 100_000.0, 8192, 1.0),
    (128, 500_000.0, 8192, 1.0),
    (96, 10_000.0, 2048, 1.0),
    (128, 10_000.0, 4096, 0.5),
    (32, 1_000_000.0, 32768, 0.25),
]
SCALES = [2.0, 8.0, 16.0, 3.5]


def hf(rope_parameters, head_dim, max_position_embeddings, partial, seq_len=None):
    """transformers' own inverse frequencies and attention factor for these settings."""
    params = dict(rope_parameters)
    if partial != 1.0:
        params["partial_rotary_factor"] = partial
    config = LlamaConfig(
        hidden_size=head_dim * 4,
        num_attention_heads=4,
        head_dim=head_dim,
        max_position_embeddings=max_position_embeddings,
        rope_parameters=params,
    )
    if params["rope_type"] == "default":
        return LlamaRotaryEmbedding.compute_default_rope_parameters(config)
    return ROPE_INIT_FUNCTIONS[params["rope_type"]](config, "cpu", seq_len=seq_len)


def ours(factors, seq_len):
    table = torch.tensor(factors.factors_for_length(seq_len), dtype=torch.float64)
    return inv_freq(factors.base, table)


def assert_same(factors, expected, seq_len):
    expected_inv, expected_attention = expected
    torch.testing.assert_close(ours(factors, seq_len), expected_inv, rtol=2e-6, atol=0)
    assert math.isclose(factors.attention_factor, expected_attention, rel_tol=1e-9)


@pytest.mark.parametrize("head_dim,theta,original,partial", SETTINGS)
@pytest.mark.parametrize("scale", SCALES)
class TestAgainstTransformers:
    def base(self, head_dim, theta, original, partial):
        return RopeBase(theta, int(head_dim * partial), original)

    def test_none(self, head_dim, theta, original, partial, scale):
        # Llama's default RoPE ignores partial rotary; linear with factor 1 is the same thing and honours it
        params = {"rope_type": "default"} if partial == 1.0 else {"rope_type": "linear", "factor": 1.0}
        expected = hf({**params, "rope_theta": theta}, head_dim, original, partial)
        assert_same(methods.none(self.base(head_dim, theta, original, partial)), expected, original)

    def test_pi(self, head_dim, theta, original, partial, scale):
        expected = hf({"rope_type": "linear", "rope_theta": theta, "factor": scale}, head_dim, original, partial)
        assert_same(methods.pi(self.base(head_dim, theta, original, partial), scale), expected, original)

    def test_static_ntk(self, head_dim, theta, original, partial, scale):
        # static NTK = transformers' dynamic NTK with factor 1 evaluated at the target length
        factors = methods.ntk(self.base(head_dim, theta, original, partial), scale)
        expected = hf({"rope_type": "dynamic", "rope_theta": theta, "factor": 1.0}, head_dim, original, partial,
                      seq_len=factors.target_context)
        assert_same(factors, expected, factors.target_context)

    @pytest.mark.parametrize("fraction", [0.5, 1.0, 1.7])
    def test_dynamic_ntk(self, head_dim, theta, original, partial, scale, fraction):
        factors = methods.dynamic_ntk(self.base(head_dim, theta, original, partial), scale)
        seq_len = int(factors.target_context * fraction)
        expected = hf({"rope_type": "dynamic", "rope_theta": theta, "factor": scale}, head_dim, original, partial,
                      seq_len=seq_len)
        assert_same(factors, expected, seq_len)

    @pytest.mark.parametrize(
        "options",
        [{}, {"beta_fast": 16, "beta_slow": 2}, {"mscale": 0.707, "mscale_all_dim": 1.0}, {"truncate": False},
         {"attention_factor": 1.3}],
    )
    def test_yarn(self, head_dim, theta, original, partial, scale, options):
        factors = methods.yarn(self.base(head_dim, theta, original, partial), scale, **options)
        expected = hf(
            {"rope_type": "yarn", "rope_theta": theta, "factor": scale, "original_max_position_embeddings": original,
             **options},
            head_dim, factors.target_context, partial,
        )
        assert_same(factors, expected, factors.target_context)

    @pytest.mark.parametrize("low,high", [(1.0, 4.0), (2.0, 8.0)])
    def test_llama3(self, head_dim, theta, original, partial, scale, low, high):
        factors = methods.llama3(self.base(head_dim, theta, original, partial), scale, low, high)
        expected = hf(
            {"rope_type": "llama3", "rope_theta": theta, "factor": scale, "low_freq_factor": low,
             "high_freq_factor": high, "original_max_position_embeddings": original},
            head_dim, factors.target_context, partial,
        )
        assert_same(factors, expected, factors.target_context)

    def test_longrope_long_and_short(self, head_dim, theta, original, partial, scale):
        base = self.base(head_dim, theta, original, partial)
        rng = np.random.default_rng(int(scale * 10) + head_dim)
        long_factor = np.sort(rng.uniform(1, 1.25 * scale, base.n_factors))
        short_factor = rng.uniform(1, 2, base.n_factors)
        factors = longrope(base, long_factor, short_factor, scale=scale)
        params = {"rope_type": "longrope", "rope_theta": theta, "long_factor": list(long_factor),
                  "short_factor": list(short_factor), "original_max_position_embeddings": original}
        for seq_len in (original // 2, original, original + 1, factors.target_context):
            assert_same(factors, hf(params, head_dim, factors.target_context, partial, seq_len=seq_len), seq_len)


def test_pi_ntk_yarn_are_what_their_papers_say():
    base = RopeBase(10_000.0, 128, 4096)
    assert methods.pi(base, 8).long_factor == (8.0,) * 64
    ntk = methods.ntk(base, 8)
    assert ntk.long_factor[0] == 1.0 and math.isclose(ntk.long_factor[-1], 8 ** (126 / 126))
    yarn = methods.yarn(base, 8)
    assert yarn.long_factor[0] == 1.0 and yarn.long_factor[-1] == 8.0
    assert math.isclose(yarn.attention_factor, 0.1 * math.log(8) + 1)
    assert math.isclose(longrope(base, [2.0] * 64, scale=8).attention_factor, math.sqrt(1 + math.log(8) / math.log(4096)))


def test_critical_dimension_splits_trained_from_untrained_wavelengths():
    for theta, original, d in [(500_000.0, 8192, 128), (10_000.0, 4096, 96), (100_000.0, 8192, 64), (1e6, 32768, 128)]:
        base = RopeBase(theta, d, original)
        critical = critical_dimension(base)
        assert critical % 2 == 0
        wavelengths = base.wavelengths()
        assert np.all(wavelengths[: critical // 2] < original)
        assert np.all(wavelengths[critical // 2 :] >= original)
    # LLaMA3-8B: 2·ceil(64 · log_500000(8192 / 2π)) = 2·35
    assert critical_dimension(RopeBase(500_000.0, 128, 8192)) == 70


def test_make_factors_names_bad_input():
    base = RopeBase(10_000.0, 64, 4096)
    with pytest.raises(RopesearchError, match="unknown method 'ntk2'.*yarn"):
        make_factors("ntk2", base, 8)
    with pytest.raises(RopesearchError, match="scale must be a number >= 1"):
        make_factors("pi", base, 0.5)
    with pytest.raises(RopesearchError, match="method 'pi' takes no parameter 'beta_fast' .it takes none"):
        make_factors("pi", base, 2, beta_fast=3)
    with pytest.raises(RopesearchError, match="method 'yarn' takes no parameter 'low_freq_factor' .its parameters: beta_fast"):
        make_factors("yarn", base, 2, low_freq_factor=3)
    with pytest.raises(RopesearchError, match=r"long_factor\[3\] is -1.0"):
        longrope(base, [1.0, 1.0, 1.0, -1.0] + [1.0] * 28, scale=2)
    with pytest.raises(RopesearchError, match="has 3 values but this model needs 32"):
        longrope(base, [1.0] * 3, scale=2)
