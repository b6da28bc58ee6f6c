"""Documents from folders, .jsonl and the built-in corpus; cached tokens; deterministic windows; needles."""

import json

import numpy as np
import pytest

from conftest import tiny_tokenizer
from ropesearch.data import load_documents, needle_windows, sample_windows, tokenize_documents
from ropesearch.data.documents import builtin_documents
from ropesearch.data.tokens import TokenizedDocument
from ropesearch.errors import RopesearchError


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ROPESEARCH_CACHE", str(tmp_path / "cache"))


def test_sources(tmp_path):
    (tmp_path / "a.txt").write_text("alpha " * 10)
    (tmp_path / "b.txt").write_text("beta " * 10)
    (tmp_path / "empty.txt").write_text("  \n")
    assert [d.name for d in load_documents(str(tmp_path))] == ["a.txt", "b.txt"]
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text(json.dumps({"id": "x", "body": "one"}) + "\n\n" + json.dumps({"body": "two"}) + "\n")
    assert [(d.name, d.text) for d in load_documents(str(jsonl), text_field="body")] == [("x", "one"), ("docs:3", "two")]
    with pytest.raises(RopesearchError, match="line 1: no string field 'text' \\(use --text-field\\)"):
        load_documents(str(jsonl))
    with pytest.raises(RopesearchError, match="does not exist"):
        load_documents(str(tmp_path / "nope.jsonl"))
    (tmp_path / "sub").mkdir()
    with pytest.raises(RopesearchError, match="has no .txt files"):
        load_documents(str(tmp_path / "sub"))
    builtin = builtin_documents()
    assert len(builtin) >= 8 and builtin[0].name == "python:pydoc_data/topics.py" and len(builtin[0].text) > 500_000


def test_tokens_are_cached_by_tokenizer_and_content(tmp_path, tokenizer, monkeypatch):
    documents = load_documents("builtin")[:2]
    first = tokenize_documents(documents, tokenizer)
    assert first[0].ids.dtype == np.int32 and len(first[0].ids) > 10_000
    from ropesearch.data import tokens

    calls, real = [], tokens.tokenize
    monkeypatch.setattr(tokens, "tokenize", lambda *a: calls.append(1) or real(*a))
    again = tokenize_documents(documents, tokenizer)
    assert not calls and all(np.array_equal(a.ids, b.ids) for a, b in zip(first, again))
    changed = [type(documents[0])(documents[0].name, documents[0].text + " more")]
    tokenize_documents(changed, tokenizer)  # new content: tokenised again
    assert len(calls) == 1
    tokenize_documents(documents, tiny_tokenizer(300))  # another tokenizer: its own cache entries
    assert len(calls) == 3


def docs(lengths):
    return [TokenizedDocument(f"d{i}", np.arange(n, dtype=np.int32) + i) for i, n in enumerate(lengths)]


def test_windows_are_deterministic_and_long_enough():
    corpus = docs([100, 500, 800, 50, 1000])
    a = sample_windows(corpus, 400, 2, seed=3)
    assert [w.name for w in a] == [w.name for w in sample_windows(corpus, 400, 2, seed=3)]
    assert all(w.length == 400 and w.name.endswith("@0") for w in a)
    assert {w.name for s in range(10) for w in sample_windows(corpus, 400, 2, seed=s)} <= {"d1@0", "d2@0", "d4@0"}
    random = sample_windows(corpus, 400, 3, seed=1, offset="random")
    assert any(not w.name.endswith("@0") for w in random)
    with pytest.raises(RopesearchError, match="only 3 of 5 documents have at least 400 tokens .* but 4 samples"):
        sample_windows(corpus, 400, 4)


def test_needle_windows(tokenizer):
    corpus = tokenize_documents(load_documents("builtin")[:3], tokenizer)
    windows = needle_windows(corpus, tokenizer, 2048, 2, seed=5)
    for window in windows:
        assert window.length == 2048 and window.scored[-1] == 2047
        text = tokenizer.decode(window.ids)
        number = tokenizer.decode(window.ids[window.scored]).strip()
        assert number.isdigit() and len(number) == 5
        assert f"The special magic number is {number}." in text[: int(len(text) * 0.3)]
        assert text.endswith(f"The special magic number is {number}")
    assert [w.name for w in windows] == [w.name for w in needle_windows(corpus, tokenizer, 2048, 2, seed=5)]
