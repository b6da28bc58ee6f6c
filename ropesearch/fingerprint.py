"""Short fingerprints of a run's inputs, so a resume notices when one changed under the same name.

Model weights: the SHA-256 of every byte of the weight files (cached by path, size, mtime, ctime
and inode in the ropesearch cache, so a large model is read once), or of every tensor of a model
that exists in memory only. Model config: its config.json (a .gguf holds it inside the file).
Tokenizer: its vocabulary. Data: the token ids of the very windows scored. Anything else: its
canonical JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
from ropesearch.models.registry import cache_dir, sha256_of
from ropesearch.own_files import atomic_write_text

HASH_CACHE_FORMAT = "ropesearch/file-hashes@1"
HASH_CACHE_ENTRIES = 512  # files remembered (the oldest are forgotten first)


def _short(digest) -> str:
    return digest.hexdigest()[:16]


def weights_fingerprint(model) -> str:
    """Every byte of every tensor of a model held in memory (a GPU's are copied over one at a time)."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
        raw = tensor.detach().reshape(-1).contiguous().view(torch.uint8).cpu()
        digest.update(raw.numpy().data)
    return _short(digest)


WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.gguf", "*.pt")


def weight_files(folder: str | Path) -> list[Path]:
    return sorted({f for pattern in WEIGHT_PATTERNS for f in Path(folder).glob(pattern)})


def files_fingerprint(paths: list[Path]) -> str:
    """Name, size and whole-file SHA-256 of each file: a change to any byte shows."""
    digest = hashlib.sha256()
    for path in sorted(Path(p) for p in paths):
        digest.update(f"{path.name}|{path.stat().st_size}|{file_sha256(path)}|".encode())
    return _short(digest)


def config_fingerprint(config: dict) -> str:
    """A model config as data: every field, in canonical JSON (key order and spacing do not count)."""
    volatile = ("transformers_version", "_name_or_path", "_commit_hash")  # where and with what it was read
    return data_fingerprint({k: v for k, v in config.items() if k not in volatile})


def config_file_fingerprint(path: Path) -> str:
    """`config_fingerprint` of a config.json; a file that is not JSON counts by its bytes."""
    raw = Path(path).read_bytes()
    try:
        config = json.loads(raw)
    except (ValueError, RecursionError):
        config = None
    return config_fingerprint(config) if isinstance(config, dict) else _short(hashlib.sha256(raw))


# ---- the whole-file hash and its cache -------------------------------------------------------------
def _cache_file() -> Path:
    return cache_dir() / "file-hashes.json"


def _stamp(stat: os.stat_result) -> dict:
    # ctime too: restoring mtime after an edit (touch -d) still changes it
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "ctime_ns": stat.st_ctime_ns,
            "inode": stat.st_ino, "device": stat.st_dev}


def _read_cache() -> dict[str, dict]:
    """The cached hashes; a missing, unreadable or damaged cache is an empty one (it is only a cache)."""
    try:
        path = _cache_file()
        if path.is_symlink() or not path.is_file() or path.stat().st_size > (16 << 20):
            return {}
        document = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return {}
    entries = document.get("entries") if isinstance(document, dict) and document.get(
        "format") == HASH_CACHE_FORMAT else None
    if not isinstance(entries, dict):
        return {}
    return {key: value for key, value in entries.items()
            if isinstance(value, dict) and isinstance(value.get("sha256"), str)}


def _write_cache(entries: dict[str, dict]) -> None:
    kept = dict(list(entries.items())[-HASH_CACHE_ENTRIES:])
    try:
        atomic_write_text(_cache_file(), json.dumps({"format": HASH_CACHE_FORMAT, "entries": kept}) + "\n")
    except OSError:
        pass  # a cache that cannot be written costs time next run, nothing else


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a whole file, from the cache where the file is unchanged since it was hashed."""
    real = os.path.realpath(path)
    stamp = _stamp(os.stat(real))
    entries = _read_cache()
    cached = entries.get(real)
    if cached is not None and {k: cached.get(k) for k in stamp} == stamp:
        return cached["sha256"]

    sha256 = sha256_of(Path(real))
    if _stamp(os.stat(real)) == stamp:  # not written to while it was read
        entries.pop(real, None)
        _write_cache(entries | {real: stamp | {"sha256": sha256}})
    return sha256


def windows_fingerprint(windows) -> str:
    digest = hashlib.sha256()
    for window in windows:
        digest.update(window.name.encode() + b"|")
        digest.update(np.asarray(window.ids, dtype=np.int64).tobytes())
        if window.scored is not None:
            digest.update(b"scored" + np.asarray(window.scored, dtype=np.int64).tobytes())
    return _short(digest)


def data_fingerprint(value) -> str:
    return _short(hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()))
