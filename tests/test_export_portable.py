"""An exported pocket folder stands on its own: moved elsewhere it loads in transformers 5.x with the
patched model's logits, its tokenizer loads, and it carries a model card and a relative serve.sh.
(The same folder under transformers 4.x: tests_tf4/, `make test-tf4`.)"""

import json
import shutil

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ropesearch.api import export
from ropesearch.export import save_factors
from ropesearch.models import load_model, resolve_model, rope_base
from ropesearch.rope import make_factors
from ropesearch.rope.patching import patch_rope


def test_moved_export_loads_with_the_factors_and_describes_itself(tmp_path):
    ref = resolve_model("pocket")
    model = load_model(ref, dtype=torch.float32, device="cpu")
    factors = make_factors("yarn", rope_base(model.config), 4)
    save_factors(factors, tmp_path / "yarn4.json", provenance={"model": "pocket", "scores": {"ppl@1024": 12.5}})
    export(tmp_path / "yarn4.json", "pocket", tmp_path / "made")
    shutil.move(tmp_path / "made", tmp_path / "moved")  # nothing in it may point back
    folder = tmp_path / "moved"
    reloaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = torch.randint(0, 4096, (1, 600), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        with patch_rope(model, factors):
            patched = model(ids).logits
        assert (reloaded(ids).logits - patched).abs().max().item() <= 1e-4
        assert (model(ids).logits - patched).abs().max().item() > 1e-2  # RoPE matters at 600 tokens
    AutoTokenizer.from_pretrained(folder)("def f(): pass")
    card = (folder / "README.md").read_text()
    assert "256 -> 1024" in card and "ppl@1024" in card and "vllm serve" in card and "4.51.0" in card
    serve = (folder / "serve.sh").read_text()
    assert str(tmp_path) not in serve and 'dirname -- "$0"' in serve and 'vllm serve "$here"' in serve
    assert json.loads((folder / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"


def test_card_says_what_each_runtime_reads_and_which_short_window_a_fine_tune_kept(tmp_path):
    factors = make_factors("yarn", rope_base(load_model(resolve_model("pocket"), device="cpu").config), 4)
    cards = {}
    for name, training in (("plain", None), ("mixed", {"length": 1024, "mixed_window": 0.25, "mixed_window_rope": "vllm"})):
        save_factors(factors, tmp_path / f"{name}.json", provenance={"model": "pocket", **({"training": training} if training else {})})
        export(tmp_path / f"{name}.json", "pocket", tmp_path / name)
        cards[name] = (tmp_path / name / "README.md").read_text()
    for card in cards.values():
        runtimes = [line.split(" | ")[0] for line in card.splitlines() if line.startswith(("| transformers", "| vLLM"))]
        assert runtimes == ["| transformers", "| vLLM (0.11.1 on), `--max-model-len` > 256", "| vLLM, `--max-model-len` <= 256"]
    assert "25% of its micro-batches at 256 tokens with vLLM's RoPE there (`mixed_window_rope: vllm`)" in cards["mixed"]
    assert "mixed_window_rope" not in cards["plain"]
