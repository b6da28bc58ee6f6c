"""Long windows in less memory: each decoder layer's norms and MLP over chunks of the sequence.

At inference a Llama-style decoder layer holds, for the whole window, the residual stream,
its normed copy, the float32 intermediates of RMSNorm and, inside the MLP, three
[tokens x intermediate] tensors (gate, up, their product): about 113 KB a token for a
Llama-3-8B shape in bf16, so an 80 GB card runs out near 300k tokens. Norms and MLP treat
every token on its own, so running them over chunks of the sequence gives the same numbers
(up to a matrix product's blocking) with one chunk's worth of their memory. Attention stays
whole. The residual additions are made in place, so a layer keeps no second copy of the
residual stream (the first layer adds into the embeddings, which the model would otherwise
keep alive for the whole pass).

`SequenceChunking(model, chunk_tokens)` installs this on the layers of the families whose
decoder layer is the plain pre-norm block (x + attn(norm(x)), then x + mlp(norm(x))); other
layers are left alone. Inference only: under autograd, in training mode, or with
positional arguments a layer runs its own forward. Inside the context a layer overwrites
its input, so intermediate hidden states are not kept (the evaluator needs only the last).
`restore()` (or leaving the `with` block) deletes the replacements: the model is as it was.
"""

from __future__ import annotations

import torch
from torch import nn

from ropesearch.errors import RopesearchError

# Decoder layers whose forward is exactly the pre-norm block above (read in transformers 5.x;
# Phi-3's residual dropouts are identities at inference)
PRE_NORM_LAYERS = frozenset({"LlamaDecoderLayer", "MistralDecoderLayer", "Qwen2DecoderLayer", "Qwen3DecoderLayer",
                             "GemmaDecoderLayer", "Phi3DecoderLayer"})


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


class SequenceChunking:
    """Norms and MLP of every pre-norm decoder layer (and the final norm) over chunks of
    `chunk_tokens` tokens (across the batch), attention whole, residual additions in place."""

    def __init__(self, model: nn.Module, chunk_tokens: int):
        if chunk_tokens < 1:
            raise RopesearchError(f"sequence chunk must be a positive number of tokens, got {chunk_tokens}")
        self.chunk_tokens = chunk_tokens
        self.patched: list[nn.Module] = []
        for module in model.modules():
            if "forward" in vars(module) and type(module).__name__ in PRE_NORM_LAYERS:
                raise RopesearchError("this model's decoder layers are already chunked: restore the earlier one first")
        try:
            for module in model.modules():
                if type(module).__name__ in PRE_NORM_LAYERS:
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
        return sum(type(m).__name__ in PRE_NORM_LAYERS for m in self.patched)

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
