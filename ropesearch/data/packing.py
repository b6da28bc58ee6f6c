"""Windows longer than any document: documents joined end to end (EOS between them), and the
seeded split of a corpus into documents for searching/fine-tuning and documents held out.

No corpus has million-token documents, so a 1M-token window is built from several. Each
packed window records its parts (document, first token, tokens taken), so a result file says
exactly which text was scored and a held-out check can see every document inside it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ropesearch.data.documents import Document
from ropesearch.data.samples import Window, needle_windows, sample_windows
from ropesearch.data.tokens import TokenizedDocument
from ropesearch.errors import RopesearchError


def pack_windows(documents: Sequence[TokenizedDocument], length: int, count: int, seed: int = 0,
                 separator: int | None = None) -> list[Window]:
    """`count` windows of exactly `length` tokens, each made of whole documents from their start.

    Documents are taken in a seeded order; a separator token (EOS) goes between two documents.
    The document that overflows a window is cut there, and the next window starts with the next
    document: no text appears in two windows, and every document is read from its beginning.
    """
    if length < 2 or count < 1:
        raise RopesearchError(f"packing needs a length >= 2 and at least one window, got {length} x {count}")
    order = np.random.default_rng(seed).permutation(len(documents))
    windows: list[Window] = []
    pieces: list[np.ndarray] = []
    parts: list[tuple[str, int, int, int]] = []
    filled = 0
    for index in order:
        document = documents[int(index)]
        if not len(document.ids):
            continue
        if filled:
            if separator is not None:
                pieces.append(np.asarray([separator], dtype=np.int32))
                filled += 1
            if filled >= length:  # the separator closed the window
                windows.append(_window(pieces, parts, length))
                pieces, parts, filled = [], [], 0
        take = min(len(document.ids), length - filled)
        pieces.append(np.asarray(document.ids[:take], dtype=np.int32))
        parts.append((document.name, 0, int(take), filled))
        filled += take
        if filled == length:
            windows.append(_window(pieces, parts, length))
            pieces, parts, filled = [], [], 0
        if len(windows) == count:
            return windows
    total = sum(len(d.ids) for d in documents)
    raise RopesearchError(
        f"the {len(documents)} documents hold {total:,} tokens together, too few for {count} packed window(s) "
        f"of {length:,} tokens (each document is used once, from its start): add documents, or lower the "
        "length or --samples"
    )


def _window(pieces: list[np.ndarray], parts: list[tuple[str, int, int, int]], length: int) -> Window:
    ids = np.concatenate(pieces)[:length]
    name = "+".join(f"{doc}@{offset}" for doc, offset, _, _ in parts)
    return Window(name, ids, parts=tuple(parts))


def split_holdout(documents: Sequence[Document], fraction: float, seed: int = 0) -> tuple[list[Document], list[Document]]:
    """(used, held_out): documents in a seeded order go to the held-out side until it holds
    `fraction` of all characters. The same corpus and seed always give the same split."""
    if not 0 < fraction < 1:
        raise RopesearchError(f"holdout fraction must lie strictly between 0 and 1, got {fraction!r}")
    if len(documents) < 2:
        raise RopesearchError("a held-out split needs at least two documents")
    by_name = sorted(documents, key=lambda d: d.name)  # independent of the order the files were listed in
    order = np.random.default_rng(seed).permutation(len(by_name))
    total = sum(len(d.text) for d in by_name)
    held, size = set(), 0
    for index in order:
        if size >= fraction * total or len(held) == len(by_name) - 1:
            break
        held.add(int(index))
        size += len(by_name[int(index)].text)
    used = [d for i, d in enumerate(by_name) if i not in held]
    held_out = [d for i, d in enumerate(by_name) if i in held]
    return used, held_out


def build_windows(documents: Sequence[TokenizedDocument], tokenizer, length: int, count: int, seed: int = 0,
                  needle: bool = False, offset: str = "start", pack: bool = False) -> list[Window]:
    """The windows every command scores: cut from single documents, packed, or needle windows."""
    if pack:
        if needle:
            raise RopesearchError("needle windows are cut from single documents: drop --pack, or --needle")
        if offset != "start":
            raise RopesearchError("packed windows read each document from its start: drop --offset random")
        return pack_windows(documents, length, count, seed, separator=getattr(tokenizer, "eos_token_id", None))
    if needle:
        return needle_windows(list(documents), tokenizer, length, count, seed)
    return sample_windows(list(documents), length, count, seed, offset)
