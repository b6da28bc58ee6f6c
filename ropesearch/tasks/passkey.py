"""Passkey retrieval: a random 5-digit key hidden in filler text at a chosen depth, asked for at the end.

The standard long-context test (Mohtashami & Jaggi; LongRoPE's evaluation): greedy
generation, exact match of the key. Prompts are built to an exact token length.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ropesearch.data.tokens import tokenize
from ropesearch.errors import RopesearchError
from ropesearch.rope import RopeFactors
from ropesearch.rope.patching import patch_rope

INTRO = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
         "I will quiz you about the important information there.")
FILLER = " The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NEEDLE = " The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = " What is the pass key? The pass key is"


@dataclass(frozen=True)
class PasskeyPrompt:
    ids: np.ndarray
    key: str
    depth: float


def passkey_prompt(tokenizer, length: int, depth: float, key: str, haystack: np.ndarray | None = None) -> PasskeyPrompt:
    """A prompt of exactly `length` tokens with the key at `depth` (0 = start, 1 = end) of the filler.

    `haystack`: token ids of real text to hide the key in instead of the repeated filler
    sentences (its first tokens are used).
    """
    intro, filler = tokenize(tokenizer, INTRO), tokenize(tokenizer, FILLER)
    needle, question = tokenize(tokenizer, NEEDLE.format(key=key)), tokenize(tokenizer, QUESTION)
    room = length - len(intro) - len(needle) - len(question)
    if room < len(filler):
        raise RopesearchError(f"passkey length {length} is too short for the prompt (needs > {length - room + len(filler)})")
    if haystack is None:
        haystack = np.tile(filler, room // len(filler) + 1)[:room]
    elif len(haystack) < room:
        raise RopesearchError(f"the passkey haystack holds {len(haystack)} tokens, {room} are needed at length {length}")
    else:
        haystack = haystack[:room]
    at = int(round(depth * room))
    ids = np.concatenate([intro, haystack[:at], needle, haystack[at:], question]).astype(np.int64)
    return PasskeyPrompt(ids, key, depth)


def _answer(tokenizer, generated: torch.Tensor) -> str:
    text = tokenizer.decode(generated, skip_special_tokens=True)
    match = re.search(r"\d+", text)
    return match.group(0) if match else text.strip()


ANSWER_TOKENS = 8  # new tokens generated for the answer: the key is 5 digits


def passkey_accuracy(model, tokenizer, factors: RopeFactors | None, lengths: Sequence[int], depths: Sequence[float],
                     trials: int = 5, seed: int = 0, haystack: np.ndarray | None = None, previous: dict | None = None,
                     on_cell: Callable[[dict], None] | None = None) -> dict:
    """Accuracy per (length, depth) over `trials` random keys; `factors` None runs the model unpatched.

    The prompt is filled in one forward pass (a KV cache of the whole length: about 23 GB at
    1M tokens for SmolLM2-135M), then the answer is generated greedily with the factors
    pinned for prompt plus answer. `haystack`: real text instead of the filler sentences.
    `previous`: an earlier (maybe partial) result of the same call, whose trials are kept (the
    keys stay those of an uninterrupted run); `on_cell(result)` after each new trial, to save it.
    """
    rng = np.random.default_rng(seed)
    device = next(model.parameters()).device
    results = {"lengths": list(lengths), "depths": list(depths), "trials": trials, "accuracy": {}, "answers": {}}
    if previous and (previous.get("trials"), previous.get("depths")) != (trials, list(depths)):
        raise RopesearchError(f"passkey: the earlier results were made with {previous.get('trials')} trials at depths "
                              f"{previous.get('depths')}, not {trials} at {list(depths)}: give the same, or start anew")
    jobs = [(n, d) for n in lengths for d in depths]
    cells = {f"{n}@{d:g}" for n, d in jobs}
    done = {cell for cell in (previous or {}).get("accuracy", {}) if cell in cells}
    kept = sum(min(trials, len(v)) for c, v in (previous or {}).get("answers", {}).items() if c in cells)
    bar = tqdm(total=len(jobs) * trials - kept, desc="passkey", disable=None, leave=False)  # shown on a terminal
    patch = patch_rope(model, factors) if factors is not None else None
    try:
        for length, depth in jobs:
            cell = f"{length}@{depth:g}"
            # trials of an interrupted cell, or all of a finished one, are kept; their keys are drawn
            # all the same, so every later trial gets the key of an uninterrupted run
            answers = [list(pair) for pair in (previous or {}).get("answers", {}).get(cell, [])][:trials]
            for _ in answers:
                rng.integers(10_000, 100_000)
            if patch is not None and len(answers) < trials:
                patch.pin(length + ANSWER_TOKENS)
            for _ in range(trials - len(answers)):
                key = str(int(rng.integers(10_000, 100_000)))
                prompt = passkey_prompt(tokenizer, length, depth, key, haystack)
                ids = torch.from_numpy(prompt.ids)[None].to(device)
                with torch.no_grad():
                    output = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=ANSWER_TOKENS,
                                            do_sample=False, pad_token_id=tokenizer.eos_token_id)
                answers.append([key, _answer(tokenizer, output[0, ids.shape[1]:])])
                results["answers"][cell] = answers
                bar.update(1)
                if on_cell is not None and len(answers) < trials:
                    on_cell(results)  # one trial at 1M tokens is ~100 s of prefill: keep each
            results["answers"][cell] = answers
            results["accuracy"][cell] = sum(answer == key for key, answer in answers) / trials
            if on_cell is not None and cell not in done:
                on_cell(results)
    finally:
        if patch is not None:
            patch.restore()
        bar.close()
    return results
