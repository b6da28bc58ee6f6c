"""Short fingerprints of a run's inputs, so a resume notices when one changed under the same name.

Model weights: a strided sample of every tensor of the loaded model (a few thousand values
each, so a 7B model costs well under a second, on GPU or CPU), or of the weight files where
only the config is loaded (vLLM). Tokenizer: its vocabulary. Data: the token ids of the very
windows scored. Anything else: its canonical JSON.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

SAMPLES_PER_TENSOR = 4096


def _short(digest) -> str:
    return digest.hexdigest()[:16]


def weights_fingerprint(model) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        stride = max(1, flat.numel() // SAMPLES_PER_TENSOR)
        sample = flat[::stride][:SAMPLES_PER_TENSOR].float().cpu().numpy()
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
        digest.update(sample.tobytes())
    return _short(digest)


WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.gguf", "*.pt")


def weight_files(folder: str | Path) -> list[Path]:
    return sorted({f for pattern in WEIGHT_PATTERNS for f in Path(folder).glob(pattern)})


def files_fingerprint(folder: str | Path) -> str:
    """Size and 16 evenly spaced 64 KiB pieces of each weight file: cheap, and any rewrite shows."""
    digest = hashlib.sha256()
    for path in weight_files(folder):
        size = path.stat().st_size
        digest.update(f"{path.name}|{size}|".encode())
        with open(path, "rb") as handle:
            for k in range(16):
                handle.seek(size * k // 16)
                digest.update(handle.read(1 << 16))
    return _short(digest)


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
