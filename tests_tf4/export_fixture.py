"""Run with ropesearch's own environment (transformers 5.x): export the pocket model with
searched-like factors and write the patched model's logits, for tests_tf4/ to compare under 4.x.

    .venv/bin/python tests_tf4/export_fixture.py OUT_DIR
"""

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ropesearch.api import export
from ropesearch.export import save_factors
from ropesearch.models import load_model, load_tokenizer, resolve_model, rope_base
from ropesearch.rope import make_factors
from ropesearch.rope.patching import patch_rope

LENGTHS = (200, 256, 257, 700)  # below, at and just above the original window (256), and well above


def main(out: Path) -> None:
    ref = resolve_model("pocket")
    model, tokenizer = load_model(ref, dtype=torch.float32, device="cpu"), load_tokenizer(ref)
    base = rope_base(model.config)
    yarn = make_factors("yarn", base, 4)
    ramp = np.linspace(1.0, 1.6, base.n_factors)
    # distinct short and long sets and an attention factor of its own, as a search writes them
    factors = replace(yarn, long_factor=tuple(float(x) for x in np.array(yarn.long_factor) * 1.1),
                      short_factor=tuple(float(x) for x in ramp), attention_factor=1.07, method="longrope",
                      params={})
    out.mkdir(parents=True, exist_ok=True)
    save_factors(factors, out / "factors.json", provenance={"model": "pocket", "scores": {"ppl@1024": 1.0}})
    export(out / "factors.json", "pocket", out / "hf")
    text = "def extend(window):\n    return window * 4  # RoPE, rescaled per dimension\n"
    ids = torch.randint(0, model.config.vocab_size, (1, max(LENGTHS)), generator=torch.Generator().manual_seed(0))
    arrays = {"ids": ids.numpy(), "text_ids": np.array(tokenizer(text)["input_ids"])}
    with torch.no_grad():
        for length in LENGTHS:
            with patch_rope(model, factors):
                arrays[f"patched_{length}"] = model(ids[:, :length]).logits.numpy()
            arrays[f"unscaled_{length}"] = model(ids[:, :length]).logits.numpy()
    np.savez(out / "logits.npz", text=np.array(text), **arrays)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
