"""lm-evaluation-harness on a patched in-memory model: any task by name, plus ropesearch's offline tasks.

The offline tasks live in eval/tasks/ as YAML templates: `ropesearch_passkey` (passkey retrieval
over data generated here) and `ropesearch_ppl` (rolling perplexity over the user's documents).
Their data is written to a working folder and the templates are filled with its path, so no
hub access is needed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ropesearch.errors import RopesearchError
from ropesearch.rope import RopeFactors, patch_rope

TASKS_DIR = Path(__file__).resolve().parents[2] / "eval" / "tasks"
OFFLINE_TASKS = ("ropesearch_passkey", "ropesearch_ppl")


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def prepare_offline_tasks(tasks: Sequence[str], workdir: Path, tokenizer, data: str | None, lengths: Sequence[int],
                          depths: Sequence[float] = (0.1, 0.5, 0.9), trials: int = 2, documents: int = 4,
                          seed: int = 0, doc_tokens: int | None = None) -> Path:
    """Write the data of the offline tasks asked for and their filled-in YAML; returns the include path."""
    from ropesearch.data import load_documents
    from ropesearch.evaluate.passkey import passkey_prompt

    workdir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for task in tasks:
        if task not in OFFLINE_TASKS:
            continue
        if task == "ropesearch_passkey":
            rows = []
            for length in lengths:
                for depth in depths:
                    for _ in range(trials):
                        key = str(int(rng.integers(10_000, 100_000)))
                        prompt = passkey_prompt(tokenizer, length, depth, key)
                        rows.append({"prompt": tokenizer.decode(prompt.ids), "answer": key, "length": length,
                                     "depth": depth})
        else:
            if data is None:
                raise RopesearchError("task ropesearch_ppl needs --data (the documents to score)")
            rows = []
            for document in load_documents(data)[:documents]:
                text = document.text
                if doc_tokens:  # the first doc_tokens tokens of each document
                    from ropesearch.data.tokens import tokenize

                    text = tokenizer.decode(tokenize(tokenizer, text)[:doc_tokens])
                rows.append({"text": text, "name": document.name})
        data_file = _write_jsonl(workdir / f"{task}.jsonl", rows)
        template = (TASKS_DIR / f"{task}.yaml").read_text()
        (workdir / f"{task}.yaml").write_text(template.replace("__DATA_FILE__", str(data_file)))
    return workdir


def run_lm_eval(model, tokenizer, factors: RopeFactors | None, tasks: Sequence[str], workdir: str | Path,
                data: str | None = None, lengths: Sequence[int] = (), max_length: int | None = None,
                limit: int | None = None, batch_size: int = 1, **task_options) -> dict:
    """Evaluate `tasks` with lm-eval on the model as patched with `factors`; returns lm-eval's results."""
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise RopesearchError("lm-eval is not installed: pip install 'ropesearch[lm-eval]'") from None
    original = factors.base.original_context if factors is not None else None
    max_length = max_length or (factors.target_context if factors is not None else None)
    lengths = tuple(lengths) or ((original,) if original else (2048,))
    include = prepare_offline_tasks(tasks, Path(workdir), tokenizer, data, lengths, **task_options)
    manager = TaskManager(include_path=str(include))
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise RopesearchError(f"lm-eval does not know task {unknown[0]!r} (offline tasks: {', '.join(OFFLINE_TASKS)})")
    device = str(next(model.parameters()).device)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, max_length=max_length, batch_size=batch_size, device=device)
    patch = patch_rope(model, factors) if factors is not None else None
    try:
        results = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), task_manager=manager, limit=limit,
                                          log_samples=False, bootstrap_iters=0)
    finally:
        if patch is not None:
            patch.restore()
    return {"results": results["results"], "versions": results.get("versions", {}),
            "n-samples": results.get("n-samples", {}), "max_length": max_length}
