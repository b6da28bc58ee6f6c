"""Documents, their cached token ids, and deterministic evaluation windows."""

from ropesearch.data.documents import BUILTIN_FILES, Document, load_documents
from ropesearch.data.packing import build_windows, pack_windows, split_holdout
from ropesearch.data.samples import Window, document_of, needle_windows, plant_needle, sample_windows
from ropesearch.data.tokens import TokenizedDocument, tokenize_documents

__all__ = [
    "BUILTIN_FILES",
    "Document",
    "TokenizedDocument",
    "Window",
    "build_windows",
    "pack_windows",
    "split_holdout",
    "document_of",
    "load_documents",
    "needle_windows",
    "plant_needle",
    "sample_windows",
    "tokenize_documents",
]
