"""`ropesearch ruler`: RULER-style tasks x lengths for one factor set, greedy generation, RULER's scoring.

Every sample of one task and length has the same number of tokens, so samples are batched
without padding. Factors are pinned to the length (prompt plus answer), as passkey does, so a
generation that starts at or below the original window keeps one factor set throughout.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ropesearch.errors import RopesearchError
from ropesearch.evaluate.ruler import RulerSample, RulerSuite, score
from ropesearch.rope import RopeFactors, patch_rope

PREDICTION_CHARS = 200  # kept per sample in the JSON, to audit answers


def default_batch(model, length: int) -> int:
    """Samples per generate call: as many as fit 512k tokens on a GPU (the KV cache grows with it), 1 on CPU."""
    device = next(model.parameters()).device
    return max(1, 524_288 // length) if device.type == "cuda" else 1


def generate_answers(model, tokenizer, samples: Sequence[RulerSample], max_batch: int,
                     max_new_tokens: int | None = None) -> list[str]:
    """Greedy continuations of samples of one task and length (equal token counts: no padding);
    `max_new_tokens` caps the task's budget (the prompt keeps RULER's length)."""
    device = next(model.parameters()).device
    answers = []
    for start in range(0, len(samples), max_batch):
        batch = samples[start:start + max_batch]
        ids = [tokenizer(s.prompt)["input_ids"] for s in batch]
        for sample, row in zip(batch, ids):
            if len(row) != sample.prompt_tokens:
                raise RopesearchError(f"RULER {sample.task} sample {sample.index}: the tokenizer reads "
                                      f"{len(row)} tokens, generated for {sample.prompt_tokens}")
        tensor = torch.tensor(ids, dtype=torch.long, device=device)
        with torch.no_grad():
            output = model.generate(tensor, attention_mask=torch.ones_like(tensor), do_sample=False,
                                    max_new_tokens=min(batch[0].max_new_tokens, max_new_tokens or batch[0].max_new_tokens),
                                    pad_token_id=tokenizer.eos_token_id)
        answers += [tokenizer.decode(row[tensor.shape[1]:], skip_special_tokens=True) for row in output]
    return answers


def ruler_cell(model, tokenizer, factors: RopeFactors | None, suite: RulerSuite, tasks: Sequence[str],
               length: int, samples: int, max_batch: int | None = None, bar=None,
               max_new_tokens: int | None = None) -> dict:
    """Scores of every task at one length: {"scores": {task: mean}, "predictions": ..., "seconds": s}."""
    patch = patch_rope(model, factors) if factors is not None else None
    started = time.perf_counter()
    scores, predictions = {}, {}
    try:
        if patch is not None:
            patch.pin(length)  # prompt + new tokens never exceed the length
        for task in tasks:
            batch = max_batch or default_batch(model, length)
            cases = suite.samples(task, length, samples)
            outputs = generate_answers(model, tokenizer, cases, batch, max_new_tokens)
            values = [score(case.metric, output, case.answers) for case, output in zip(cases, outputs)]
            scores[task] = float(np.mean(values))
            predictions[task] = [[case.answers, output[:PREDICTION_CHARS]] for case, output in zip(cases, outputs)]
            if bar is not None:
                bar.update(1)
    finally:
        if patch is not None:
            patch.restore()
    return {"scores": scores, "predictions": predictions, "seconds": time.perf_counter() - started}


def ruler_results(model, tokenizer, factors: RopeFactors | None, suite: RulerSuite, tasks: Sequence[str],
                  lengths: Sequence[int], samples: int, max_batch: int | None = None, previous: dict | None = None,
                  on_cell: Callable[[dict], None] | None = None, progress: bool = True, name: str = "",
                  max_new_tokens: int | None = None) -> dict:
    """Tasks x lengths for one factor set; cells present in `previous` (same settings) are kept, and
    `on_cell(result)` is called after each new length so a killed run loses at most one length."""
    result = previous or {"lengths": [], "tasks": list(tasks), "samples": samples, "max_new_tokens": max_new_tokens,
                          "scores": {t: {} for t in tasks},
                          "average": {}, "predictions": {t: {} for t in tasks}, "seconds": {}}
    todo = [n for n in lengths if str(n) not in result["average"]]
    bar = tqdm(total=len(todo) * len(tasks), desc=f"ruler {name}".strip(), disable=None if progress else True,
               leave=False)
    try:
        for length in todo:
            cell = ruler_cell(model, tokenizer, factors, suite, tasks, length, samples, max_batch, bar, max_new_tokens)
            for task in tasks:
                result["scores"][task][str(length)] = cell["scores"][task]
                result["predictions"][task][str(length)] = cell["predictions"][task]
            result["average"][str(length)] = float(np.mean([cell["scores"][t] for t in tasks]))
            result["seconds"][str(length)] = cell["seconds"]
            result["lengths"] = sorted(set(result["lengths"]) | {length})
            if on_cell is not None:
                on_cell(result)
    finally:
        bar.close()
    return result


def check_settings(settings: dict, saved: dict) -> None:
    """A --resume may only add to results made with the same model, data and seed."""
    for key, value in settings.items():
        if saved and saved.get(key) != value:
            raise RopesearchError(f"--resume: the JSON was made with {key} {saved.get(key)!r}, not {value!r}: "
                                  "give the same settings, or another --json")


def check_resumable(previous: dict, tasks: Sequence[str], samples: int, max_new_tokens: int | None = None) -> None:
    """A factor set's results may only gain lengths if made with the same tasks, samples and budgets."""
    if (previous.get("samples"), previous.get("tasks"), previous.get("max_new_tokens")) != (samples, list(tasks),
                                                                                         max_new_tokens):
        raise RopesearchError("--resume: the JSON holds other --tasks, --samples or --max-new-tokens; give the same, "
                              "or another --json")


def format_ruler(results: dict[str, dict]) -> str:
    """One table per task (rows lengths, columns factor sets, scores in %) and the average per length."""
    names = list(results)
    lengths = sorted({int(n) for r in results.values() for n in r["average"]})
    tasks = list(next(iter(results.values()))["tasks"]) if results else []
    blocks = []
    for title, values in [(t, {n: r["scores"][t] for n, r in results.items()}) for t in tasks] + \
            [("average", {n: r["average"] for n, r in results.items()})]:
        header = ["tokens"] + names
        rows = [[str(n)] + [f"{100 * values[name][str(n)]:.1f}" if str(n) in values[name] else "-" for name in names]
                for n in lengths]
        widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
        line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
        blocks.append("\n".join([f"{title}:", line(header)] + [line(r) for r in rows]))
    return "\n\n".join(blocks)


__all__ = ["check_resumable", "check_settings", "format_ruler", "ruler_cell", "ruler_results"]
