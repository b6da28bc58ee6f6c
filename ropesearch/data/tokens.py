"""Tokenise documents once and cache the token ids on disk, keyed by tokenizer and content."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ropesearch.data.documents import Document
from ropesearch.models.registry import cache_dir


@dataclass(frozen=True)
class TokenizedDocument:
    name: str
    ids: np.ndarray  # int32 token ids, no special tokens


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash that changes whenever the tokenizer would split text differently."""
    cached = getattr(tokenizer, "_ropesearch_fingerprint", None)
    if cached:
        return cached
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        material = backend.to_str()
    else:
        material = json.dumps(sorted(tokenizer.get_vocab().items())) + type(tokenizer).__name__
    fingerprint = hashlib.sha256(material.encode()).hexdigest()[:16]
    try:
        tokenizer._ropesearch_fingerprint = fingerprint
    except AttributeError:
        pass
    return fingerprint


def tokenize(tokenizer, text: str) -> np.ndarray:
    ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False, verbose=False)["input_ids"]
    return np.asarray(ids, dtype=np.int32)


def tokenize_documents(documents: list[Document], tokenizer, cache: bool = True) -> list[TokenizedDocument]:
    """Token ids of every document, read from the on-disk cache where present."""
    folder = cache_dir() / "tokens" / tokenizer_fingerprint(tokenizer)
    result = []
    for document in documents:
        key = hashlib.sha256(document.text.encode("utf-8", errors="replace")).hexdigest()[:24]
        path = folder / f"{key}.npy"
        ids = None
        if cache and path.is_file():
            try:
                ids = np.load(path)
            except (OSError, ValueError):
                ids = None  # a damaged cache entry is rebuilt
        if ids is None:
            ids = tokenize(tokenizer, document.text)
            if cache:
                folder.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(f".{np.random.randint(1 << 30)}.tmp.npy")
                np.save(tmp, ids)
                tmp.replace(path)
        result.append(TokenizedDocument(document.name, ids))
    return result
