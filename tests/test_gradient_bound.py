"""eval/gradient_bound.py: its trainable rotary tables give the evaluator's loss, and their gradient is the true slope."""

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ropesearch.data.samples import Window
from ropesearch.evaluate import make_evaluator
from ropesearch.models import rope_base
from ropesearch.rope import methods

spec = importlib.util.spec_from_file_location("gradient_bound", Path(__file__).parents[1] / "eval" / "gradient_bound.py")
gradient_bound = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gradient_bound)

LENGTH = 96  # past the tiny models' 64-token window: the long factors apply


def windows(vocab: int, count: int = 2) -> list[Window]:
    rng = np.random.default_rng(0)
    return [Window(f"w{i}", rng.integers(3, vocab, LENGTH).astype(np.int64)) for i in range(count)]


def evaluator_nll(model, factors, data) -> float:
    return make_evaluator(model, progress=False).score([factors], data)[0].nll[LENGTH]


@pytest.fixture
def setting(tiny_llama):
    base = rope_base(tiny_llama.config)
    long_factor = np.geomspace(1.0, 2.5, base.n_factors) * np.linspace(1.0, 1.2, base.n_factors)
    factors = methods.longrope(base, long_factor.tolist(), target_context=LENGTH, attention_factor=1.1)
    return tiny_llama, base, factors, windows(tiny_llama.config.vocab_size)


def test_trainable_tables_reproduce_the_evaluator_and_restore(setting):
    model, base, factors, data = setting
    reference = evaluator_nll(model, factors, data)
    rope = gradient_bound.DifferentiableRope(model, base, factors)
    loss = gradient_bound.fit_loss(model, data, torch.device("cpu"))
    assert loss == pytest.approx(reference, rel=1e-5)
    assert rope.factors(base, LENGTH).long_factor == pytest.approx(factors.long_factor, rel=1e-6)
    rope.restore()
    assert all("forward" not in vars(m) for m in rope.modules)
    assert evaluator_nll(model, factors, data) == pytest.approx(reference, rel=1e-6)


def test_gradient_matches_finite_differences(setting):
    model, base, factors, data = setting
    rope = gradient_bound.DifferentiableRope(model, base, factors)
    gradient_bound.fit_loss(model, data, torch.device("cpu"))
    gradient = rope.log_factor.grad.clone()
    attention_gradient = float(rope.log_attention.grad)
    rope.restore()
    step = 1e-3
    checked = 0
    for index in np.argsort(-gradient.abs().numpy())[:3]:  # the dimensions that matter most
        shifted = []
        for sign in (1, -1):
            values = list(factors.long_factor)
            values[index] *= math.exp(sign * step)
            shifted.append(evaluator_nll(model, methods.longrope(base, values, target_context=LENGTH,
                                                                 attention_factor=1.1), data))
        assert (shifted[0] - shifted[1]) / (2 * step) == pytest.approx(float(gradient[index]), rel=0.05, abs=1e-5)
        checked += 1
    assert checked == 3 and gradient.abs().max() > 1e-3
    shifted = [evaluator_nll(model, methods.longrope(base, factors.long_factor, target_context=LENGTH,
                                                     attention_factor=1.1 * math.exp(sign * step)), data)
               for sign in (1, -1)]
    assert (shifted[0] - shifted[1]) / (2 * step) == pytest.approx(attention_gradient, rel=0.05)


def test_native_windows_cut_back_to_back():
    window = Window("doc@0", np.arange(100))
    cut = gradient_bound.native_windows([window], 32)
    assert [w.name for w in cut] == ["doc@0+0", "doc@0+32", "doc@0+64"]
    assert np.array_equal(np.concatenate([w.ids for w in cut]), np.arange(96))


def test_sliding_windows_score_every_token_once_with_context():
    window = Window("doc@0", np.arange(100))
    cut = gradient_bound.sliding_windows([window], 40, 20)
    assert [w.name for w in cut] == ["doc@0+0", "doc@0+20", "doc@0+40", "doc@0+60"]
    scored_tokens = np.concatenate([w.ids[w.scored] for w in cut])
    assert np.array_equal(scored_tokens, np.arange(1, 100))  # every token but the first, once
    assert all(w.scored.min() >= 20 for w in cut[1:])  # each with at least 20 tokens before it
    with pytest.raises(SystemExit, match="must divide"):
        gradient_bound.sliding_windows([window], 40, 25)
