"""Long windows in less memory: decoder layers computed over chunks of the sequence, attention whole.

At inference a Llama-style decoder layer holds, for the whole window, the residual stream,
its normed copy, the float32 intermediates of RMSNorm, q/k/v and the RoPE temporaries, and
inside the MLP three [tokens x intermediate] tensors (gate, up, their product): about 113 KB
a token for a Llama-3-8B shape in bf16, so an 80 GB card runs out near 300k tokens. All of it
but attention itself treats every token on its own, so running it over chunks of the
sequence gives the same numbers (up to a matrix product's blocking) with one chunk's worth
of memory. What still spans the window: the residual stream, q, k, v, the attention output
(and its copy in [tokens, heads] order), cos and sin: about 36 KB a token for that shape.
Residual additions are made in place, so no second copy of the residual stream is kept (the
first layer adds into the embeddings, which the model keeps alive for the whole pass anyway).

`SequenceChunking(model, chunk_tokens)` installs this, for one pass, on the layers of the
families whose decoder layer is the plain pre-norm block (x + attn(norm(x)), then
x + mlp(norm(x))); their norm, q/k/v projections, RoPE and o_proj run chunked where the
attention module is transformers' Llama attention, the attention module whole elsewhere;
other layers are left alone. Which family is which: `ropesearch.models.architectures`.
Inference only: under autograd, in training mode, with positional arguments or a KV cache
a layer runs its own forward. Inside the context a layer overwrites its input, so
intermediate hidden states are not kept (the evaluator needs only the last).
`restore()` (or leaving the `with` block) deletes the replacements: the model is as it was.
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from ropesearch.errors import RopesearchError
from ropesearch.models.architectures import chunked_layer, llama_attention

def over_chunks(module: nn.Module, x: torch.Tensor, chunk: int) -> torch.Tensor:
    """`module(x)` for a token-wise module, computed `chunk` positions (dim 1) at a time."""
    length = x.shape[1]
    if length <= chunk:
        return module(x)
    first = module(x[:, :chunk])
    out = first.new_empty((*x.shape[:2], *first.shape[2:]))
    out[:, :chunk] = first
    del first
    for start in range(chunk, length, chunk):
        out[:, start : start + chunk] = module(x[:, start : start + chunk])
    return out


def _attends_in_chunks(attention: nn.Module, kwargs: dict) -> bool:
    no_cache = kwargs.get("cache", kwargs.get("past_key_values")) is None
    return llama_attention(type(attention).__name__) is not None and no_cache and not kwargs.get("output_attentions")


def _attention_in_chunks(layer: nn.Module, hidden_states: torch.Tensor, chunk: int, kwargs: dict) -> None:
    """hidden_states += attention(input_layernorm(hidden_states)), in place, with the norm, the
    q/k/v projections, RoPE and o_proj computed over chunks; only q, k, v and the attention output
    span the window. The same operations as the module's forward, in the same order per token."""
    attention = layer.self_attn
    modeling = sys.modules[type(attention).__module__]
    kwargs = dict(kwargs)
    cos, sin = kwargs.pop("position_embeddings")
    mask = kwargs.pop("attention_mask", None)
    kwargs.pop("cache", None), kwargs.pop("past_key_values", None)
    rows, length, _ = hidden_states.shape
    head_dim = attention.head_dim
    heads, kv_heads = attention.config.num_attention_heads, attention.config.num_key_value_heads
    # [rows, tokens, heads, head_dim] storage, as the module's own projections lay it out
    query = hidden_states.new_empty(rows, length, heads, head_dim)
    key = hidden_states.new_empty(rows, length, kv_heads, head_dim)
    value = hidden_states.new_empty(rows, length, kv_heads, head_dim)
    for start in range(0, length, chunk):
        end = min(start + chunk, length)
        normed = layer.input_layernorm(hidden_states[:, start:end])
        shape = (rows, end - start, -1, head_dim)
        q = attention.q_proj(normed).view(shape)
        k = attention.k_proj(normed).view(shape)
        if hasattr(attention, "q_norm"):
            q, k = attention.q_norm(q), attention.k_norm(k)
        q, k = modeling.apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), cos[:, start:end], sin[:, start:end])
        query[:, start:end] = q.transpose(1, 2)
        key[:, start:end] = k.transpose(1, 2)
        value[:, start:end] = attention.v_proj(normed).view(shape)
    del normed, q, k
    function = modeling.ALL_ATTENTION_FUNCTIONS.get_interface(attention.config._attn_implementation,
                                                              modeling.eager_attention_forward)
    output = function(attention, query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), mask,
                      dropout=0.0, scaling=attention.scaling, **llama_attention(type(attention).__name__).attention_extras(attention),
                      **kwargs)[0]
    del query, key, value
    for start in range(0, length, chunk):
        end = min(start + chunk, length)
        hidden_states[:, start:end] += attention.o_proj(output[:, start:end].reshape(rows, end - start, -1))


def auto_chunk_tokens(model: nn.Module, budget_bytes: int = 2**30) -> int:
    """Tokens whose MLP intermediates (gate, up, their product) take about `budget_bytes`, in
    multiples of 1024: chunks large enough to keep the matrix products efficient and the count
    of chunks small (12288 for a Llama-3-8B shape in bf16, about 116k for SmolLM2-135M)."""
    config = model.config
    width = getattr(config, "intermediate_size", None) or 4 * config.hidden_size
    element = next(model.parameters()).element_size()
    return max(1024, budget_bytes // (3 * width * element) // 1024 * 1024)


class SequenceChunking:
    """Every pre-norm decoder layer (and the final norm) over chunks of `chunk_tokens` tokens
    (across the batch), attention whole, residual additions in place."""

    def __init__(self, model: nn.Module, chunk_tokens: int):
        if chunk_tokens < 1:
            raise RopesearchError(f"sequence chunk must be a positive number of tokens, got {chunk_tokens}")
        self.chunk_tokens = chunk_tokens
        self.patched: list[nn.Module] = []
        for module in model.modules():
            if "forward" in vars(module) and chunked_layer(type(module).__name__):
                raise RopesearchError("this model's decoder layers are already chunked: restore the earlier one first")
        try:
            for module in model.modules():
                if chunked_layer(type(module).__name__):
                    self._install(module, self._layer_forward(module))
            final_norm = getattr(getattr(model, "base_model", model), "norm", None)
            if final_norm is not None and type(final_norm).__name__.endswith("RMSNorm"):
                self._install(final_norm, self._norm_forward(final_norm))
        except BaseException:
            self.restore()
            raise

    @property
    def layers(self) -> int:
        """How many decoder layers run chunked."""
        return sum(chunked_layer(type(m).__name__) for m in self.patched)

    def _install(self, module: nn.Module, forward) -> None:
        module.forward = forward
        self.patched.append(module)

    def _chunk(self, hidden_states: torch.Tensor) -> int:
        return max(1, self.chunk_tokens // hidden_states.shape[0])

    def _norm_forward(self, norm: nn.Module):
        def forward(hidden_states: torch.Tensor) -> torch.Tensor:
            return over_chunks(lambda x: type(norm).forward(norm, x), hidden_states, self._chunk(hidden_states))

        return forward

    def _layer_forward(self, layer: nn.Module):
        def forward(hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
            if args or layer.training or torch.is_grad_enabled():
                return type(layer).forward(layer, hidden_states, *args, **kwargs)
            chunk = self._chunk(hidden_states)
            if _attends_in_chunks(layer.self_attn, kwargs):
                _attention_in_chunks(layer, hidden_states, chunk, kwargs)
            else:
                normed = over_chunks(layer.input_layernorm, hidden_states, chunk)
                attention = layer.self_attn(hidden_states=normed, **kwargs)[0]
                del normed
                hidden_states += attention
                del attention
            for start in range(0, hidden_states.shape[1], chunk):
                part = hidden_states[:, start : start + chunk]
                part += layer.mlp(layer.post_attention_layernorm(part))
            return hidden_states

        return forward

    def restore(self) -> None:
        for module in self.patched:
            del module.forward
        self.patched = []

    def __enter__(self) -> SequenceChunking:
        return self

    def __exit__(self, *exc) -> None:
        self.restore()
