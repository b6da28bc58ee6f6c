"""What `report` reads from a run directory, each file checked against the shape the report needs.

A damaged or hand-edited file is one line naming it and the field, never a traceback halfway through
the plots; a history ending in a partial line (a process killed while appending) is read up to it.
"""

from __future__ import annotations

from pathlib import Path

from ropesearch.validate import ListOf, MapOf, conform, damaged, read_json, read_json_lines

FIX = "restore it from the run, or remove it to leave its section out"
NUMBER, TEXT = float, (str, None)

SEARCH_CONFIG = {"model?": TEXT, "data?": TEXT, "target_length?": (int, None), "objective?": TEXT,
                 "space?": {"name?": TEXT}, "seed?": (int, None), "windows?": ListOf(str)}
PROVENANCE = {"scores?": MapOf(NUMBER), "baselines?": (MapOf(NUMBER), None),
              "full_evaluations?": (int, None)}
PROGRESS = ListOf({"full_evals": int, "screen_evals": int, "elapsed": NUMBER, "evaluator_seconds?": NUMBER,
                   "gpu_seconds?": NUMBER, "best": MapOf(NUMBER, nonempty=True)})
HISTORY_RECORD = {"genome?": ListOf(NUMBER), "origin?": str, "fidelity?": str, "metrics?": (MapOf((NUMBER, None)), None)}
FINETUNE_HISTORY = ListOf({"step": int, "loss": NUMBER, "length": int, "seconds": NUMBER}, nonempty=True)
PASSKEY = MapOf({"lengths": ListOf(int, nonempty=True), "depths": ListOf(NUMBER, nonempty=True),
                 "accuracy": MapOf(NUMBER)}, nonempty=True)
LM_EVAL = MapOf({"results": MapOf(dict)}, nonempty=True)
PPL_TABLE = {"ppl": MapOf(MapOf((NUMBER, None))), "lengths": ListOf(int, nonempty=True), "windows?": ListOf(str),
             "scales?": (MapOf((NUMBER, str, None)), None), "original_context?": (int, None), "environment?": dict}


def _read(path: Path, what: str, schema, expect=dict):
    document = read_json(path, what, FIX, expect=expect)
    conform(document, schema, f"{what} {path}", FIX)
    return document


def search_config(path: Path) -> dict:
    return _read(path, "search config", SEARCH_CONFIG) if path.exists() else {}


def best_document(path: Path) -> dict:
    """best.json as a factor file (its factors are checked by factors_from_dict) with its provenance."""
    document = read_json(path, "found factors", FIX, expect=dict)
    conform(document, {"provenance": PROVENANCE}, f"found factors {path}", FIX)
    return document


def progress(path: Path) -> list[dict]:
    return _read(path, "search progress", PROGRESS, expect=list) if path.exists() else []


def history(path: Path) -> tuple[list[dict], bool]:
    """The complete records of history.jsonl, and whether a partial last line was left out."""
    if not path.exists():
        return [], False
    records, partial = read_json_lines(path, "search history", FIX)
    for number, record in enumerate(records, 1):
        conform(record, HISTORY_RECORD, f"search history {path}, record {number}", FIX)
    return records, partial


def finetune_history(path: Path) -> list[dict]:
    return _read(path, "fine-tuning history", FINETUNE_HISTORY, expect=list) if path.exists() else []


def table(path: Path) -> dict | None:
    """A results file (passkey, RULER, lm-eval, perplexity) checked for what its section reads; None for
    JSON files of other kinds. The report leaves a damaged one out and says why (a folder may hold other
    tools' JSON files beside ours)."""
    document = read_json(path, "results file", FIX)
    if not isinstance(document, dict):
        return None
    source = f"results file {path}"
    if isinstance(document.get("passkey"), dict) and document["passkey"]:
        conform(document["passkey"], PASSKEY, source, FIX, "passkey")
        for name, result in document["passkey"].items():
            missing = [f"{n}@{d:g}" for n in result["lengths"] for d in result["depths"]
                       if f"{n}@{d:g}" not in result["accuracy"]]
            if missing:
                raise damaged(source, f"field passkey.{name}.accuracy has no entry {missing[0]!r}", FIX)
    elif isinstance(document.get("lm_eval"), dict) and document["lm_eval"]:
        conform(document["lm_eval"], LM_EVAL, source, FIX, "lm_eval")
    elif "ppl" in document and "lengths" in document and not isinstance(document.get("ruler"), dict):
        conform(document, PPL_TABLE, source, FIX)
        for name, row in document["ppl"].items():
            missing = [n for n in document["lengths"] if str(n) not in row]
            if missing:
                raise damaged(source, f"field ppl.{name} has no value at length {missing[0]}", FIX)
    if "environment" in document and not isinstance(document["environment"], dict):
        raise damaged(source, "field environment must be a JSON object", FIX)
    return document
