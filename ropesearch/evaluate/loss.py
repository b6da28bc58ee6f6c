"""Token losses from hidden states, chunked so no [tokens x vocab] logits tensor exists for a whole window."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def token_nll(hidden: torch.Tensor, lm_head: torch.nn.Module, ids: torch.Tensor, chunk: int,
              out: torch.Tensor | None = None) -> torch.Tensor:
    """NLL of every next token: [B, T-1] float32, position t-1 predicting token t.

    Logits exist for `chunk` positions of every row at a time, upcast to float32 for the
    softmax as transformers' own loss does. No host sync: results stay on the device.
    """
    rows, length = ids.shape
    if out is None:
        out = torch.empty(rows, length - 1, dtype=torch.float32, device=ids.device)
    for start in range(0, length - 1, chunk):
        end = min(start + chunk, length - 1)
        logits = lm_head(hidden[:, start:end]).float()
        out[:, start:end] = F.cross_entropy(
            logits.flatten(0, 1), ids[:, start + 1 : end + 1].flatten(), reduction="none"
        ).view(rows, end - start)
    return out


def scored_nll(hidden: torch.Tensor, lm_head: torch.nn.Module, ids: torch.Tensor, rows: torch.Tensor,
               positions: torch.Tensor) -> torch.Tensor:
    """NLL of the tokens at (rows, positions) only: logits for just those positions."""
    logits = lm_head(hidden[rows, positions - 1]).float()
    return F.cross_entropy(logits, ids[rows, positions], reduction="none")


def _chunk_loss_sum(hidden_chunk: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor,
                    bias: torch.Tensor | None) -> torch.Tensor:
    logits = F.linear(hidden_chunk, weight, bias).float()
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum")


def trainable_mean_nll(hidden: torch.Tensor, lm_head: torch.nn.Module, ids: torch.Tensor, chunk: int) -> torch.Tensor:
    """Mean next-token NLL with gradients, logits recomputed per chunk in the backward pass.

    Memory holds one chunk of logits at a time, forward and backward (activation checkpointing
    of the head), where `model(ids, labels=ids)` keeps all of them.
    """
    from torch.utils.checkpoint import checkpoint

    rows, length = ids.shape
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, length - 1, chunk):
        end = min(start + chunk, length - 1)
        total = total + checkpoint(_chunk_loss_sum, hidden[:, start:end], ids[:, start + 1 : end + 1],
                                   lm_head.weight, lm_head.bias, use_reentrant=False)
    return total / (rows * (length - 1))
