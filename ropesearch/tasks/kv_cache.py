"""A KV cache for long prompts with short answers: the keys and values of each layer live in a
buffer reserved for prompt plus answer, and every generated token is written in place.

transformers' default `DynamicCache` concatenates each new token onto the whole cache: a copy of
every layer's keys and values per generated token. With a 64k-token prompt in a batch of 8 that
copy is 12 GB per token for SmolLM2-135M, and on a CPU it took 84% of a decoding step at 8k
tokens (torch profiler). Measured with `eval/bench_decode.py`: a decoding step 10-21% faster on a
CPU at 4k-8k tokens; on an H100, where SmolLM2's steps take ~30-40 ms up to 64k tokens with cuDNN attention
and either cache, no consistent change (results/bench-decode*.md). Built on
transformers' own cache classes (a `Cache` of layers that subclass `DynamicLayer`), so
`model.generate(ids, **reserved_cache_kwargs(model, n))` needs nothing else.
"""

from __future__ import annotations

import inspect

import torch
from transformers.cache_utils import Cache, DynamicLayer


class ReservedLayer(DynamicLayer):
    """A `DynamicLayer` whose keys and values are views of buffers of `capacity` tokens."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity
        self._buffers: tuple[torch.Tensor, torch.Tensor] | None = None
        self._length = 0

    def _reserve(self, keys: torch.Tensor, values: torch.Tensor, need: int) -> None:
        shape = (keys.shape[0], keys.shape[1], max(self.capacity, need), keys.shape[-1])
        key_buffer = keys.new_empty(shape)
        value_buffer = values.new_empty(shape[:-1] + (values.shape[-1],))
        length = keys.shape[-2]
        key_buffer[..., :length, :] = keys
        value_buffer[..., :length, :] = values
        self._buffers, self._length = (key_buffer, value_buffer), length

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        new = key_states.shape[-2]
        if self._length == 0 and self.keys.numel() == 0:  # the prompt: reserve, and attend to it as given
            self._reserve(key_states, value_states, new)
            self.keys, self.values = self._buffers[0][..., :new, :], self._buffers[1][..., :new, :]
            return key_states, value_states
        key_buffer, value_buffer = self._buffers or (None, None)
        # cropped, sliced or reordered by someone else (not a view of the buffer as left): take theirs
        outside = key_buffer is None or self.keys.data_ptr() != key_buffer.data_ptr() or tuple(self.keys.shape) != (
            *key_buffer.shape[:2], self._length, key_buffer.shape[-1])
        if outside or self._length + new > key_buffer.shape[-2]:
            self._reserve(self.keys, self.values, 2 * (self.keys.shape[-2] + new))
            key_buffer, value_buffer = self._buffers
        end = self._length + new
        key_buffer[..., self._length:end, :] = key_states
        value_buffer[..., self._length:end, :] = value_states
        self._length = end
        self.keys, self.values = key_buffer[..., :end, :], value_buffer[..., :end, :]
        return self.keys, self.values

    def reset(self) -> None:
        super().reset()
        self._buffers, self._length = None, 0
        if self.is_initialized:
            self.keys = self.keys[..., :0, :]
            self.values = self.values[..., :0, :]


def reserved_cache(model, capacity: int) -> Cache:
    """A cache for `model.generate` holding up to `capacity` tokens per row without copies."""
    layers = model.config.get_text_config(decoder=True).num_hidden_layers
    return Cache(layers=[ReservedLayer(capacity) for _ in range(layers)])


def reserved_cache_kwargs(model, capacity: int) -> dict:
    """`generate` keyword for a reserved cache: `cache` where transformers renamed `past_key_values`."""
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    return {name: reserved_cache(model, capacity)}


__all__ = ["ReservedLayer", "reserved_cache", "reserved_cache_kwargs"]
