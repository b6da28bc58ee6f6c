"""The vLLM evaluator backend: perplexity from vLLM's prompt logprobs, one engine per model.

The engine starts with a longrope `rope_parameters` override, so every attention layer holds
vLLM's LongRoPE rotary module; a candidate is applied by recomputing that module's cos/sin
table in place (`LLM.apply_model`, with the module's own table function), which is checked
against a freshly built engine in tests_vllm/. Prefix caching is off, so no KV entry made
under one candidate serves another.

vLLM semantics apply: once max_model_len exceeds the original window, vLLM uses long_factor at
every length (transformers switches to short_factor at or below it), and it reads
long_mscale/short_mscale, not attention_factor.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from ropesearch.data.samples import Window
from ropesearch.errors import RopesearchError
from ropesearch.evaluate.results import Score, checked_lengths
from ropesearch.export.transformers_config import rope_parameters
from ropesearch.rope import RopeBase, RopeFactors, methods


def _rewrite_rope_tables(model, long_factor, short_factor, long_mscale, short_mscale) -> int:
    """Runs inside vLLM's worker: recompute every LongRoPE table in place; returns how many."""
    import torch

    count = 0
    for module in model.modules():
        cache = getattr(module, "long_short_cos_sin_cache", None)
        if cache is None or not hasattr(module, "_compute_cos_sin_cache"):
            continue
        short = module._compute_cos_sin_cache(module.original_max_position_embeddings, short_factor, short_mscale)
        long = module._compute_cos_sin_cache(module.max_position_embeddings, long_factor, long_mscale)
        with torch.no_grad():
            cache.copy_(torch.cat([short, long], dim=0).to(device=cache.device, dtype=cache.dtype))
        count += 1
    return count


class VllmEvaluator:
    """Scores factor sets with vLLM prompt logprobs: an Evaluator (results.py), as the torch one."""

    def __init__(self, model_path: str, base: RopeBase, max_length: int, dtype: str = "auto",
                 max_num_batched_tokens: int | None = None, partial_rotary_factor: float | None = None,
                 tokenizer: str | None = None, **engine_options):
        try:
            from vllm import LLM
        except ImportError:
            raise RopesearchError("vLLM is not installed: pip install 'ropesearch[vllm]' (or make install-vllm)") from None
        self.base = base
        self.max_length = max(max_length, base.original_context + 1)  # longest window scored
        engine_length = self.max_length + 1  # vLLM wants room for one generated token after the prompt
        start = methods.longrope(base, np.ones(base.n_factors), target_context=engine_length, attention_factor=1.0)
        overrides = {"rope_parameters": rope_parameters(start, partial_rotary_factor),
                     "max_position_embeddings": engine_length}
        self.llm = LLM(model=model_path, tokenizer=tokenizer or model_path, dtype=dtype,
                       max_model_len=engine_length, hf_overrides=overrides, enable_prefix_caching=False,
                       max_num_batched_tokens=max_num_batched_tokens or engine_length,
                       enforce_eager=True, **engine_options)
        self.applied: tuple | None = None

    def apply(self, factors: RopeFactors) -> None:
        """Install a candidate's tables in the running engine."""
        if factors.start_tokens:
            raise RopesearchError("the vLLM backend cannot apply start tokens (n̂ > 0)")
        if factors.dynamic_factor is not None:
            raise RopesearchError("the vLLM backend cannot apply dynamic NTK (its factors change with length)")
        key = (factors.long_factor, factors.short_factor, factors.attention_factor)
        if key == self.applied:
            return
        counts = self.llm.apply_model(
            lambda model: _rewrite_rope_tables(model, list(factors.long_factor), list(factors.short_factor),
                                               factors.attention_factor, factors.attention_factor))
        if not counts or not all(counts):
            raise RopesearchError("found no vLLM LongRoPE rotary module to rewrite in this model")
        self.applied = key

    def token_logprobs(self, windows: Sequence[Window]) -> list[np.ndarray]:
        """Log-probability of every token after the first, per window, under the applied candidate."""
        from vllm import SamplingParams, TokensPrompt

        prompts = [TokensPrompt(prompt_token_ids=[int(t) for t in w.ids]) for w in windows]
        outputs = self.llm.generate(prompts, SamplingParams(max_tokens=1, prompt_logprobs=0), use_tqdm=False)
        result = []
        for window, output in zip(windows, outputs):
            values = [entry[int(token)].logprob for entry, token in zip(output.prompt_logprobs[1:], window.ids[1:])]
            result.append(np.asarray(values, dtype=np.float64))
        return result

    def close(self) -> None:
        """Lets the engine go (its memory returns when nothing else holds it)."""
        self.llm = None

    def score(self, candidates: Sequence[RopeFactors], windows: Sequence[Window],
              lengths: Sequence[int] | None = None) -> list[Score]:
        """Evaluator.score, with vLLM's prompt logprobs."""
        lengths = checked_lengths(candidates, windows, lengths, longest=self.max_length)
        scores = []
        for factors in candidates:
            started = time.perf_counter()
            self.apply(factors)
            score = Score(factors)
            for window, logprobs in zip(windows, self.token_logprobs(windows)):
                for length in lengths:
                    if window.scored is None:
                        score.add(length, float(-logprobs[: length - 1].sum()), length - 1)
                    else:
                        score.add(length, float(-logprobs[window.scored - 1].sum()), len(window.scored))
            score.seconds = time.perf_counter() - started
            scores.append(score)
        return scores
