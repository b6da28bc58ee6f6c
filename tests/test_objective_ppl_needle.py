"""`--objective ppl+needle`: perplexity and needle-driven perplexity on the same windows, one value."""

import numpy as np
import pytest

from conftest import tiny_model, tiny_tokenizer
from ropesearch.data import TokenizedDocument, Window, needle_windows, plant_needle
from ropesearch.data.samples import NEEDLE, QUESTION
from ropesearch.evaluate import TorchEvaluator
from ropesearch.models import rope_base
from ropesearch.rope import methods
from ropesearch.search.objectives import OBJECTIVES


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def test_a_planted_needle_keeps_the_length_and_scores_only_the_answer(tokenizer):
    window = Window("doc", np.arange(5, 805, dtype=np.int32) % 100 + 3)
    planted = plant_needle(window, tokenizer, np.random.default_rng(1))
    assert planted.length == window.length and planted.name.startswith("doc#needle@")
    answer = len(planted.scored)
    assert list(planted.scored) == list(range(window.length - answer, window.length)) and 2 <= answer <= 8


def test_a_planted_packed_window_says_where_each_document_token_sits(tokenizer):
    documents = {"a": np.arange(3, 403, dtype=np.int32) % 90 + 3, "b": np.arange(7, 607, dtype=np.int32) % 80 + 5}
    window = Window("a@0+b@0", np.concatenate([documents["a"], [2], documents["b"][:399]]).astype(np.int32),
                    parts=(("a", 0, 400, 0), ("b", 0, 399, 401)))
    question = len(tokenizer(QUESTION, add_special_tokens=False)["input_ids"])
    places = set()
    for seed in range(8):
        planted = plant_needle(window, tokenizer, np.random.default_rng(seed), depth=(0.0, 1.0))
        at = int(planted.name.rsplit("@", 1)[1])
        covered = set()
        for document, offset, tokens, start in planted.parts:
            assert list(planted.ids[start:start + tokens]) == list(documents[document][offset:offset + tokens])
            covered |= set(range(start, start + tokens))
        places.add("a" if at < 400 else "b")
        # not a document's: the separator, the needle (one block from `at`), the question and the answer
        tail = window.length - question - len(planted.scored)
        rest = sorted(set(range(tail)) - covered)
        needle = len(tokenizer(NEEDLE.format(number=10000), add_special_tokens=False)["input_ids"])
        separator = sorted(set(rest) - set(range(at, at + needle)))
        assert len(rest) == needle + 1 and len(separator) == 1 and planted.ids[separator[0]] == 2
    assert places == {"a", "b"}  # the needle went into either document in these seeds


def test_needle_windows_are_planted_windows_of_whole_documents(tokenizer):
    documents = [TokenizedDocument(f"d{i}", np.random.default_rng(i).integers(3, 100, 3000).astype(np.int32))
                 for i in range(3)]
    made = needle_windows(documents, tokenizer, 1000, 2, seed=4)
    rng = np.random.default_rng(4)
    chosen = sorted(rng.choice(3, size=2, replace=False).tolist())
    again = [plant_needle(Window(documents[i].name, documents[i].ids[:1000]), tokenizer, rng) for i in chosen]
    assert [(w.name, list(w.ids), list(w.scored)) for w in made] == [(w.name, list(w.ids), list(w.scored)) for w in again]


def test_ppl_needle_is_the_geometric_mix_of_the_two_perplexities(tokenizer):
    model = tiny_model("llama", vocab_size=len(tokenizer))
    base = rope_base(model.config)
    windows = [Window(f"w{i}", np.random.default_rng(i).integers(3, 100, 256).astype(np.int32)) for i in range(2)]
    evaluator = TorchEvaluator(model, progress=False)
    kind = OBJECTIVES["ppl+needle"]
    scorer = kind(evaluator, windows, 256, needle_windows=[plant_needle(w, tokenizer, np.random.default_rng(0))
                                                           for w in windows])
    candidates = [methods.yarn(base, 4), methods.pi(base, 4)]
    values, seconds, _ = scorer.score(candidates)
    plain = evaluator.score(candidates, windows, [256])
    needle = evaluator.score(candidates, scorer.needle_windows, [256])
    for row, p, n in zip(values, plain, needle):
        assert row[0] == pytest.approx(np.sqrt(p.ppl[256] * n.ppl[256]), rel=1e-6)
    assert scorer.names == ["ppl+needle@256"] and all(s > 0 for s in seconds)


def test_ppl_needle_screens_by_the_same_mix_with_needles_inside_the_screen(tokenizer):
    """A screen of a ppl+needle search scores the mix, not plain perplexity, and each screen window
    carries a needle of its own within its length (the full window's needle may lie past it)."""
    model = tiny_model("llama", vocab_size=len(tokenizer))
    base = rope_base(model.config)
    windows = [Window(f"w{i}", np.random.default_rng(i).integers(3, 100, 512).astype(np.int32)) for i in range(2)]
    screen = [w.prefix(256) for w in windows[:1]]
    rng = np.random.default_rng(0)
    planted = [plant_needle(w, tokenizer, rng) for w in windows]
    planted_screen = [plant_needle(w, tokenizer, rng) for w in screen]
    evaluator = TorchEvaluator(model, progress=False)
    scorer = OBJECTIVES["ppl+needle"](evaluator, windows, 512, screen_windows=screen, needle_windows=planted,
                                      needle_screen_windows=planted_screen)
    candidates = [methods.yarn(base, 4), methods.pi(base, 4)]
    values, _, _ = scorer.screen(candidates)
    plain = evaluator.score(candidates, screen, [256])
    needle = evaluator.score(candidates, planted_screen, [256])
    for value, p, n in zip(values, plain, needle):
        assert value == pytest.approx(np.sqrt(p.ppl[256] * n.ppl[256]), rel=1e-6)
        assert value != pytest.approx(p.ppl[256], rel=1e-3)
