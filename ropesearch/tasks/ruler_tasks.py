"""The RULER-style suite as lm-eval tasks: `ropesearch_ruler` (a group) and `ropesearch_ruler_<task>`.

Data is generated offline (ropesearch.tasks.ruler) into a working folder with filled-in
task files; scores are reported per length, as metrics named by the length (as lm-eval's own
RULER tasks do), so one run can hold several lengths. lm-eval's own `ruler` group (niah_*,
ruler_vt, ...) needs its data from the network (essays, NLTK punkt_tab, SQuAD, HotpotQA) and
`pip install 'lm_eval[ruler]'`; `lm_eval_metadata` gives it the lengths and a tokenizer folder.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from ropesearch import resources
from ropesearch.tasks.ruler import TASKS, RulerSuite, check_lengths, score
from ropesearch.own_files import atomic_write_bytes, atomic_write_text

GROUP = "ropesearch_ruler"
# lm-eval's own RULER: the group and its tasks (they download their data when built)
LM_EVAL_RULER = {"ruler", "niah_single_1", "niah_single_2", "niah_single_3", "niah_multikey_1", "niah_multikey_2",
                 "niah_multikey_3", "niah_multiquery", "niah_multivalue", "ruler_vt", "ruler_cwe", "ruler_fwe",
                 "ruler_qa_squad", "ruler_qa_hotpot"}


def is_ruler_task(name: str) -> bool:
    return name == GROUP or name.removeprefix(GROUP + "_") in TASKS and name.startswith(GROUP + "_")


def without_covered(names: Sequence[str]) -> list[str]:
    """lm-eval task names without duplicates, and without ropesearch_ruler_<task> where the group
    ropesearch_ruler (which holds them all) is asked for: lm-eval refuses a task named twice."""
    names = list(dict.fromkeys(names))
    return [n for n in names if not (GROUP in names and n != GROUP and is_ruler_task(n))]


def tasks_of(names: Sequence[str]) -> list[str]:
    """The suite's task names (niah_single_1, ...) that lm-eval task names ask for."""
    chosen = []
    for name in names:
        for task in (TASKS if name == GROUP else [name.removeprefix(GROUP + "_")] if is_ruler_task(name) else []):
            if task not in chosen:
                chosen.append(task)
    return chosen


def write_ruler_tasks(workdir: Path, tokenizer, names: Sequence[str], lengths: Sequence[int], data: str | None,
                      samples: int = 20, seed: int = 0, max_new_tokens: int | None = None) -> list[str]:
    """Data and filled-in task files for the ropesearch_ruler tasks in `names`; returns the lm-eval task names."""
    check_lengths(lengths)
    suite = RulerSuite(tokenizer, data or "builtin", seed=seed)
    template = resources.file(resources.LM_EVAL_TASKS, "ropesearch_ruler_task.yaml").read_text(encoding="utf-8")
    metrics = "".join(f'  - metric: "{n}"\n    aggregation: !function ropesearch_ruler_utils.mean_present\n'
                      "    higher_is_better: true\n" for n in lengths)
    written = []
    for task in tasks_of(names):
        rows = []
        for index in range(samples):  # by index first, so --limit keeps every length
            for length in lengths:
                sample = suite.sample(task, length, index)
                rows.append({"prompt": sample.prompt, "answers": sample.answers, "metric": sample.metric,
                             "length": length, "lengths": list(lengths), "index": index})
        name = f"{GROUP}_{task}"
        data_file = workdir / f"{name}.jsonl"
        atomic_write_text(data_file, "".join(json.dumps(row) + "\n" for row in rows))
        budget = min(TASKS[task].max_new_tokens, max_new_tokens or TASKS[task].max_new_tokens)
        atomic_write_text(
            workdir / f"{name}.yaml", template.replace("__TASK__", name).replace("__DATA_FILE__", str(data_file))
            .replace("__MAX_NEW_TOKENS__", str(budget)).replace("__METRICS__\n", metrics))
        written.append(name)
    if GROUP in names:
        group = [f"group: {GROUP}", "task:"] + [f"  - {n}" for n in written] + ["aggregate_metric_list:"]
        group += [f'  - metric: "{n}"\n    weight_by_size: false' for n in lengths]
        atomic_write_text(workdir / f"{GROUP}.yaml", "\n".join(group + ["metadata:", "  version: 1.0"]) + "\n")
    utils = resources.file(resources.LM_EVAL_TASKS, "ropesearch_ruler_utils.py")
    atomic_write_bytes(workdir / "ropesearch_ruler_utils.py", utils.read_bytes())
    return written


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    """lm-eval hook: RULER's score under the sample's length, -1 (ignored) under the others."""
    value = score(doc["metric"], results[0], doc["answers"])
    return {str(n): (value if n == doc["length"] else -1.0) for n in doc["lengths"]}


def mean_present(values: list[float]) -> float:
    """lm-eval aggregation: the mean over samples of this length (-1 marks other lengths)."""
    present = [v for v in values if v != -1]
    return sum(present) / len(present) if present else -1.0


def scores_by_length(results: dict) -> dict[str, dict[str, float]]:
    """{task: {length: score}} from lm-eval's results of RULER tasks (ours or lm-eval's own), metrics
    named by length; lengths a task did not run (-1) are left out."""
    table = {}
    for task, metrics in results.items():
        values = {key.split(",")[0]: value for key, value in metrics.items()
                  if key.split(",")[0].isdigit() and isinstance(value, (int, float)) and value != -1}
        if values:
            table[task] = values
    return table


def lm_eval_metadata(tokenizer, workdir: Path, lengths: Sequence[int]) -> dict:
    """What lm-eval's own RULER tasks need to build their data: the lengths and a tokenizer by path."""
    import os
    import tempfile

    folder = workdir / "tokenizer"
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=workdir, prefix=".tokenizer.") as staging:
        tokenizer.save_pretrained(staging)  # then renamed into place: a planted link is replaced, never written through
        for item in sorted(Path(staging).iterdir()):
            os.replace(item, folder / item.name)
    return {"max_seq_lengths": list(lengths), "tokenizer": str(folder), "pretrained": str(folder)}
