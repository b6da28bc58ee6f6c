"""Long documents from a folder of .txt files, a .jsonl file, a datasets name, or the built-in corpus."""

from __future__ import annotations

import sysconfig
from dataclasses import dataclass
from pathlib import Path

from ropesearch.errors import RopesearchError
from ropesearch.validate import parse_json, read_bytes, read_text, text_problem

# Long texts that ship with every CPython (documentation and large modules): the corpus that
# exists on any machine with no download. Files missing from a given Python are skipped.
BUILTIN_FILES = (
    "pydoc_data/topics.py",
    "_pydecimal.py",
    "turtle.py",
    "inspect.py",
    "typing.py",
    "pydoc.py",
    "tarfile.py",
    "doctest.py",
    "email/_header_value_parser.py",
    "unittest/mock.py",
    "argparse.py",
    "subprocess.py",
)


@dataclass(frozen=True)
class Document:
    name: str
    text: str


def builtin_documents(files: tuple[str, ...] = BUILTIN_FILES) -> list[Document]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    documents = [Document(f"python:{name}", (stdlib / name).read_text(encoding="utf-8", errors="replace"))
                 for name in files if (stdlib / name).is_file()]
    if not documents:
        raise RopesearchError(f"the built-in corpus found none of its files under {stdlib}")
    return documents


def _document_text(path: Path) -> str:
    return read_bytes(path, "data file", "give regular .txt files").decode("utf-8", errors="replace")


def _from_jsonl(path: Path, text_field: str) -> list[Document]:
    documents = []
    for number, line in enumerate(read_text(path, "data file").splitlines(), 1):
        if not line.strip():
            continue
        record = parse_json(line, f"data file {path}, line {number}", "give one JSON object per line")
        text = record.get(text_field) if isinstance(record, dict) else None
        if not isinstance(text, str):
            raise RopesearchError(f"{path} line {number}: no string field {text_field!r} (use --text-field)")
        documents.append(Document(str(record.get("id", f"{path.stem}:{number}")), text))
    return documents


def _from_datasets(name: str, split: str, text_field: str) -> list[Document]:
    try:
        import datasets
    except ImportError:
        raise RopesearchError(
            f"{name!r} is not a folder or file here; to read it as a Hugging Face dataset install `datasets`"
        ) from None
    try:
        dataset = datasets.load_dataset(name, split=split)
    except Exception as exc:  # datasets raises many kinds for "not reachable" / "no such dataset"
        raise RopesearchError(f"could not load dataset {name!r} (split {split!r}): {str(exc).splitlines()[0]}") from None
    if text_field not in dataset.column_names:
        raise RopesearchError(f"dataset {name!r} has no column {text_field!r} (columns: {', '.join(dataset.column_names)})")
    return [Document(f"{name}:{i}", row[text_field]) for i, row in enumerate(dataset)]


def load_documents(spec: str, text_field: str = "text", split: str = "test") -> list[Document]:
    """`builtin`, a folder of .txt files, a .txt or .jsonl file, or a Hugging Face datasets name."""
    if spec == "builtin":
        return builtin_documents()
    path = Path(spec).expanduser()
    if path.is_dir():
        files = sorted(path.glob("*.txt"))
        if not files:
            raise RopesearchError(f"data folder {spec} has no .txt files")
        documents = [Document(f.name, _document_text(f)) for f in files]
    elif path.is_file() and path.suffix == ".jsonl":
        documents = _from_jsonl(path, text_field)
    elif path.is_file() or path.exists():  # a FIFO or a device: read_bytes refuses it, without waiting on it
        documents = [Document(path.name, _document_text(path))]
    elif spec.startswith((".", "/", "~")) or path.suffix in (".txt", ".jsonl"):
        raise RopesearchError(f"data {spec} does not exist (give a folder of .txt files, a .jsonl file, or builtin)")
    else:
        documents = _from_datasets(spec, split, text_field)
    documents = [d for d in documents if d.text.strip()]
    for document in documents:
        problem = text_problem(document.text)
        if problem:
            raise RopesearchError(f"data {spec}: document {document.name} is not text ({problem}): "
                                  "give UTF-8 text documents")
    if not documents:
        raise RopesearchError(f"data {spec} holds no non-empty documents")
    return documents
