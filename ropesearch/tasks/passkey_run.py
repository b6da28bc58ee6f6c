"""`ropesearch passkey` as a function: passkey accuracy by length and depth for several factor sets."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ropesearch.data import build_windows, load_documents, tokenize_documents
from ropesearch.errors import RopesearchError
from ropesearch.tasks.passkey import passkey_accuracy
from ropesearch.evaluate.comparison import Comparison
from ropesearch.evaluate.runs import parse_lengths, save_json
from ropesearch.models import load_tokenizer, resolve_model
from ropesearch.rope import RopeFactors


@dataclass(frozen=True)
class PasskeyConfig:
    """What one passkey run compares and how: `ropesearch passkey`'s options (see its --help)."""

    compare: Comparison
    lengths: str | Sequence[int]
    depths: str | Sequence[float] = "0.1,0.5,0.9"
    trials: int = 5
    seed: int = 0
    data: str | None = None  # hide the key in these documents' text instead of the filler sentences
    pack: bool = False


def parse_depths(depths: str | Sequence[float]) -> list[float]:
    """--depths as fractions in [0, 1]: "0.1,0.5" -> [0.1, 0.5]."""
    try:
        values = [float(d) for d in (depths.split(",") if isinstance(depths, str) else depths)]
    except ValueError:
        raise RopesearchError(f"--depths must be comma-separated fractions, got {depths!r}") from None
    if not all(0 <= d <= 1 for d in values):
        raise RopesearchError(f"--depths must be fractions in [0, 1] (0 start, 1 end), got {depths!r}")
    return values


@dataclass(frozen=True)
class PasskeyEntry:
    """One row of a passkey comparison: a name, its factors (None: the model unscaled), keys per
    (length, depth), and the model it runs on (None: the one `loaded(None)` gives)."""

    name: str
    factors: RopeFactors | None
    trials: int
    model: str | None = None


def passkey_entries(entries: Sequence[PasskeyEntry], loaded, lengths: Sequence[int], depths: Sequence[float],
                    seed: int = 0, haystack: np.ndarray | None = None, results: dict | None = None,
                    save=None, log=print, on_result=None) -> dict[str, dict]:
    """Each entry's accuracy by (length, depth), in order, on `loaded(entry.model) -> (model, tokenizer)`.
    `results`: earlier (maybe partial) results by name, whose trials are kept; `save(results)` after
    every new trial (a resumable run); a line of accuracies by length goes to `log` as each entry
    finishes, and `on_result(name, result)` follows it."""
    results = dict(results or {})
    for entry in entries:
        model, tokenizer = loaded(entry.model)
        log(f"passkey {entry.name}: {len(lengths)} lengths x {len(depths)} depths x {entry.trials} trials")

        def keep(result, name=entry.name):
            results[name] = result
            if save is not None:
                save(results)

        keep(passkey_accuracy(model, tokenizer, entry.factors, lengths, depths, entry.trials, seed, haystack=haystack,
                              previous=results.get(entry.name), on_cell=keep if save is not None else None))
        accuracy = results[entry.name]["accuracy"]
        log(f"{entry.name:>24}  " + "  ".join(f"{n}:{np.mean([accuracy[f'{n}@{d:g}'] for d in depths]):.0%}"
                                              for n in lengths))
        if on_result:
            on_result(entry.name, results[entry.name])
    return results


def run_passkey(config: PasskeyConfig, json_out: str | Path | None = None, log=print, on_result=None,
                command: str = "") -> dict[str, dict]:
    """Results by factor set; each set's line of accuracies by length goes to `log` as it finishes,
    and `on_result(name, result)` (e.g. a plot) follows it. `json_out` gets them all at the end."""
    c = config
    lengths, depths = parse_lengths(c.lengths), parse_depths(c.depths)
    if c.pack and not c.data:
        raise RopesearchError("--pack joins the documents of --data: give --data too")
    tokenizer = load_tokenizer(resolve_model(c.compare.model))
    haystack, extra = None, {}
    if c.data:
        documents = tokenize_documents(load_documents(c.data), tokenizer)
        (window,) = build_windows(documents, tokenizer, max(lengths), 1, c.seed, pack=c.pack)
        haystack, extra = window.ids, {"data": c.data, "haystack": window.record()}
    loaded, _ = c.compare.load(tokenizer)
    entries = [PasskeyEntry(name, factors, c.trials) for name, factors in c.compare.sets(loaded, max(lengths)).items()]
    results = passkey_entries(entries, lambda spec: (loaded, tokenizer), lengths, depths, c.seed, haystack=haystack,
                              log=log, on_result=on_result)
    if json_out:
        save_json({"passkey": results, "model": c.compare.model, **extra, "command": command}, json_out)
        log(f"wrote {json_out}")
    return results
