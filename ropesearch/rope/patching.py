"""Apply factor sets to a loaded transformers model in place, and restore it exactly.

Works for every model whose rotary module follows transformers' standard layout
(Llama, Mistral, Qwen2, Qwen3, Phi-3, ...): a module holding `inv_freq` and
`attention_scaling` whose `forward(x, position_ids)` returns cos and sin of shape
[batch, seq, rotary_dim]. Patching replaces that forward on the instance with one that
reads `RopeTables`, so several factor sets can score several batch rows in one pass;
restoring deletes the replacement and the module is as it was, buffers untouched.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
from torch import nn

from ropesearch.errors import RopesearchError
from ropesearch.rope.factors import RopeFactors
from ropesearch.rope.tables import RopeTables


def _architecture(model: nn.Module) -> str:
    archs = getattr(getattr(model, "config", None), "architectures", None)
    return archs[0] if archs else type(model).__name__


def rotary_modules(model: nn.Module) -> list[nn.Module]:
    """The model's rotary embedding modules; a clear error if it has none we can patch."""
    found = [
        m
        for m in model.modules()
        if isinstance(getattr(m, "inv_freq", None), torch.Tensor) and hasattr(m, "attention_scaling")
    ]
    if not found:
        raise RopesearchError(
            f"{_architecture(model)} has no rotary embedding in transformers' standard layout "
            "(a module with inv_freq and attention_scaling): ropesearch cannot patch it"
        )
    for module in found:
        rope_type = getattr(module, "rope_type", "default")
        if isinstance(rope_type, dict):
            raise RopesearchError(
                f"{_architecture(model)} uses a different RoPE per layer type ({', '.join(rope_type)}): not supported"
            )
        params = list(inspect.signature(type(module).forward).parameters)
        if params[1:3] != ["x", "position_ids"]:
            raise RopesearchError(
                f"{_architecture(model)}'s {type(module).__name__}.forward takes ({', '.join(params[1:])}), "
                "not (x, position_ids): not transformers' standard rotary layout, cannot patch"
            )
    return found


class RopePatch:
    """Factor sets installed on a model: one set for every row, or one per batch row.

    Use as a context manager, or call `restore()`. `set_factors()` swaps the tables of a
    patched model without reinstalling anything (the search does this per batch).
    """

    def __init__(self, model: nn.Module, factors: RopeFactors | Sequence[RopeFactors]):
        self.model = model
        self.modules = rotary_modules(model)
        self.tables: RopeTables | None = None
        self.active = False
        self.set_factors(factors)
        self._install()

    def set_factors(self, factors: RopeFactors | Sequence[RopeFactors]) -> None:
        factor_sets = [factors] if isinstance(factors, RopeFactors) else list(factors)
        inv_freq = self.modules[0].inv_freq
        expected = inv_freq.shape[-1]
        got = factor_sets[0].base.n_factors if factor_sets else 0
        if got != expected:
            raise RopesearchError(
                f"the factors have {got} values per set but {_architecture(self.model)} rotates "
                f"{2 * expected} dims ({expected} factors): they were made for another model"
            )
        self.tables = RopeTables(factor_sets, device=inv_freq.device)

    def pin(self, length: int | None) -> None:
        """Choose short/long factors as if every sequence were at least `length` tokens (None: by
        the sequence itself). Generation pins prompt + new tokens, as the evaluator scores a window."""
        self.tables.pinned_length = length

    def _install(self) -> None:
        for module in self.modules:
            if "forward" in vars(module):
                raise RopesearchError("this model is already patched: restore the earlier patch first")
        patch = self

        def forward(x: torch.Tensor, position_ids: torch.Tensor):
            with torch.no_grad():
                return patch.tables.cos_sin(position_ids.to(x.device), x.dtype, x.shape[0])

        for module in self.modules:
            module.forward = forward
        self.active = True

    def restore(self) -> None:
        if self.active:
            for module in self.modules:
                del module.forward
            self.active = False

    def __enter__(self) -> RopePatch:
        return self

    def __exit__(self, *exc) -> None:
        self.restore()


def patch_rope(model: nn.Module, factors: RopeFactors | Sequence[RopeFactors]) -> RopePatch:
    """Install `factors` on `model` (one set, or one per batch row); returns the patch to restore."""
    return RopePatch(model, factors)
