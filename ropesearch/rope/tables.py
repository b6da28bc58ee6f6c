"""Factor sets as torch tables, computed with the same float32 arithmetic as transformers' longrope."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ropesearch.errors import RopesearchError
from ropesearch.rope.factors import RopeBase, RopeFactors


def inv_freq(base: RopeBase, factors: torch.Tensor) -> torch.Tensor:
    """θ_i = 1 / (λ_i · rope_theta^(2i/d)) in float32, for factors of shape [..., d/2]."""
    shape = torch.arange(0, base.rotary_dim, 2, dtype=torch.int64, device=factors.device).float() / base.rotary_dim
    return 1.0 / (factors.float() * base.rope_theta**shape)


def common_base(factor_sets: Sequence[RopeFactors]) -> RopeBase:
    if not factor_sets:
        raise RopesearchError("no factor sets given")
    base = factor_sets[0].base
    for other in factor_sets[1:]:
        if other.base != base:
            raise RopesearchError(f"factor sets for different models cannot share a batch: {base} vs {other.base}")
    return base


class RopeTables:
    """Per-row RoPE tables for B factor sets: what a patched rotary module reads.

    long/short inverse frequencies [B, d/2], the original ones [d/2], attention factors
    [B, 1, 1], start tokens [B, 1, 1], and for dynamic-NTK rows their factor.
    """

    def __init__(self, factor_sets: Sequence[RopeFactors], device: torch.device | str = "cpu"):
        self.base = base = common_base(factor_sets)
        as_tensor = lambda rows: torch.tensor(rows, dtype=torch.float64, device=device)  # noqa: E731
        self.long_inv_freq = inv_freq(base, as_tensor([f.long_factor for f in factor_sets]))
        self.short_inv_freq = inv_freq(base, as_tensor([f.short_factor for f in factor_sets]))
        self.original_inv_freq = inv_freq(base, torch.ones(base.n_factors, device=device))
        self.attention = as_tensor([f.attention_factor for f in factor_sets]).float().view(-1, 1, 1)
        self.start_tokens = as_tensor([f.start_tokens for f in factor_sets]).float().view(-1, 1, 1)
        self.batch = len(factor_sets)
        # Decided once here so the forward pass never syncs to ask
        self.switches = any(not f.same_at_all_lengths for f in factor_sets)
        self.has_start_tokens = any(f.start_tokens > 0 for f in factor_sets)
        # Generation: the short/long (and dynamic) choice made for the final length, so a prompt at
        # the original window and the tokens decoded past it use one table (a KV cache built with
        # short factors would otherwise meet queries rotated with long ones). Set by `RopePatch.pin`.
        self.pinned_length: int | None = None
        self.dynamic = [f.dynamic_factor for f in factor_sets]
        self.has_dynamic = any(d is not None for d in self.dynamic)
        if self.has_dynamic:
            self.dynamic_mask = torch.tensor([d is not None for d in self.dynamic], device=device).view(-1, 1)
            self.dynamic_factor = as_tensor([d or 1.0 for d in self.dynamic]).float().view(-1, 1)
            d = base.rotary_dim
            self.dynamic_exponent = torch.arange(0, d, 2, dtype=torch.float32, device=device) / (d - 2)

    def inv_freq_for(self, position_ids: torch.Tensor) -> torch.Tensor:
        """[B, d/2] inverse frequencies for a forward pass over these positions (no host sync)."""
        if not self.switches:
            return self.long_inv_freq
        seq_len = position_ids.max() + 1
        if self.pinned_length is not None:
            seq_len = seq_len.clamp(min=self.pinned_length)
        chosen = torch.where(seq_len > self.base.original_context, self.long_inv_freq, self.short_inv_freq)
        if self.has_dynamic:
            ratio = (self.dynamic_factor * seq_len / self.base.original_context - (self.dynamic_factor - 1)).clamp(min=1)
            dynamic = self.original_inv_freq / ratio**self.dynamic_exponent
            chosen = torch.where(self.dynamic_mask, dynamic, chosen)
        return chosen

    def cos_sin(self, position_ids: torch.Tensor, dtype: torch.dtype, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin [B, T, d] as transformers' rotary modules return them, for a batch of `rows`."""
        if self.batch not in (1, rows):
            raise RopesearchError(
                f"the batch has {rows} rows but {self.batch} factor sets are patched in: give one set, or one per row"
            )
        positions = position_ids[..., None].float()  # [b, T, 1]
        freqs = positions * self.inv_freq_for(position_ids)[:, None, :]
        if self.has_start_tokens:
            # the first n̂ positions keep the original RoPE (LongRoPE's start tokens)
            freqs = torch.where(positions < self.start_tokens, positions * self.original_inv_freq, freqs)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = emb.cos() * self.attention
        sin = emb.sin() * self.attention
        return cos.to(dtype), sin.to(dtype)
