"""The torch evaluator: many candidates x windows, scored in batched forward passes.

Rows of a pass are (candidate, window) pairs at one forward length; each row gets its
own factor set through per-row patching, so one pass scores several candidates. The
prefix perplexities of one pass come for free (a causal model's first t losses do not
depend on later tokens), except where a factor set uses other factors at a shorter
length (longrope's short/long switch, dynamic NTK): such lengths get their own pass.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ropesearch.data.samples import Window
from ropesearch.errors import OutOfMemory, RopesearchError
from ropesearch.evaluate.chunking import SequenceChunking, auto_chunk_tokens
from ropesearch.evaluate.loss import scored_nll, token_nll
from ropesearch.evaluate.memory import RowMemory
from ropesearch.evaluate.results import Score, checked_lengths
from ropesearch.rope.factors import RopeFactors
from ropesearch.rope.patching import RopePatch


@dataclass(frozen=True)
class _Job:
    candidate: int
    forward_length: int
    report_lengths: tuple[int, ...]


def plan_jobs(candidates: Sequence[RopeFactors], lengths: Sequence[int]) -> list[_Job]:
    """One job per (candidate, set of lengths that see the same factors): each job is one pass per window."""
    jobs = []
    for index, factors in enumerate(candidates):
        groups: dict[tuple, list[int]] = {}
        for length in sorted(set(lengths)):
            groups.setdefault(tuple(factors.factors_for_length(length)), []).append(length)
        for group in groups.values():
            jobs.append(_Job(index, max(group), tuple(group)))
    return jobs


def fastest_attention():
    """SDPA backends in order of speed on Hopper (cuDNN beat flash by 1.37x at 32k-128k tokens)."""
    if not torch.cuda.is_available():
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    order = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    try:
        return sdpa_kernel(order, set_priority=True)
    except TypeError:  # torch without priorities: let it choose among all
        return contextlib.nullcontext()


class TorchEvaluator:
    """Scores factor sets by perplexity with a loaded transformers causal LM.

    max_batch: most rows per pass (default: as many as fit; on CPU, `cpu_tokens` tokens).
    logits_tokens: positions of logits alive at once across the batch (memory bound of the loss).
    sequence_chunk: tokens per chunk for the decoder layers (all but attention, see `chunking`), used
    when a pass holds more tokens than that; default: chunks whose MLP intermediates take 1 GiB
    (12288 tokens for a Llama-3-8B shape in bf16); 0 turns it off.
    """

    def __init__(self, model, max_batch: int | None = None, logits_tokens: int | None = None,
                 cpu_tokens: int = 16384, memory_fraction: float = 0.85, progress: bool = True,
                 sequence_chunk: int | None = None):
        self.model = model
        self.device = next(model.parameters()).device
        self.on_gpu = self.device.type == "cuda"
        self.max_batch = max_batch
        self.logits_tokens = logits_tokens or (8192 if self.on_gpu else 4096)
        self.sequence_chunk = auto_chunk_tokens(model) if sequence_chunk is None else sequence_chunk
        if self.sequence_chunk < 0:
            raise RopesearchError(f"sequence_chunk must be >= 0 tokens (0: off), got {sequence_chunk}")
        self.cpu_tokens = cpu_tokens
        self.progress = progress
        self.decoder = model.base_model
        self.lm_head = model.get_output_embeddings()
        if self.lm_head is None or self.decoder is model:
            raise RopesearchError(f"{type(model).__name__} is not a causal LM with a separate output head")
        self.row_memory = RowMemory(self.device, memory_fraction)  # one row's GPU memory, by forward length

    # ---- batch size -------------------------------------------------------------------
    def _batch_size(self, length: int, remaining: int) -> int:
        cap = min(remaining, self.max_batch or 256)
        if not self.on_gpu:
            return max(1, min(cap, self.cpu_tokens // length))
        if length not in self.row_memory.bytes:
            return 1  # the first pass at this length measures what a row costs
        return max(1, min(cap, self.row_memory.rows(length)))

    # ---- one pass ---------------------------------------------------------------------
    def _forward_nll(self, ids: torch.Tensor, windows: list[Window]) -> torch.Tensor:
        """Per-token NLL [B, T-1], or for needle windows a [B, T-1] tensor with only scored entries set."""
        chunked = 0 < self.sequence_chunk < ids.numel()
        with torch.no_grad(), fastest_attention(), (
            SequenceChunking(self.model, self.sequence_chunk) if chunked else contextlib.nullcontext()
        ):
            hidden = self.decoder(input_ids=ids, use_cache=False).last_hidden_state
            if windows[0].scored is None:
                return token_nll(hidden, self.lm_head, ids, max(1, self.logits_tokens // ids.shape[0]))
            rows = torch.cat([torch.full((len(w.scored),), r) for r, w in enumerate(windows)]).to(ids.device)
            positions = torch.from_numpy(np.concatenate([w.scored for w in windows])).long().to(ids.device)
            nll = torch.zeros(ids.shape[0], ids.shape[1] - 1, device=ids.device)
            nll[rows, positions - 1] = scored_nll(hidden, self.lm_head, ids, rows, positions)
            return nll

    def _run_pass(self, patch: RopePatch, rows, ids: torch.Tensor, windows: list[Window], candidates) -> torch.Tensor:
        patch.set_factors([candidates[job.candidate] for job, _ in rows])
        with self.row_memory.measuring(ids.shape[1], ids.shape[0]):
            return self._forward_nll(ids, windows)

    # ---- public: the Evaluator contract (results.py) ------------------------------------------
    def close(self) -> None:
        """Nothing to free: the model is the caller's."""

    def score(self, candidates: Sequence[RopeFactors], windows: Sequence[Window],
              lengths: Sequence[int] | None = None) -> list[Score]:
        """Perplexity of every candidate at every length (prefixes of the windows): Evaluator.score."""
        lengths = checked_lengths(candidates, windows, lengths)
        needle = windows[0].scored is not None

        scores = [Score(f) for f in candidates]
        jobs = plan_jobs(candidates, lengths)
        all_ids = torch.from_numpy(np.stack([w.ids for w in windows])).long().to(self.device)
        rows = [(job, w) for job in sorted(jobs, key=lambda j: -j.forward_length) for w in range(len(windows))]
        # Needle windows count only their scored tokens; plain windows every token after the first
        def count(window: int, length: int) -> int:
            return len(windows[window].scored) if needle else length - 1

        patch = RopePatch(self.model, candidates[0])
        bar = tqdm(total=sum(job.forward_length for job, _ in rows), unit="tok", unit_scale=True,
                   desc="scoring", disable=None if self.progress else True, leave=False)
        try:
            done = 0
            while done < len(rows):
                length = rows[done][0].forward_length
                same_length = sum(1 for job, _ in rows[done:] if job.forward_length == length)
                batch = rows[done : done + self._batch_size(length, same_length)]
                batch_windows = [windows[w] for _, w in batch]
                ids = all_ids[[w for _, w in batch], :length]
                started = time.perf_counter()
                nll = self._run_pass(patch, batch, ids, batch_windows, candidates)
                # one transfer per pass: the summed NLL at every reported length
                cumulative = nll.cumsum(dim=1)
                report = sorted({n for job, _ in batch for n in job.report_lengths})
                at = cumulative[:, [n - 2 for n in report]].cpu().numpy()
                seconds = (time.perf_counter() - started) / len(batch)
                for r, (job, w) in enumerate(batch):
                    for column, n in enumerate(report):
                        if n in job.report_lengths:
                            scores[job.candidate].add(n, float(at[r, column]), count(w, n))
                    scores[job.candidate].seconds += seconds
                done += len(batch)
                bar.update(length * len(batch))
        except torch.cuda.OutOfMemoryError:
            raise OutOfMemory(length, len(batch)) from None
        finally:
            patch.restore()
            bar.close()
        return scores
