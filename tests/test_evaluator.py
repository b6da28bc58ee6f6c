"""The torch evaluator equals transformers' own loss, whatever the chunking, batching or prefix sharing."""

import math

import numpy as np
import pytest
import torch

from conftest import ORIGINAL, tiny_model
from ropesearch.data import Window
from ropesearch.errors import RopesearchError
from ropesearch.evaluate import TorchEvaluator, plan_jobs
from ropesearch.models import rope_base
from ropesearch.rope import longrope, methods
from ropesearch.rope.patching import patch_rope


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama")


@pytest.fixture(scope="module")
def base(model):
    return rope_base(model.config)


def windows(count=3, length=256, seed=0):
    rng = np.random.default_rng(seed)
    return [Window(f"w{i}", rng.integers(3, 128, length).astype(np.int32)) for i in range(count)]


def hf_ppl(model, wins, length, factors=None):
    """transformers' path: model(ids, labels=ids), mean loss over windows of equal length."""
    ids = torch.tensor(np.stack([w.ids[:length] for w in wins])).long()
    with torch.no_grad():
        if factors is None:
            return math.exp(model(ids, labels=ids).loss.item())
        with patch_rope(model, factors):
            return math.exp(model(ids, labels=ids).loss.item())


def switching(base, seed=0):
    rng = np.random.default_rng(seed)
    return longrope(base, np.sort(rng.uniform(1, 5, base.n_factors)), rng.uniform(1, 1.5, base.n_factors), scale=4)


def test_matches_transformers_loss_at_every_prefix(model, base):
    wins = windows()
    candidates = [methods.none(base), methods.yarn(base, 4), methods.pi(base, 4)]
    lengths = [32, 64, 65, 200, 256]
    scores = TorchEvaluator(model, progress=False).score(candidates, wins, lengths)
    for factors, score in zip(candidates, scores):
        assert list(score.ppl) == lengths
        for length in lengths:
            assert score.ppl[length] == pytest.approx(hf_ppl(model, wins, length, factors), rel=1e-5)
        assert score.tokens[256] == 3 * 255


def test_short_long_switch_and_dynamic_ntk_get_their_own_pass(model, base):
    """A prefix at or below the original window must see the short factors, as a run of that length would."""
    wins = windows()
    candidates = [switching(base), methods.dynamic_ntk(base, 4)]
    jobs = plan_jobs(candidates, [48, 64, 128, 256])
    assert sorted((j.candidate, j.forward_length, j.report_lengths) for j in jobs) == [
        (0, 64, (48, 64)), (0, 256, (128, 256)), (1, 64, (48, 64)), (1, 128, (128,)), (1, 256, (256,))]
    scores = TorchEvaluator(model, progress=False).score(candidates, wins, [48, 64, 128, 256])
    for factors, score in zip(candidates, scores):
        for length in (48, 64, 128, 256):
            assert score.ppl[length] == pytest.approx(hf_ppl(model, wins, length, factors), rel=1e-5)
    # and the short factors really differ from the long ones here
    long_only = longrope(base, candidates[0].long_factor, scale=4, attention_factor=candidates[0].attention_factor)
    assert abs(TorchEvaluator(model, progress=False).score([long_only], wins, [48])[0].ppl[48] - scores[0].ppl[48]) > 1e-3


def test_score_does_not_depend_on_batch_or_chunking(model, base):
    wins = windows(count=2)
    candidates = [switching(base, s) for s in range(4)] + [methods.yarn(base, 4)]
    together = TorchEvaluator(model, progress=False).score(candidates, wins, [64, 256])
    for options in ({"max_batch": 1}, {"max_batch": 3, "logits_tokens": 7}, {"cpu_tokens": 256}):
        evaluator = TorchEvaluator(model, progress=False, **options)
        for index in (0, 4):
            alone = evaluator.score([candidates[index]], wins, [64, 256])[0]
            for length in (64, 256):
                assert alone.nll[length] == pytest.approx(together[index].nll[length], rel=1e-6, abs=1e-7)


def test_needle_windows_score_only_the_answer(model, base):
    wins = windows(count=2)
    scored = [np.arange(250, 256), np.arange(251, 256)]
    needle = [Window(w.name, w.ids, s) for w, s in zip(wins, scored)]
    factors = methods.yarn(base, 4)
    score = TorchEvaluator(model, progress=False).score([factors], needle)[0]
    ids = torch.tensor(np.stack([w.ids for w in wins])).long()
    with torch.no_grad(), patch_rope(model, factors):
        log_probs = torch.log_softmax(model(ids).logits.float(), dim=-1)
    expected = -sum(log_probs[r, p - 1, ids[r, p]].item() for r, s in enumerate(scored) for p in s)
    assert score.tokens[256] == 6 + 5
    assert score.nll_sum[256] == pytest.approx(expected, rel=1e-5)


def test_bad_requests_are_clear_errors(model, base):
    evaluator = TorchEvaluator(model, progress=False)
    with pytest.raises(RopesearchError, match="lengths must lie in"):
        evaluator.score([methods.none(base)], windows(length=64), [128])
    with pytest.raises(RopesearchError, match="same length"):
        evaluator.score([methods.none(base)], windows(length=64) + windows(length=32))
    with pytest.raises(RopesearchError, match="needle windows are scored at their full length only"):
        evaluator.score([methods.none(base)], [Window("n", windows()[0].ids, np.arange(250, 256))], [64, 256])
    assert ORIGINAL == 64
