"""The demo model itself (SmolLM2-135M GGUF, fetched from PyPI): CLI factors -> export -> same logits."""

import json

import pytest
import torch
from click.testing import CliRunner
from transformers import AutoModelForCausalLM

from ropesearch.cli import cli
from ropesearch.export import load_factors
from ropesearch.models import load_model, load_tokenizer, resolve_model
from ropesearch.rope.patching import patch_rope

TEXT = "The pass key is 71432. Remember it. The grass is green and the sky is blue. " * 4


@pytest.fixture(scope="module")
def smollm2():
    ref = resolve_model("smollm2-135m")  # fetched into the ropesearch cache on first use
    return ref, load_model(ref, dtype=torch.float32, device="cpu"), load_tokenizer(ref)


def test_cli_yarn_factors_export_loads_in_transformers_with_same_logits(smollm2, tmp_path):
    ref, model, tokenizer = smollm2
    runner = CliRunner()
    factor_file, out = tmp_path / "yarn8.json", tmp_path / "smollm2-yarn"
    result = runner.invoke(cli, ["factors", "yarn", "--model", "smollm2-135m", "--scale", "8", "--out", str(factor_file)])
    assert result.exit_code == 0, result.output
    document = json.loads(factor_file.read_text())
    assert document["rope"]["target_context"] == 65536 and len(document["rope"]["long_factor"]) == 32
    result = runner.invoke(cli, ["export", str(factor_file), "--model", "smollm2-135m", "--out", str(out)])
    assert result.exit_code == 0, result.output

    exported = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert exported.config.rope_parameters["rope_type"] == "longrope"
    assert exported.config.max_position_embeddings == 65536
    ids = tokenizer(TEXT, return_tensors="pt").input_ids[:, :64]
    assert ids.shape[1] == 64
    factors = load_factors(factor_file)
    with torch.no_grad():
        reference = exported(ids).logits
        with patch_rope(model, factors):
            patched = model(ids).logits
        unpatched = model(ids).logits
    assert (patched - reference).abs().max().item() <= 1e-4
    # the attention factor (1.21) applies at 64 tokens too, so the plain model differs
    assert (unpatched - reference).abs().max().item() > 1e-2


def test_passkey_is_found_within_the_trained_window(smollm2):
    from ropesearch.tasks.passkey import passkey_accuracy, passkey_prompt

    ref, model, tokenizer = smollm2
    prompt = passkey_prompt(tokenizer, 600, 0.5, "48213")
    assert len(prompt.ids) == 600
    text = tokenizer.decode(prompt.ids)
    assert text.count("48213") == 2 and text.endswith("The pass key is")
    results = passkey_accuracy(model, tokenizer, None, [400, 800], [0.2, 0.8], trials=2)
    assert results["accuracy"] == {"400@0.2": 1.0, "400@0.8": 1.0, "800@0.2": 1.0, "800@0.8": 1.0}
    assert all(key == answer for pairs in results["answers"].values() for key, answer in pairs)
