"""`ropesearch ruler`: RULER-style tasks x lengths for one factor set, greedy generation, RULER's scoring.

Every sample of one task and length has the same number of tokens (and so have those of tasks with
the same answer budget, such as the eight NIAH tasks), so samples are batched without padding, as
many a call as the GPU's memory holds (measured on the first call). Factors
are pinned to the length (prompt plus answer), as passkey does, so a generation that starts at or
below the original window keeps one factor set throughout.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from dataclasses import asdict, dataclass
from itertools import groupby

import numpy as np
import torch
from tqdm.auto import tqdm

from ropesearch.errors import RopesearchError
from ropesearch.fingerprint import data_fingerprint
from ropesearch.tasks.kv_cache import reserved_cache_kwargs
from ropesearch.evaluate.memory import RowMemory
from ropesearch.evaluate.torch_backend import fastest_attention
from ropesearch.tasks.ruler import TASKS, RulerSample, RulerSuite, answer_cap, score
from ropesearch.rope import RopeFactors
from ropesearch.rope.patching import patch_rope
from ropesearch.tables import aligned

PREDICTION_CHARS = 200  # kept per sample in the JSON, to audit answers (with the sample's score)


class BatchSizer:
    """Samples per generate call. On a GPU the first call at a length runs `first_tokens` worth of
    rows and measures the peak memory a row adds (its KV cache of prompt plus answer and the
    prefill's activations); later calls fill `memory_fraction` of the card. A CUDA out-of-memory
    halves the batch (and remembers it). On a CPU: one sample a call."""

    def __init__(self, model, first_tokens: int = 524_288, memory_fraction: float = 0.85):
        self.device = next(model.parameters()).device
        self.first_tokens = first_tokens
        self.memory = RowMemory(self.device, memory_fraction)
        self.ceiling: dict[int, int] = {}  # lengths where a batch ran out of memory: below that
        self.used: set[int] = set()  # batch sizes that ran since the last clear (results record them)

    def size(self, length: int, remaining: int) -> int:
        if self.device.type != "cuda":
            return 1
        rows = self.memory.rows(length) if length in self.memory.bytes else self.first_tokens // length
        return max(1, min(remaining, rows, self.ceiling.get(length, remaining)))

    def too_many(self, length: int, rows: int) -> None:
        if rows <= 1:
            raise RopesearchError(f"one RULER sample of {length} tokens does not fit this GPU's memory: "
                                  "give shorter --lengths or a larger card")
        self.ceiling[length] = rows // 2
        torch.cuda.empty_cache()


def answer_batches(model, tokenizer, samples: Sequence[RulerSample], max_batch: int | None = None,
                   max_new_tokens: int | None = None, sizer: BatchSizer | None = None) -> Iterator[list[str]]:
    """Greedy continuations of samples with equal prompt tokens and answer budgets (no padding; they
    may come from several tasks), yielded a generate call at a time; `max_new_tokens` caps the
    budget (the prompt keeps RULER's length). `max_batch` fixes the samples per call; otherwise
    `sizer` (default: a new BatchSizer) chooses them."""
    device = next(model.parameters()).device
    sizer = sizer or BatchSizer(model)
    done, length = 0, samples[0].prompt_tokens if samples else 0
    while done < len(samples):
        batch = samples[done:done + (max_batch or sizer.size(length, len(samples) - done))]
        # one batched call: the tokenizer spreads it over the CPU's cores
        ids = tokenizer([s.prompt for s in batch], return_attention_mask=False)["input_ids"]
        for sample, row in zip(batch, ids):
            if len(row) != sample.prompt_tokens:
                raise RopesearchError(f"RULER {sample.task} sample {sample.index}: the tokenizer reads "
                                      f"{len(row)} tokens, generated for {sample.prompt_tokens}")
        tensor = torch.tensor(ids, dtype=torch.long, device=device)
        new_tokens = min(batch[0].max_new_tokens, max_new_tokens or batch[0].max_new_tokens)
        try:
            with torch.no_grad(), fastest_attention(), sizer.memory.measuring(length, len(batch)):
                # cuDNN attention first: the prefill is most of the time
                # keys and values written in place (kv_cache): no copy of the whole cache per token
                output = model.generate(tensor, attention_mask=torch.ones_like(tensor), do_sample=False,
                                        max_new_tokens=new_tokens, pad_token_id=tokenizer.eos_token_id,
                                        **reserved_cache_kwargs(model, length + new_tokens))
        except torch.cuda.OutOfMemoryError:
            if max_batch:
                raise
            sizer.too_many(length, len(batch))
            continue
        sizer.used.add(len(batch))
        done += len(batch)
        yield [tokenizer.decode(row[tensor.shape[1]:], skip_special_tokens=True) for row in output]


def _shape(task: str, length: int, max_new_tokens: int | None) -> tuple[int, int]:
    """Prompt tokens and answer budget of a task's samples at a length (RULER's convention), known
    before they are made."""
    budget = TASKS[task].max_new_tokens
    return length - budget, min(budget, max_new_tokens or budget)


class _Queue(Sequence):
    """The samples of neighbouring tasks as one sequence, each task's made (or waited for, where a
    worker builds them) when a generate call first reaches it: the GPU starts on the first task's."""

    def __init__(self, tasks: Sequence[str], count: int, cases: Callable[[str], list[RulerSample]]):
        self.tasks, self.count, self.cases = list(tasks), count, cases

    def __len__(self) -> int:
        return len(self.tasks) * self.count

    def __getitem__(self, item):
        if isinstance(item, slice):
            return [self[i] for i in range(*item.indices(len(self)))]
        if not -len(self) <= item < len(self):
            raise IndexError(item)
        task, index = divmod(item % len(self), self.count)
        return self.cases(self.tasks[task])[index]


@dataclass
class Answerer:
    """What answers RULER prompts: the model and tokenizer, `max_batch` samples a generate call
    (None: as many as fit, which `sizer` finds; one BatchSizer serves every factor set of a run),
    and at most `max_new_tokens` new tokens (None: each task's own budget)."""

    model: Any
    tokenizer: Any
    max_batch: int | None = None
    max_new_tokens: int | None = None
    sizer: BatchSizer | None = None

    def __post_init__(self):
        self.sizer = self.sizer or BatchSizer(self.model)


def ruler_cell(answerer: Answerer, factors: RopeFactors | None, suite: RulerSuite, tasks: Sequence[str],
               length: int, samples: int, bar=None, on_task: Callable[[str, float, list], None] | None = None) -> dict:
    """Scores of `tasks` at one length: {"scores": {task: mean}, "predictions": ..., "seconds": s};
    `on_task(task, score, predictions)` as each task's last answer comes, to save it. Neighbouring
    tasks whose prompts have the same tokens and answer budget (RULER's eight NIAH tasks) share
    generate calls: at short lengths a call holds more samples than one task has."""
    model, max_new_tokens, sizer = answerer.model, answerer.max_new_tokens, answerer.sizer
    patch = patch_rope(model, factors) if factors is not None else None
    started = time.perf_counter()
    scores, predictions = {}, {}
    try:
        if patch is not None:
            patch.pin(length)  # prompt + new tokens never exceed the length
        sizer.used.clear()  # from here: this cell's batch sizes
        suite.plan((task, length, samples) for task in tasks)  # a worker builds them ahead, in answering order

        def cases(task: str) -> list[RulerSample]:  # made once per length: the suite keeps them
            return suite.samples(task, length, samples)

        def finish(task: str, outputs: list[str]) -> None:
            values = [score(c.metric, o, c.answers) for c, o in zip(cases(task), outputs)]
            scores[task] = float(np.mean(values))
            # the score of the whole answer: the kept characters alone may miss a late reference
            predictions[task] = [[c.answers, o[:PREDICTION_CHARS], v] for c, o, v in zip(cases(task), outputs, values)]
            if on_task is not None:
                on_task(task, scores[task], predictions[task])
            if bar is not None:
                bar.update(1)

        for _, group in groupby(tasks, key=lambda task: _shape(task, length, max_new_tokens)):
            group, outputs = list(group), []
            queue = _Queue(group, samples, cases)
            for answers in answer_batches(model, answerer.tokenizer, queue, answerer.max_batch, max_new_tokens, sizer):
                outputs += answers
                while group and len(outputs) >= samples:  # the group's next task is answered
                    task = group.pop(0)
                    finish(task, outputs[:samples])
                    outputs = outputs[samples:]
    finally:
        if patch is not None:
            patch.restore()
    return {"scores": scores, "predictions": predictions, "seconds": time.perf_counter() - started}


def ruler_results(answerer: Answerer, factors: RopeFactors | None, suite: RulerSuite, tasks: Sequence[str],
                  lengths: Sequence[int], samples: int, previous: dict | None = None,
                  on_cell: Callable[[dict], None] | None = None, name: str = "", rope: dict | None = None) -> dict:
    """Tasks x lengths for one factor set; scores present in `previous` (same settings) are kept, and
    `on_cell(result)` is called after each task, so a killed run loses at most the generate call it
    was in (which may hold several tasks' samples: see ruler_cell).
    A length's average and its place in "lengths" come when all its tasks are scored; "batch_sizes"
    records the samples per generate call (bf16 greedy answers may depend on it). `rope`
    (rope_record) is kept with the results."""
    sizer = answerer.sizer
    result = previous or {"lengths": [], "tasks": list(tasks), "samples": samples,
                          "max_new_tokens": answerer.max_new_tokens,
                          "scores": {t: {} for t in tasks},
                          "average": {}, "predictions": {t: {} for t in tasks}, "seconds": {}}
    if rope is not None:
        result["rope"] = rope
    todo = [n for n in lengths if str(n) not in result["average"]]
    left = {n: [t for t in tasks if str(n) not in result["scores"][t]] for n in todo}
    bar = tqdm(total=sum(len(v) for v in left.values()), desc=f"ruler {name}".strip(),
               disable=None, leave=False)  # shown on a terminal
    try:
        for length in todo:
            key, started = str(length), time.perf_counter()
            earlier = result["seconds"].get(key, 0.0)  # spent on this length's kept tasks, in earlier runs

            def keep(task, value, outputs, key=key, started=started, earlier=earlier):
                result["scores"][task][key] = value
                result["predictions"][task][key] = outputs
                result["seconds"][key] = earlier + time.perf_counter() - started
                sizes = set(result.setdefault("batch_sizes", {}).get(key, [])) | sizer.used
                result["batch_sizes"][key] = sorted(sizes)
                if on_cell is not None:
                    on_cell(result)

            ruler_cell(answerer, factors, suite, left[length], length, samples, bar, on_task=keep)
            result["average"][key] = float(np.mean([result["scores"][t][key] for t in tasks]))
            result["seconds"][key] = earlier + time.perf_counter() - started
            result["lengths"] = sorted(set(result["lengths"]) | {length})
            if on_cell is not None:
                on_cell(result)
    finally:
        bar.close()
    return result


def pending_tasks(results: dict[str, dict], names, tasks: Sequence[str], length: int) -> list[str]:
    """The tasks some factor set of `names` has not scored at `length` yet (in `results`, by name)."""
    key = str(length)
    return [task for task in tasks
            if any(key not in results.get(name, {}).get("scores", {}).get(task, {}) for name in names)]


def check_settings(settings: dict, saved: dict) -> None:
    """A --resume may only add to results made with the same model, data, seed and text field (a
    setting the JSON does not hold, written before it was kept, is taken as given)."""
    for key, value in settings.items():
        if saved and key in saved and saved[key] != value:
            raise RopesearchError(f"--resume: the JSON was made with {key} {saved[key]!r}, not {value!r}: "
                                  "give the same settings, or another --json")


def check_ruler_json(saved: dict, path) -> None:
    """The shape `--resume` builds on, checked before any work: a damaged file is one error."""
    def damaged(what: str) -> RopesearchError:
        return RopesearchError(f"RULER results {path} are damaged ({what}): run without --resume and another --json")

    if not isinstance(saved, dict) or not isinstance(saved.get("ruler", {}), dict):
        raise damaged("no 'ruler' table")
    for name, result in saved.get("ruler", {}).items():
        if not isinstance(result, dict):
            raise damaged(f"{name!r} is not a table")
        for key, kind in (("tasks", list), ("samples", int), ("lengths", list), ("scores", dict), ("average", dict),
                          ("predictions", dict), ("seconds", dict)):
            if not isinstance(result.get(key), kind):
                raise damaged(f"{name!r} has no {key} {'list' if kind is list else 'table' if kind is dict else 'count'}")
        numbers = [result["average"]] + [result["scores"].get(task) for task in result["tasks"]]
        if not all(isinstance(v, dict) and all(isinstance(x, (int, float)) for x in v.values()) for v in numbers):
            raise damaged(f"{name!r} has a score that is not a number")
        if any(not isinstance(result["predictions"].get(task), dict) for task in result["tasks"]):
            raise damaged(f"{name!r} lacks the answers of a task")
    if len({(tuple(r["tasks"]), r["samples"]) for r in saved.get("ruler", {}).values()}) > 1:
        raise damaged("its columns ran other --tasks or --samples, and their tables do not line up")


def rope_record(factors: RopeFactors | None) -> dict:
    """What a column ran with, kept beside its results so that a resume gives the same: the method,
    the target context and a fingerprint of every factor (a changed --scale or factor file shows)."""
    if factors is None:
        return {"method": "none"}

    def rounded(value):  # the same factors on any machine: no last-bit differences
        if isinstance(value, float):
            return float(f"{value:.9g}")
        if isinstance(value, (list, tuple)):
            return [rounded(v) for v in value]
        if isinstance(value, dict):
            return {k: rounded(v) for k, v in value.items()}
        return value

    return {"method": factors.method, "target_context": factors.target_context,
            "fingerprint": data_fingerprint(rounded(asdict(factors)))}


def record_devices(results: dict[str, dict], device: str, lengths: Sequence[int] | None = None) -> None:
    """Note `device` against each factor set's `lengths` (default: the lengths it has time for, for
    results saved before devices were recorded per cell), so that cells run on different machines
    over resumed runs each name theirs: {"devices": {length: [device, ...]}}."""
    for result in results.values():
        devices = result.setdefault("devices", {})
        for key in map(str, lengths) if lengths is not None else result.get("seconds", {}):
            if lengths is not None or key not in devices:
                devices[key] = sorted(set(devices.get(key, [])) | {device})


def check_resumable(previous: dict, tasks: Sequence[str], samples: int, max_new_tokens: int | None = None,
                    name: str = "") -> None:
    """A factor set's results may only gain lengths if made with the same tasks, samples and budgets."""
    cap = previous.get("max_new_tokens")  # as it acts on these tasks (a damaged one as it is: refused below)
    held = {"--tasks": previous.get("tasks"), "--samples": previous.get("samples"),
            "--max-new-tokens": answer_cap(cap, tasks) if isinstance(cap, int) else cap}
    asked = {"--tasks": list(tasks), "--samples": samples, "--max-new-tokens": answer_cap(max_new_tokens, tasks)}
    shown = lambda v: ",".join(v) if isinstance(v, list) else "none" if v is None else v  # noqa: E731
    for option in held:
        if held[option] != asked[option]:
            raise RopesearchError(f"--resume: {name or 'a factor set'} in the JSON has {option} {shown(held[option])}, "
                                  f"this run {shown(asked[option])} (one JSON holds one setting): give the same, "
                                  "or another --json")


def check_rope(previous: dict, rope: dict, name: str) -> None:
    """A factor set's results may only gain lengths if made with the same factors, where the JSON
    records them (rope_record)."""
    if previous.get("rope") not in (None, rope):
        def said(r):
            return "the unscaled model" if r["method"] == "none" else \
                f"{r['method']} to {r['target_context']} tokens (factors {r['fingerprint']})"
        raise RopesearchError(f"--resume: {name} in the JSON ran with {said(previous['rope'])}, this run gives "
                              f"{said(rope)}: give the same --scale or factor file, or another --json")


def _sample_scores(result: dict, task: str, key: str) -> list[tuple[list, float]]:
    """(answers, score) per sample; rows saved before scores were kept are rescored from their kept
    characters, which may miss a reference written past them."""
    return [(row[0], row[2] if len(row) > 2 else score(TASKS[task].metric, row[1], row[0]))
            for row in result["predictions"][task][key]]


def paired_difference(mine: dict, other: dict, length: int) -> tuple[float, float] | None:
    """How much `mine` beats `other` on the RULER average at `length`, with its standard error:
    both ran the same samples (same suite and seed), so it is the paired difference of each sample's
    score, averaged per task and over tasks (the difference itself from the saved task scores). None
    when a task is missing or the samples differ."""
    key, tasks = str(length), mine["tasks"]
    if other.get("tasks") != tasks or any(key not in r["predictions"].get(t, {}) for r in (mine, other) for t in tasks):
        return None
    variances = []
    for task in tasks:
        a, b = _sample_scores(mine, task, key), _sample_scores(other, task, key)
        if len(a) != len(b) or any(x[0] != y[0] for x, y in zip(a, b)):
            return None
        diffs = np.array([x[1] - y[1] for x, y in zip(a, b)])
        variances.append(diffs.var(ddof=1) / len(diffs) if len(diffs) > 1 else 0.0)
    difference = np.mean([mine["scores"][t][key] - other["scores"][t][key] for t in tasks])
    return float(difference), float(np.sqrt(np.sum(variances)) / len(tasks))


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
        blocks.append(f"{title}:\n" + aligned(header, rows, rule=False))
    return "\n\n".join(blocks)


__all__ = ["answer_batches", "check_resumable", "check_rope", "check_ruler_json", "check_settings", "format_ruler", "paired_difference", "pending_tasks", "record_devices", "rope_record", "ruler_cell",
           "ruler_results"]
