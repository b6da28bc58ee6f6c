"""lm-evaluation-harness on a patched in-memory model: any task by name, plus ropesearch's offline tasks.

The offline tasks live in eval/tasks/ as YAML templates (shipped as ropesearch.lm_eval_tasks): `ropesearch_passkey` (passkey retrieval
over data generated here), `ropesearch_ppl` (rolling perplexity over the user's documents) and
`ropesearch_ruler` (the RULER-style suite, ropesearch.tasks.ruler_tasks).
Their data is written to a working folder and the templates are filled with its path, so no
hub access is needed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ropesearch import resources
from ropesearch.errors import RopesearchError
from ropesearch.evaluate.comparison import Comparison
from ropesearch.evaluate.runs import parse_lengths, save_json
from ropesearch.tasks.ruler_tasks import (LM_EVAL_RULER, is_ruler_task, lm_eval_metadata, without_covered,
                                             write_ruler_tasks)
from ropesearch.own_files import atomic_write_text
from ropesearch.rope import RopeFactors
from ropesearch.rope.patching import patch_rope
from ropesearch.data import load_documents, tokenize_documents
from ropesearch.models.loading import rope_base

OFFLINE_TASKS = ("ropesearch_passkey", "ropesearch_ppl")


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in rows))
    return path


def _round_robin(cells: list[list[dict]]) -> list[dict]:
    """Rows of several cells interleaved (one of each cell, then the next of each...), so that any
    prefix lm-eval's --limit keeps holds every cell it can."""
    rows = []
    for index in range(max((len(c) for c in cells), default=0)):
        rows += [cell[index] for cell in cells if index < len(cell)]
    return rows


@dataclass(frozen=True)
class OfflineTasks:
    """What ropesearch's offline lm-eval tasks are made of: passkey prompts at `lengths` x `depths`
    (`trials` keys a cell), `documents` documents of `data` cut to each of `ppl_lengths` (default
    `lengths`) tokens, or to `doc_tokens`, for ropesearch_ppl (never a whole long file), and
    `ruler_samples` RULER samples per task and length (answers capped at `ruler_max_new_tokens`).
    With `limit`, each task holds about that many rows but at least one per length (and depth),
    interleaved so that lm-eval's own limit keeps every length."""

    data: str | None = "builtin"
    lengths: Sequence[int] = ()
    depths: Sequence[float] = (0.1, 0.5, 0.9)
    trials: int = 2
    documents: int = 4
    seed: int = 0
    doc_tokens: int | None = None
    limit: int | None = None
    ppl_lengths: Sequence[int] = ()
    ruler_samples: int = 20
    ruler_max_new_tokens: int | None = None


def prepare_offline_tasks(tasks: Sequence[str], workdir: Path, tokenizer, made: OfflineTasks) -> Path:
    """Write the data of the offline tasks asked for and their filled-in YAML; returns the include path."""
    from ropesearch.tasks.passkey import passkey_prompt

    m = made
    data, lengths, limit = m.data, m.lengths, m.limit
    workdir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(m.seed)
    if any(is_ruler_task(t) for t in tasks):
        # with `limit`: about that many samples per task, one per length at least (lm-eval's limit
        # would keep the first rows, and drop the later lengths)
        samples = m.ruler_samples if limit is None else min(m.ruler_samples, max(1, -(-limit // len(lengths))))
        write_ruler_tasks(workdir, tokenizer, tasks, lengths, data, samples=samples, seed=m.seed,
                          max_new_tokens=m.ruler_max_new_tokens)
    for task in tasks:
        if task not in OFFLINE_TASKS:
            continue
        if task == "ropesearch_passkey":
            cells = [(length, depth) for length in lengths for depth in m.depths]
            per_cell = m.trials if limit is None else max(1, -(-limit // len(cells)))
            grid = []
            for length, depth in cells:
                cell = []
                for _ in range(per_cell):
                    key = str(int(rng.integers(10_000, 100_000)))
                    prompt = passkey_prompt(tokenizer, length, depth, key)
                    cell.append({"prompt": tokenizer.decode(prompt.ids), "answer": key, "length": length,
                                 "depth": depth})
                grid.append(cell)
            rows = _round_robin(grid)
        else:
            if data is None:
                raise RopesearchError("task ropesearch_ppl needs --data (the documents to score)")
            cuts = (m.doc_tokens,) if m.doc_tokens else tuple(m.ppl_lengths or lengths)
            per_cut = m.documents if limit is None else max(1, -(-limit // len(cuts)))
            tokenized = [(d.name, d.ids) for d in tokenize_documents(load_documents(data), tokenizer)]
            grid = []
            for cut in cuts:
                long_enough = [(name, ids) for name, ids in tokenized if len(ids) >= cut][:per_cut]
                if not long_enough:
                    raise RopesearchError(f"task ropesearch_ppl: no document of {data} has {cut} tokens; "
                                          "choose shorter --lengths or other --data")
                grid.append([{"text": tokenizer.decode(ids[:cut]), "name": name, "tokens": cut}
                             for name, ids in long_enough])
            rows = _round_robin(grid)
        data_file = _write_jsonl(workdir / f"{task}.jsonl", rows)
        template = resources.file(resources.LM_EVAL_TASKS, f"{task}.yaml").read_text(encoding="utf-8")
        atomic_write_text(workdir / f"{task}.yaml", template.replace("__DATA_FILE__", str(data_file)))
    return workdir


def quiet_lm_eval(verbose: bool = False) -> None:
    """lm-eval (and datasets) log at INFO to stderr; only errors unless verbose."""
    import logging

    level = logging.INFO if verbose else logging.ERROR
    try:
        from lm_eval.utils import setup_logging

        setup_logging(verbosity=logging.getLevelName(level))
    except ImportError:  # older lm-eval: its logger is still called lm_eval
        pass
    logging.getLogger("lm_eval").setLevel(level)
    try:
        import datasets

        datasets.utils.logging.set_verbosity(level)
        if not verbose:
            datasets.disable_progress_bars()
    except ImportError:
        pass


def run_lm_eval(model, tokenizer, factors: RopeFactors | None, tasks: Sequence[str], workdir: str | Path,
                offline: OfflineTasks = OfflineTasks(), max_length: int | None = None, batch_size: int = 1,
                verbose: bool = False) -> dict:
    """Evaluate `tasks` with lm-eval on the model as patched with `factors`; returns lm-eval's results.

    The offline tasks are made as `offline` says; without its lengths, passkey prompts and RULER
    samples come at the original window and perplexity documents at the extended one. Offline
    tasks (ropesearch_ruler's too) apply `offline.limit` themselves (every length and depth kept);
    registered tasks get it as lm-eval's own limit.
    """
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise RopesearchError("lm-eval is not installed: pip install 'ropesearch[lm-eval]'") from None
    tasks = without_covered(tasks)
    if not tasks:
        raise RopesearchError("--tasks is empty: name lm-eval tasks, e.g. ropesearch_ruler or ropesearch_passkey")

    original = (factors.base if factors is not None else rope_base(model.config)).original_context
    max_length = max_length or (factors.target_context if factors is not None else None)
    # passkey prompts default to the original window; perplexity documents to the extended one
    ppl_lengths = tuple(offline.lengths) or ((max_length,) if max_length else ())
    lengths = tuple(offline.lengths) or (original,)
    limit = offline.limit
    if limit is not None and limit < len(lengths) and any(is_ruler_task(t) for t in tasks) and \
            any(t not in OFFLINE_TASKS and not is_ruler_task(t) for t in tasks):
        # lm-eval's limit, there for its own tasks, also cuts ropesearch_ruler's rows (a sample index's
        # lengths, then the next index's)
        raise RopesearchError(f"--limit {limit} with lm-eval's own tasks keeps fewer RULER rows than the "
                              f"{len(lengths)} lengths: give --limit {len(lengths)} or more, or run "
                              "ropesearch_ruler in a command of its own")
    include = prepare_offline_tasks(tasks, Path(workdir), tokenizer,
                                    replace(offline, lengths=lengths, ppl_lengths=offline.ppl_lengths or ppl_lengths))
    quiet_lm_eval(verbose)
    metadata = None
    if any(is_ruler_task(t) or t in LM_EVAL_RULER for t in tasks):
        max_length = max(max_length or 0, max(lengths))  # RULER's lengths include the answer: no truncation
        if any(t in LM_EVAL_RULER for t in tasks):
            metadata = lm_eval_metadata(tokenizer, Path(workdir), lengths)
            max_length += 64  # lm-eval's own prompts can run a few tokens past the length: keep them whole
    manager = TaskManager(include_path=str(include), metadata=metadata)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise RopesearchError(f"lm-eval does not know task {unknown[0]!r} (offline tasks: {', '.join(OFFLINE_TASKS)}, "
                              "ropesearch_ruler and ropesearch_ruler_<task>)")
    device = str(next(model.parameters()).device)
    lm = pinned_hflm(HFLM)(pretrained=model, tokenizer=tokenizer, max_length=max_length, batch_size=batch_size,
                           device=device)
    patch = patch_rope(model, factors) if factors is not None else None
    lm.rope_patch = patch
    try:
        registered = [t for t in tasks if t not in OFFLINE_TASKS and not is_ruler_task(t)]
        try:
            results = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), task_manager=manager,
                                              limit=limit if registered else None, log_samples=False,
                                              bootstrap_iters=0)
        except Exception as exc:
            if any(t in LM_EVAL_RULER for t in tasks):  # its data comes from the network and NLTK at build time
                raise RopesearchError(f"lm-eval's own RULER tasks could not be built ({type(exc).__name__}: "
                                      f"{str(exc).splitlines()[0] if str(exc) else ''}); they need "
                                      "`pip install 'lm_eval[ruler]'` and the network; offline, use "
                                      "--tasks ropesearch_ruler") from None
            raise
    finally:
        if patch is not None:
            patch.restore()
    return {"results": results["results"], "versions": results.get("versions", {}),
            "n-samples": results.get("n-samples", {}), "max_length": max_length,
            "generation_context_tokens": sorted(set(lm.context_tokens))}


def pinned_hflm(hflm_class):
    """HFLM whose generations pin the RoPE factors to prompt + new tokens (RopePatch.pin), as
    `ropesearch passkey` and `ruler` do, so a prompt at or below the original window that runs past
    it keeps one factor set; it records the prompt lengths it generated from."""

    class PinnedHFLM(hflm_class):
        rope_patch = None

        @property
        def context_tokens(self) -> list[int]:
            return self.__dict__.setdefault("_context_tokens", [])

        def _model_generate(self, context, max_length, stop, **generation_kwargs):
            self.context_tokens.append(int(context.shape[1]))
            if self.rope_patch is not None:
                self.rope_patch.pin(max_length)
            try:
                return super()._model_generate(context, max_length, stop, **generation_kwargs)
            finally:
                if self.rope_patch is not None:
                    self.rope_patch.pin(None)

    return PinnedHFLM


@dataclass(frozen=True)
class LmEvalConfig:
    """What one lm-eval run compares and how: `ropesearch lm-eval`'s options (see its --help)."""

    compare: Comparison
    tasks: str | Sequence[str]
    data: str = "builtin"
    lengths: str | Sequence[int] | None = None
    limit: int | None = None
    doc_tokens: int | None = None
    workdir: str | Path = "runs/lm-eval"
    verbose: bool = False


def compare_lm_eval(config: LmEvalConfig, json_out: str | Path | None = None, log=print,
                    command: str = "") -> dict[str, dict]:
    """lm-eval's results for every factor set (each in its own working folder), a line per task to `log`."""
    c = config
    loaded, tokenizer = c.compare.load()
    tasks = [t.strip() for t in c.tasks.split(",") if t.strip()] if isinstance(c.tasks, str) else list(c.tasks)
    lengths = parse_lengths(c.lengths) if c.lengths else ()
    sets = c.compare.sets(loaded, max(lengths) if lengths else None)
    results = {}
    for name, factors in tqdm(sets.items(), desc="lm-eval", unit="model", total=len(sets), disable=len(sets) < 2):
        offline = OfflineTasks(c.data, lengths, limit=c.limit, doc_tokens=c.doc_tokens)
        results[name] = run_lm_eval(loaded, tokenizer, factors, tasks, Path(c.workdir) / name.replace("/", "_"),
                                    offline, verbose=c.verbose)
        for task, metrics in results[name]["results"].items():
            shown = ", ".join(f"{k.split(',')[0]} {v:.4g}" for k, v in metrics.items()  # -1: a length not run
                              if isinstance(v, (int, float)) and "stderr" not in k and k != "sample_len" and v != -1)
            log(f"{name:>24}  {task}: {shown}")
    if json_out:
        save_json({"lm_eval": results, "model": c.compare.model, "command": command}, json_out)
        log(f"wrote {json_out}")
    return results
