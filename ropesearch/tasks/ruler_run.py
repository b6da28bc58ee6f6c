"""`ropesearch ruler` as a function: the RULER-style suite for several factor sets, resumable.

`run_ruler(RulerConfig(...), json_out, resume=True)` keeps the factor sets, lengths and tasks a
results file already holds and runs the rest, writing the file after every cell; with nothing
left it returns the saved results without loading the model. The CLI and the pipeline call it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ropesearch.errors import RopesearchError
from ropesearch.tasks.ruler import answer_cap, check_lengths, parse_tasks
from ropesearch.tasks.ruler_eval import (Answerer, check_resumable, check_rope, check_ruler_json, check_settings,
                                            pending_tasks, record_devices, rope_record, ruler_results)
from ropesearch.tasks.ruler_prefetch import ruler_suite
from ropesearch.evaluate.comparison import Comparison
from ropesearch.evaluate.runs import environment, parse_lengths, save_json
from ropesearch.validate import read_json


@dataclass(frozen=True)
class RulerConfig:
    """What one RULER run compares and how: `ropesearch ruler`'s options (see its --help)."""

    compare: Comparison
    lengths: str | Sequence[int]
    tasks: str | Sequence[str] = "all"
    samples: int = 20
    seed: int = 0
    data: str = "builtin"
    text_field: str = "text"
    max_batch: int | None = None
    max_new_tokens: int | None = None
    prefetch: bool | None = None  # None: on a GPU


@dataclass(frozen=True)
class RulerRun:
    """Results by factor set (`format_ruler` prints them), and whether anything ran (False: every
    cell was in the results file already, and no model was loaded)."""

    results: dict[str, dict]
    ran: bool


def run_ruler(config: RulerConfig, json_out: str | Path | None = None, resume: bool = False, log=print,
              command: str = "") -> RulerRun:
    """The suite for every factor set; `json_out` gets the results after every cell, `log` a line per
    factor set and length."""
    c = config
    lengths, tasks = check_lengths(parse_lengths(c.lengths)), parse_tasks(c.tasks)
    max_new_tokens = answer_cap(c.max_new_tokens, tasks)  # kept as none where it caps no task
    saved = _saved(c, json_out, resume, tasks, max_new_tokens)
    names = c.compare.names()
    if names and all(str(n) in saved.get("ruler", {}).get(name, {}).get("average", {}) for name in names for n in lengths):
        return RulerRun(saved["ruler"], ran=False)
    loaded, tokenizer = c.compare.load()
    document = _document(c, saved, loaded, command)
    sets = c.compare.sets(loaded, max(lengths))
    ropes = {name: rope_record(factors) for name, factors in sets.items()}
    for name in sets:
        if name in document["ruler"]:
            check_rope(document["ruler"][name], ropes[name], repr(name))  # its other settings: checked in _saved

    def save(name, length):
        def write(result):
            record_devices({name: result}, document["environment"]["device"], [length])
            document["ruler"][name] = result
            if json_out:
                save_json(document, json_out)
        return write

    on_gpu = next(loaded.parameters()).device.type == "cuda"
    # a row's memory, measured once per length (its BatchSizer), serves every factor set
    answerer = Answerer(loaded, tokenizer, c.max_batch, max_new_tokens)
    with ruler_suite(tokenizer, c.data, text_field=c.text_field, seed=c.seed,
                     prefetch=on_gpu if c.prefetch is None else c.prefetch) as suite:
        for index, length in enumerate(lengths):  # every factor set at one length, then the next: samples made once
            # a worker (prefetch) builds this length's prompts, then the next length's meanwhile
            suite.plan((task, n, c.samples) for n in lengths[index:index + 2]
                       for task in pending_tasks(document["ruler"], sets, tasks, n))
            for name, factors in sets.items():
                document["ruler"][name] = ruler_results(answerer, factors, suite, tasks, [length], c.samples,
                                                        document["ruler"].get(name), on_cell=save(name, length),
                                                        name=f"{name} {length}", rope=ropes[name])
                log(f"{name:>24}  {length}: {100 * document['ruler'][name]['average'][str(length)]:.1f}")
    return RulerRun(document["ruler"], ran=True)


def _settings(c: RulerConfig) -> dict:
    return {"model": c.compare.model, "data": c.data, "seed": c.seed, "text_field": c.text_field}


def _saved(c: RulerConfig, json_out, resume: bool, tasks: list[str], max_new_tokens: int | None) -> dict:
    """The results file to continue ({} for a new one), checked against this run's settings."""
    if resume and not json_out:
        raise RopesearchError("--resume needs --json (the results to continue)")
    if json_out and not resume and Path(json_out).is_file():
        raise RopesearchError(f"--json {json_out} exists: add --resume to add to its results, or give another --json")
    saved = (read_json(json_out, "RULER results", "run without --resume and another --json")
             if resume and Path(json_out).is_file() else {})
    check_ruler_json(saved, json_out)
    check_settings(_settings(c), saved)
    for name, result in saved.get("ruler", {}).items():  # one JSON, one setting: its tables share rows
        check_resumable(result, tasks, c.samples, max_new_tokens, name=repr(name))
    return saved


def _document(c: RulerConfig, saved: dict, loaded, command: str) -> dict:
    """The results file as this run writes it: the saved cells, the settings, where it runs."""
    document = {"ruler": dict(saved.get("ruler", {})), **_settings(c), "command": command,
                "environment": environment(loaded)}
    if saved.get("environment", {}).get("dtype") not in (None, document["environment"]["dtype"]):
        raise RopesearchError(f"--resume: the JSON's results ran in {saved['environment']['dtype']}, this run in "
                              f"{document['environment']['dtype']}: give --dtype {saved['environment']['dtype']}, "
                              "or another --json")
    if saved.get("environment"):  # cells from before devices were kept per cell ran where the file last did
        record_devices(document["ruler"], saved["environment"]["device"])
    return document
