"""The decoder families ropesearch knows beyond what every RoPE model shares: one table.

Every transformers model with a rotary module in the standard layout (a module holding `inv_freq`
and `attention_scaling`, see `ropesearch.rope.patching`) and a `rope_parameters` config is scored
and patched as it is. What differs per family is how a long window runs in less memory
(`ropesearch.evaluate.chunking`): which decoder layer is the plain pre-norm block
(x + attn(norm(x)), then x + mlp(norm(x))) that can run over chunks of the sequence, and which
attention module is transformers' Llama attention, whose projections and RoPE can run chunked too
(with what it adds to the attention function's arguments). To add a family: one entry here.
A config that keeps `original_max_position_embeddings` outside `rope_parameters` (Phi-3) gets
it rewritten on export whatever its family (`export.transformers_config.apply_to_config`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


def _no_extras(attention) -> dict:
    return {}


def _sliding_window(attention) -> dict:
    return {"sliding_window": getattr(attention, "sliding_window", None)}


@dataclass(frozen=True)
class Architecture:
    """One decoder family: its `model_type`, the class name of its decoder layer when that layer is
    the plain pre-norm block (None: the layer runs whole), the class name of its attention when it
    is Llama's attention (None: attention runs whole, e.g. Phi-3's fused projections), and what that
    attention passes to the attention function beyond Llama's."""

    model_type: str
    decoder_layer: str | None
    attention: str | None = None
    attention_extras: Callable[[object], dict] = _no_extras


ARCHITECTURES: dict[str, Architecture] = {a.model_type: a for a in (
    Architecture("llama", "LlamaDecoderLayer", "LlamaAttention"),
    Architecture("mistral", "MistralDecoderLayer", "MistralAttention",
                 lambda attention: {"sliding_window": getattr(attention.config, "sliding_window", None)}),
    Architecture("qwen2", "Qwen2DecoderLayer", "Qwen2Attention", _sliding_window),  # q/k/v biases: in the projections
    Architecture("qwen3", "Qwen3DecoderLayer", "Qwen3Attention", _sliding_window),  # and q_norm, k_norm
    Architecture("phi3", "Phi3DecoderLayer"),  # residual dropouts are identities at inference
)}


def chunked_layer(class_name: str) -> bool:
    """Whether a decoder layer of this class runs over chunks of the sequence."""
    return any(a.decoder_layer == class_name for a in ARCHITECTURES.values())


def llama_attention(class_name: str) -> Architecture | None:
    """The family whose attention module has this class name and is Llama's attention, if any."""
    return next((a for a in ARCHITECTURES.values() if a.attention == class_name), None)
