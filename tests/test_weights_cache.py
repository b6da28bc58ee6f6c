"""A GGUF model's de-quantised weights are kept after the first load and read back bit for bit the
same (the real SmolLM2 GGUF, fetched into the ropesearch cache on first use); a damaged entry is
built again, and ROPESEARCH_WEIGHT_CACHE=0 turns the cache off."""

import torch

from ropesearch.fingerprint import config_fingerprint
from ropesearch.models import load_model, resolve_model, rope_base

IDS = torch.tensor([[1, 504, 2231, 314, 1070, 30, 2000, 17, 9, 88, 4095, 12]])


def _entries(root):
    folder = root / "weights"
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")) if folder.is_dir() else []


def _config(model) -> str:
    """The config but what differs by design: the GGUF marker, and dtype (saving writes it as a string)."""
    fields = model.config.to_dict()
    return config_fingerprint({k: v for k, v in fields.items() if k not in ("quantization_config", "dtype")})


def test_weights_kept_after_first_load_and_read_back_the_same(tmp_path, monkeypatch):
    ref = resolve_model("smollm2-135m")  # the GGUF stays in the usual cache
    monkeypatch.setenv("ROPESEARCH_CACHE", str(tmp_path))
    monkeypatch.setenv("ROPESEARCH_WEIGHT_CACHE", "1")

    first = load_model(ref, dtype=torch.float32, device="cpu")
    (entry,) = _entries(tmp_path)
    assert (entry / "model.safetensors").stat().st_size > 400e6  # 135M float32 parameters, tied head once
    assert first.hf_quantizer is not None  # the model in use keeps what transformers set on it

    second = load_model(ref, dtype=torch.float32, device="cpu")
    assert second.config._name_or_path == str(entry)  # read from the cache, not the GGUF file
    one, two = first.state_dict(), second.state_dict()
    assert one.keys() == two.keys() and all(torch.equal(one[k], two[k]) for k in one)
    assert _config(first) == _config(second) and rope_base(first.config) == rope_base(second.config)
    assert first.generation_config.to_dict() == second.generation_config.to_dict()
    assert second.lm_head.weight.data_ptr() == second.model.embed_tokens.weight.data_ptr()  # still tied
    with torch.no_grad():
        assert torch.equal(first(IDS).logits, second(IDS).logits)

    # another dtype is another entry; an entry the same file left before it was replaced, with the same
    # dtype and versions, is removed; one made with other versions (another environment) is kept
    (tmp_path / "weights" / "0123456789abcdef").mkdir()
    (tmp_path / "weights" / "fedcba9876543210").mkdir()
    made_here = (entry / "source.json").read_text().replace("float32", "bfloat16")
    (tmp_path / "weights" / "0123456789abcdef" / "source.json").write_text(made_here)
    (tmp_path / "weights" / "fedcba9876543210" / "source.json").write_text(made_here.replace("weights@1", "weights@0"))
    load_model(ref, dtype=torch.bfloat16, device="cpu")
    assert [p.name for p in _entries(tmp_path) if p != entry][-1] == "fedcba9876543210"
    assert len(_entries(tmp_path)) == 3 and not (tmp_path / "weights" / "0123456789abcdef").exists()

    weights = entry / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # cut short, as by a full disk or a killed copy
    assert not [p for p in (tmp_path / "weights").iterdir() if p.is_dir() and p.name.startswith(".")]  # no staging left
    monkeypatch.setenv("ROPESEARCH_WEIGHT_CACHE", "0")
    off = load_model(ref, dtype=torch.float32, device="cpu")
    assert off.config._name_or_path != str(entry) and weights.stat().st_size == 1000  # neither read nor written

    monkeypatch.setenv("ROPESEARCH_WEIGHT_CACHE", "1")
    again = load_model(ref, dtype=torch.float32, device="cpu")  # the damaged entry is built again
    assert weights.stat().st_size > 400e6
    with torch.no_grad():
        assert torch.equal(again(IDS).logits, first(IDS).logits)
