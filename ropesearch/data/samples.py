"""Deterministic evaluation windows: plain T-token cuts, or needle windows scored on the answer only."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ropesearch.data.tokens import TokenizedDocument, tokenize
from ropesearch.errors import RopesearchError


@dataclass(frozen=True)
class Window:
    """One evaluation sequence. `scored` lists the positions whose token is scored (None: all but the first)."""

    name: str
    ids: np.ndarray
    scored: np.ndarray | None = None
    # packed windows: (document, its first token used, tokens used, position in the window) of each part
    parts: tuple[tuple[str, int, int, int], ...] = ()

    @property
    def length(self) -> int:
        return len(self.ids)

    @property
    def documents(self) -> tuple[str, ...]:
        """Every document whose text is in the window."""
        return tuple(part[0] for part in self.parts) if self.parts else (document_of(self.name),)

    def prefix(self, length: int) -> "Window":
        """The first `length` tokens (a packed window keeps the parts that reach into them)."""
        if length >= self.length:
            return self
        parts = tuple((doc, offset, min(tokens, length - at), at) for doc, offset, tokens, at in self.parts if at < length)
        return Window(self.name, self.ids[:length], self.scored, parts)

    def record(self) -> dict:
        """What a result file says about the window: its name and, when packed, its parts."""
        if not self.parts:
            return {"name": self.name}
        return {"name": self.name, "parts": [{"document": d, "offset": o, "tokens": t, "at": a}
                                             for d, o, t, a in self.parts]}


def native_windows(windows: list[Window], length: int) -> list[Window]:
    """The same tokens cut into back-to-back windows of `length` (e.g. the unscaled model's own
    window), in order: window by window, start by start."""
    return [Window(f"{w.name}+{start}", w.ids[start : start + length].copy())
            for w in windows for start in range(0, w.length - length + 1, length)]


def document_of(window_name: str) -> str:
    """The document a window was cut from (window names are "document@offset" or "document#needle@at")."""
    return window_name.split("#needle@")[0].rsplit("@", 1)[0]


def long_enough(documents: list[TokenizedDocument], length: int, count: int) -> list[TokenizedDocument]:
    eligible = [d for d in documents if len(d.ids) >= length]
    if len(eligible) < count:
        longest = max((len(d.ids) for d in documents), default=0)
        raise RopesearchError(
            f"only {len(eligible)} of {len(documents)} documents have at least {length} tokens (the longest has "
            f"{longest}) but {count} samples were asked for: lower --samples or the length, add longer documents, "
            "or join documents into windows with --pack"
        )
    return eligible


def sample_windows(documents: list[TokenizedDocument], length: int, count: int, seed: int = 0,
                   offset: str = "start") -> list[Window]:
    """`count` documents of at least `length` tokens, chosen by `seed`, each cut to `length` tokens.

    offset "start" takes each document's first tokens (as LongRoPE's evaluation does);
    "random" a seeded random cut.
    """
    if offset not in ("start", "random"):
        raise RopesearchError(f"offset must be 'start' or 'random', got {offset!r}")
    eligible = long_enough(documents, length, count)
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(eligible), size=count, replace=False).tolist())
    windows = []
    for index in chosen:
        document = eligible[index]
        start = 0 if offset == "start" else int(rng.integers(0, len(document.ids) - length + 1))
        windows.append(Window(f"{document.name}@{start}", document.ids[start : start + length].copy()))
    return windows


NEEDLE = " The special magic number is {number}. Remember it, it will be asked later. "
QUESTION = " What is the special magic number mentioned above? The special magic number is"
ANSWER = " {number}"


def needle_windows(documents: list[TokenizedDocument], tokenizer, length: int, count: int, seed: int = 0,
                   depth: tuple[float, float] = (0.0, 0.2)) -> list[Window]:
    """LongRoPE2's needle-driven windows: a number stated early, asked for at the end; only its tokens are scored.

    The needle goes at a seeded depth within `depth` (fractions of the window), so the answer
    needs information from far back in the context.
    """
    eligible = long_enough(documents, length, count)
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(eligible), size=count, replace=False).tolist())
    return [plant_needle(Window(eligible[index].name, eligible[index].ids[:length]), tokenizer, rng, depth)
            for index in chosen]


def plant_needle(window: Window, tokenizer, rng: np.random.Generator, depth: tuple[float, float] = (0.0, 0.2)) -> Window:
    """The window as a needle window of the same length: its text cut to make room for a number stated
    at a seeded depth and asked for at the end; only the answer's tokens are scored. Works on packed
    windows too: their parts say where each document's tokens now sit, the needle's tokens belonging to
    none of them."""
    length = window.length
    number = int(rng.integers(10_000, 100_000))
    needle = tokenize(tokenizer, NEEDLE.format(number=number))
    question = tokenize(tokenizer, QUESTION)
    answer = tokenize(tokenizer, ANSWER.format(number=number))
    filler = length - len(needle) - len(question) - len(answer)
    if filler < 1:
        raise RopesearchError(f"length {length} is too short for a needle window")
    at = int(filler * rng.uniform(*depth))
    haystack = window.ids[:filler]
    ids = np.concatenate([haystack[:at], needle, haystack[at:], question, answer]).astype(np.int32)
    return Window(f"{window.name}#needle@{at}", ids, np.arange(length - len(answer), length),
                  _parts_around(window.prefix(filler).parts, at, len(needle)))


def _parts_around(parts, at: int, inserted: int) -> tuple[tuple[str, int, int, int], ...]:
    """Packed parts once `inserted` tokens go in at position `at`: a part that spans it is split in two."""
    moved = []
    for document, offset, tokens, start in parts:
        before = min(max(at - start, 0), tokens)  # this part's tokens ahead of the insertion
        if before:
            moved.append((document, offset, before, start))
        if before < tokens:
            moved.append((document, offset + before, tokens - before, start + before + inserted))
    return tuple(moved)
