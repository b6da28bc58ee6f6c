"""Tiny models built in the test, for every architecture family ropesearch supports."""

from __future__ import annotations

import copy
import os

# Tests never need the Hugging Face hub; offline mode turns a hub lookup into an immediate error
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

# (config class, model class, extra config) for each family
ARCHITECTURES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": None}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {}),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {"partial_rotary_factor": 0.5, "pad_token_id": 0}),
}

ORIGINAL = 64  # the tiny models' "trained" window: tests go past it to reach the long factors


def tiny_config(arch: str = "llama", rope_theta: float = 100.0, head_dim: int = 32, original: int = ORIGINAL,
                vocab_size: int = 128):
    config_name, _, extra = ARCHITECTURES[arch]
    kwargs = dict(
        vocab_size=vocab_size,
        hidden_size=4 * head_dim,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=original,
        rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
        tie_word_embeddings=False,
        # large enough that attention is sharp and every RoPE dimension moves the logits
        initializer_range=0.1,
        bos_token_id=1,
        eos_token_id=2,
    )
    if arch != "phi3":
        kwargs["head_dim"] = head_dim
    kwargs.update(extra)
    return getattr(transformers, config_name)(**kwargs)


def tiny_model(arch: str = "llama", seed: int = 0, **config_kwargs):
    _, model_name, _ = ARCHITECTURES[arch]
    torch.manual_seed(seed)
    model = getattr(transformers, model_name)(tiny_config(arch, **config_kwargs))
    return model.eval()


@pytest.fixture
def tiny_llama():
    return tiny_model("llama")


def stdlib_text(name: str) -> str:
    import sysconfig
    from pathlib import Path

    return (Path(sysconfig.get_paths()["stdlib"]) / name).read_text()


def tiny_tokenizer(vocab_size: int = 320):
    """A byte-level BPE trained in the test on a Python module: real text in, ids < vocab_size out."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator([stdlib_text("argparse.py")], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny Llama with a real tokenizer saved as a model folder, and a folder of text documents."""
    root = tmp_path_factory.mktemp("tiny-with-tokenizer")
    tokenizer = tiny_tokenizer()
    tiny_model("llama", vocab_size=len(tokenizer)).save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    docs = root / "docs"
    docs.mkdir()
    for name in ("typing.py", "inspect.py", "tarfile.py", "subprocess.py"):
        (docs / (name.replace(".py", ".txt"))).write_text(stdlib_text(name))
    return root / "model", docs


DELETE = object()  # as a value for `with_value`: remove the key


def with_value(document, path: tuple, value):
    """A deep copy of a JSON-like document with the entry at `path` set to `value` (or removed: DELETE)."""
    document = copy.deepcopy(document)
    target = document
    for key in path[:-1]:
        target = target[key]
    if value is DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return document


def search_kwargs(kwargs: dict) -> tuple[dict, dict]:
    """A test helper's keyword arguments for a search, split into SearchConfig fields and the
    run's own (run_search's resume and stop_after)."""
    runtime = {k: kwargs.pop(k) for k in ("resume", "stop_after") if k in kwargs}
    return kwargs, runtime
