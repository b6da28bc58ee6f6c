"""Evaluation jobs as the CLI runs them: load once, sample windows, score, tabulate, save JSON."""

from __future__ import annotations

import datetime as _dt
import json
import platform
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ropesearch import __version__
from ropesearch.data import Window, document_of, load_documents, needle_windows, sample_windows, tokenize_documents
from ropesearch.errors import RopesearchError
from ropesearch.evaluate import make_evaluator
from ropesearch.export.factor_file import atomic_write_text, check_fits, load_factors
from ropesearch.models import config_of, dtype_of, load_config, load_for_backend, load_tokenizer, resolve_model, rope_base
from ropesearch.rope import RopeBase, RopeFactors, make_factors


@dataclass
class EvalSetup:
    """A loaded model, its RoPE, and evaluation windows at the longest length asked for."""

    model_spec: str
    data_spec: str
    model: object  # the loaded model; for the vLLM backend only its config
    tokenizer: object
    base: RopeBase
    windows: list[Window]
    options: dict = field(default_factory=dict)


def parse_lengths(text: str | Sequence[int]) -> list[int]:
    if not isinstance(text, str):
        return sorted({int(x) for x in text})
    try:
        lengths = sorted({int(x.strip().lower().replace("k", "")) * (1024 if "k" in x.lower() else 1)
                          for x in text.split(",") if x.strip()})
    except ValueError:
        raise RopesearchError(f"--lengths must be comma-separated token counts like 16384,32k, got {text!r}") from None
    if not lengths or lengths[0] < 2:
        raise RopesearchError(f"--lengths must be token counts >= 2, got {text!r}")
    return lengths


def setup(model: str, data: str, max_length: int, samples: int = 4, seed: int = 0, needle: bool = False,
          offset: str = "start", text_field: str = "text", split: str = "test", device: str | None = None,
          dtype=None, original_context: int | None = None, exclude: Sequence[str] = (), loaded=None,
          backend: str = "torch", config_only: bool = False) -> EvalSetup:
    """Load model and tokenizer (or take `loaded` = (model, tokenizer)) and sample windows.

    `exclude` names documents to leave out. For the vLLM backend, or with `config_only` (Ray
    workers load the model themselves), only the model's config is loaded.
    """
    if loaded is None:
        ref = resolve_model(model)
        tokenizer = load_tokenizer(ref)
    else:
        loaded, tokenizer = loaded
    documents = tokenize_documents(load_documents(data, text_field=text_field, split=split), tokenizer)
    if exclude:
        documents = [d for d in documents if d.name not in set(exclude)]
        if not documents:
            raise RopesearchError(f"every document of {data} was excluded: nothing is held out")
    if needle:
        windows = needle_windows(documents, tokenizer, max_length, samples, seed)
    else:
        windows = sample_windows(documents, max_length, samples, seed, offset)
    if loaded is None:
        loaded = load_config(ref) if config_only else load_for_backend(ref, backend, dtype=dtype, device=device)
    options = {"samples": samples, "seed": seed, "needle": needle, "offset": offset,
               "excluded_documents": sorted(exclude)}
    return EvalSetup(model, data, loaded, tokenizer, rope_base(config_of(loaded), original_context), windows, options)


def searched_documents(run_dir: str | Path) -> list[str]:
    """The documents a search run scored its candidates on (from its config.json)."""
    config = Path(run_dir) / "config.json"
    if not config.is_file():
        raise RopesearchError(f"{run_dir} is not a search run directory (no config.json)")
    return sorted({document_of(name) for name in json.loads(config.read_text()).get("windows", [])})


def prefix_windows(windows: list[Window], length: int) -> list[Window]:
    return [w if w.length == length else Window(w.name, w.ids[:length], w.scored) for w in windows]


def environment(model) -> dict:
    """Where and how scores were made: a loaded model's device and dtype (a config alone, as the
    vLLM backend holds: the default device and dtype, which the engine uses)."""
    import torch
    import transformers

    if isinstance(model, torch.nn.Module):
        device = next(model.parameters()).device
    else:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()})",
        "dtype": str(dtype_of(model)).replace("torch.", ""),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "ropesearch": __version__,
        "python": sys.version.split()[0],
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _key(factors: RopeFactors) -> tuple:
    return (factors.long_factor, factors.short_factor, factors.attention_factor, factors.start_tokens,
            factors.dynamic_factor)


def baseline_table(run: EvalSetup, lengths: Sequence[int], methods: Sequence[str] = (),
                   factor_files: Sequence[str] = (), scale: float | None = None, fixed_scale: bool = False,
                   workers=None, **evaluator_options) -> dict:
    """Perplexity by length for baseline methods and factor files, in as few passes as possible.

    A method runs at scale length/original at each length unless `scale` fixes it. Identical
    factor sets (a fixed-scale method at every length, every method at or below the original
    window) are scored once, and sets with the same lengths share batched passes.
    fixed_scale without a scale: every length uses the factors made for the longest one.
    `workers` (WorkerOptions): score on a pool of Ray workers (see ropesearch.evaluate.workers).
    """
    if fixed_scale and scale is None:
        scale = max(1.0, max(lengths) / run.base.original_context)
    evaluator = make_evaluator(run.model, model_spec=run.model_spec, max_length=max(lengths), workers=workers,
                               **evaluator_options)
    files = {Path(f).name: load_factors(f) for f in factor_files}
    for name, factors in files.items():
        check_fits(factors, run.base, source=f"factor file {name}")
    unique: dict[tuple, tuple[RopeFactors, set[int]]] = {}
    owner: dict[tuple[str, int], tuple] = {}
    for name in list(methods) + list(files):
        for length in lengths:
            if name in files:
                factors = files[name]
            else:
                length_scale = scale or max(1.0, length / run.base.original_context)
                factors = make_factors(name, run.base, 1.0 if name == "none" else length_scale)
            key = _key(factors)
            unique.setdefault(key, (factors, set()))[1].add(length)
            owner[name, length] = key
    by_lengths: dict[tuple[int, ...], list[tuple]] = {}
    for key, (_, key_lengths) in unique.items():
        by_lengths.setdefault(tuple(sorted(key_lengths)), []).append(key)
    scores = {}
    try:
        for key_lengths, keys in by_lengths.items():
            windows = prefix_windows(run.windows, max(key_lengths))
            scores.update(zip(keys, evaluator.score([unique[k][0] for k in keys], windows, key_lengths)))
    finally:
        if workers is not None and evaluator is not workers:  # a pool we started (not one handed in)
            evaluator.close()
    for name, key in owner.items():
        if scores[key].failed:
            raise RopesearchError(f"{name[0]} could not be scored at {name[1]} tokens: {scores[key].failed}")
    names = list(methods) + list(files)
    return {
        "model": run.model_spec,
        "data": run.data_spec,
        "windows": [w.name for w in run.windows],
        "options": run.options | {"scale": scale or "length / original window"},
        "original_context": run.base.original_context,
        "lengths": list(lengths),
        "ppl": {n: {str(length): scores[owner[n, length]].ppl[length] for length in lengths} for n in names},
        "seconds": {n: sum(scores[k].seconds for k in {owner[n, length] for length in lengths}) for n in names},
        "environment": environment(run.model),
    }


def format_table(table: dict) -> str:
    """Rows = lengths, columns = methods; perplexity with 2 decimals (4 significant digits above 1000)."""
    names = list(table["ppl"])
    original = table.get("original_context")
    header = ["length", "scale"] + names
    rows = []
    for length in table["lengths"]:
        cells = [str(length), f"{length / original:g}" if original else ""]
        for name in names:
            value = table["ppl"][name].get(str(length))
            cells.append("-" if value is None else (f"{value:.4g}" if value >= 1000 else f"{value:.2f}"))
        rows.append(cells)
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def comparison_sets(model, methods: str | Sequence[str], factor_files: Sequence[str], scale: float | None,
                    longest: int | None) -> dict[str, RopeFactors | None]:
    """Named factor sets to compare on one model: baselines ("none" leaves it unpatched) and files."""
    base = rope_base(model.config)
    names = [m.strip() for m in methods.split(",") if m.strip()] if isinstance(methods, str) else list(methods)
    scale = scale or max(1.0, (longest or base.original_context) / base.original_context)
    sets: dict[str, RopeFactors | None] = {}
    for name in names:
        sets[name] = None if name == "none" else make_factors(name, base, scale)
    for path in factor_files:
        sets[Path(path).name] = load_factors(path, expect=base)
    if not sets:
        raise RopesearchError("nothing to compare: give --methods and/or --factors")
    return sets


def _plain(value):
    """numpy scalars (lm-eval returns them) as JSON numbers."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def save_json(document: dict, path: str | Path) -> Path:
    atomic_write_text(path, json.dumps(document, indent=2, default=_plain) + "\n")
    return Path(path)
