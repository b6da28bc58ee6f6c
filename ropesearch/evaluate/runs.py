"""Evaluation jobs as the CLI runs them: load once, sample windows (`WindowSpec`, `setup`), which
documents a run read, where it ran, and the JSON it saves."""

from __future__ import annotations

import datetime as _dt
import json
import platform
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ropesearch import __version__
from ropesearch.data import Window, build_windows, document_of, load_documents, tokenize_documents
from ropesearch.errors import RopesearchError
from ropesearch.own_files import atomic_write_text
from ropesearch.models import (config_of, dtype_of, load_config, load_for_backend, load_tokenizer, resolve_model,
                               rope_base)
from ropesearch.rope import RopeBase
from ropesearch.units import parse_token_list
from ropesearch.validate import ListOf, conform, read_json


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
    """Comma-separated token counts such as 16384,32k,1M (see ropesearch.units)."""
    return parse_token_list(text)


@dataclass(frozen=True)
class WindowSpec:
    """Which text a run scores: `samples` windows (seeded) of the longest length from `data`.

    `offset`: where a window starts in its document (start or random); `text_field` and `split`: a
    dataset's; `pack` joins documents into windows; `exclude` names documents to leave out (held
    out of a search); `documents` (already loaded Document objects) replaces reading `data`;
    `needle` puts a needle in each window (--needle scoring)."""

    data: str = "builtin"
    samples: int = 4
    seed: int = 0
    offset: str = "start"
    text_field: str = "text"
    split: str = "test"
    pack: bool = False
    exclude: Sequence[str] = ()
    documents: list | None = None
    needle: bool = False


def setup(model: str, text: WindowSpec, max_length: int, device: str | None = None, dtype=None,
          original_context: int | None = None, loaded=None, backend: str = "torch",
          config_only: bool = False) -> EvalSetup:
    """Load model and tokenizer (or take `loaded` = (model, tokenizer)) and sample the windows of
    `text` at `max_length` tokens. For the vLLM backend, or with `config_only` (Ray workers load the
    model themselves), only the model's config is loaded."""
    if loaded is None:
        ref = resolve_model(model)
        tokenizer = load_tokenizer(ref)
    else:
        loaded, tokenizer = loaded
    documents = text.documents
    if documents is None:
        documents = load_documents(text.data, text_field=text.text_field, split=text.split)
    documents = tokenize_documents(documents, tokenizer)
    if text.exclude:
        documents = [d for d in documents if d.name not in set(text.exclude)]
        if not documents:
            raise RopesearchError(f"every document of {text.data} was excluded: nothing is held out")
    windows = build_windows(documents, tokenizer, max_length, text.samples, text.seed, needle=text.needle,
                            offset=text.offset, pack=text.pack)
    if loaded is None:
        loaded = load_config(ref) if config_only else load_for_backend(ref, backend, dtype=dtype, device=device)
    options = {"samples": text.samples, "seed": text.seed, "needle": text.needle, "offset": text.offset,
               "pack": text.pack, "excluded_documents": sorted(text.exclude)}
    return EvalSetup(model, text.data, loaded, tokenizer, rope_base(config_of(loaded), original_context), windows,
                     options)


def describe_windows(run: EvalSetup, heldout_of: tuple[str, ...] = (), most: int = 4) -> str:
    """Which text a table scores, in one line: the same factors score differently on other documents
    (a search's own windows against held-out ones), so a number needs its windows beside it."""
    names = [w.name for w in run.windows]
    shown = ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")
    packed = {part[0] for w in run.windows for part in w.parts}
    if packed:
        shown += f" (packed from {len(packed)} documents)"
    plural = lambda n, word: f"{n} {word}{'s' if n != 1 else ''}"  # noqa: E731
    where = (f"held out of {' and '.join(heldout_of)} ({plural(len(run.options.get('excluded_documents', [])), 'document')} "
             "left out)" if heldout_of else "not held out of any search (--heldout-of RUN leaves a run's documents out)")
    return (f"scored {plural(len(names), 'window')} of {run.data_spec} "
            f"(offset {run.options.get('offset', 'start')}, seed {run.options.get('seed', 0)}): {shown}; {where}")


def searched_documents(run_dir: str | Path) -> list[str]:
    """The documents a run used: a search run's windows (packed ones with all their parts), or
    for a plan's run directory every document its search and fine-tuning stages read."""
    run_dir = Path(run_dir)
    if (run_dir / "plan.json").is_file():
        used = set()
        for done in sorted(run_dir.glob("*/done.json")):
            fix = "give another --heldout-of, or rerun that stage with run --resume"
            record = read_json(done, "stage record", fix, expect=dict)
            conform(record, {"outputs?": {"search_dir?": (str, None), "documents?": ListOf(str)}},
                    f"stage record {done}", fix)
            outputs = record.get("outputs", {})
            if outputs.get("search_dir"):
                # the stage's own folder: the recorded path is relative to where the plan ran
                used.update(searched_documents(done.parent / Path(outputs["search_dir"]).name))
            used.update(outputs.get("documents", []))
        return sorted(used)
    config = run_dir / "config.json"
    if not config.is_file():
        raise RopesearchError(f"{run_dir} is not a search run or plan run directory (no config.json or plan.json)")
    fix = "give another --heldout-of, or restore the file"
    saved = read_json(config, "search config", fix, expect=dict)
    windows = saved.get("windows")
    if not isinstance(windows, list) or not all(isinstance(w, str) for w in windows):
        raise RopesearchError(f"{config} names no searched windows (field windows): not a search run's config")
    conform(saved, {"window_parts?": ListOf(ListOf({"document": str}))}, f"search config {config}", fix)
    used = {document_of(name) for name in windows} if "window_parts" not in saved else set()
    for parts in saved.get("window_parts", []):
        used.update(part["document"] for part in parts)
    if not used and saved.get("window_parts"):
        used = {document_of(name) for name in windows}
    return sorted(used)


def window_parts(windows: Sequence[Window]) -> dict:
    """{"window_parts": ...} for packed windows (every document, offset and token count), else {}."""
    if not any(w.parts for w in windows):
        return {}
    return {"window_parts": [w.record().get("parts", []) for w in windows]}


def prefix_windows(windows: list[Window], length: int) -> list[Window]:
    return [w.prefix(length) for w in windows]


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


def _plain(value):
    """numpy scalars (lm-eval returns them) as JSON numbers."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def save_json(document: dict, path: str | Path) -> Path:
    atomic_write_text(path, json.dumps(document, indent=2, default=_plain) + "\n")
    return Path(path)
