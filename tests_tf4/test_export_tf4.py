"""An exported folder under transformers 4.x (its own environment, `make test-tf4`): the logits of
the folder as 4.x loads it equal ropesearch's patched model under 5.x, and the tokenizer loads.

The export itself runs in ropesearch's environment (ROPESEARCH_PYTHON, default .venv/bin/python).
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    assert transformers.__version__.startswith("4."), f"this lane needs transformers 4.x, got {transformers.__version__}"
    out = tmp_path_factory.mktemp("export")
    python = os.environ.get("ROPESEARCH_PYTHON", str(ROOT / ".venv" / "bin" / "python"))
    subprocess.run([python, str(ROOT / "tests_tf4" / "export_fixture.py"), str(out)], check=True, cwd=ROOT,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    return out / "hf", dict(np.load(out / "logits.npz"))


def test_config_carries_the_factors(exported):
    folder, _ = exported
    config = AutoConfig.from_pretrained(folder)
    assert config.rope_scaling["rope_type"] == "longrope"
    assert config.original_max_position_embeddings == 256 and config.max_position_embeddings == 1024


@pytest.mark.parametrize("length", [200, 256, 257, 700])
def test_logits_equal_the_patched_model(exported, length):
    folder, arrays = exported
    model = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32).eval()
    ids = torch.from_numpy(arrays["ids"][:, :length])
    with torch.no_grad():
        logits = model(ids).logits.numpy()
    assert np.abs(logits - arrays[f"patched_{length}"]).max() <= TOLERANCE
    # the comparison can fail: the unscaled model is far from the patched one at every length
    assert np.abs(arrays[f"unscaled_{length}"] - arrays[f"patched_{length}"]).max() > 1e-2


def test_tokenizer_loads_and_encodes_as_under_5x(exported):
    folder, arrays = exported
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer(str(arrays["text"]))["input_ids"] == arrays["text_ids"].tolist()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
