"""Plan files: a model, its data, and stages in order, validated into typed dataclasses.

    name: smollm2-progressive
    model: smollm2-135m
    data: {search: books/, finetune: books/, evaluate: builtin}
    stages:
      - search: {target: 32768, space: fast, time_minutes: 3}
      - finetune: {length: 32768, steps: 200, global_batch: 8, lr: 2.0e-5}
      - search: {target: 131072, relative: true, space: fast, time_minutes: 4}
      - recover-short: {lengths: [8192, 16384], high: 1.25, time_minutes: 3}
      - export: {formats: [hf, vllm, csv]}
      - evaluate: {lengths: [8192, 16384, 32768, 65536, 131072], methods: [ntk, yarn], passkey: true}
      - report: {}

A `passkey: {lengths: [...], trials: 2, baseline_trials: 1}` stage runs passkey retrieval on its own,
resumable by (length, depth) across sessions: for lengths where one trial is a long prefill.
Every kind of stage, its settings and how it runs: `STAGES` in stages.py.

Optional: `pack: true` joins documents into windows (for targets longer than any document);
`holdout: {fraction: 0.4, seed: 0}` sets aside a seeded share of the documents (by characters)
that no search or fine-tuning stage reads and the evaluate stage scores on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ropesearch import resources
from ropesearch.errors import RopesearchError
from ropesearch.pipeline.stages import STAGES
from ropesearch.units import parse_token_list, parse_tokens
from ropesearch.validate import check_device, check_fields


@dataclass(frozen=True)
class Stage:
    kind: str
    name: str  # folder name in the run directory: NN-kind
    settings: Any


@dataclass(frozen=True)
class Holdout:
    fraction: float = 0.3
    seed: int = 0


@dataclass(frozen=True)
class Plan:
    name: str
    model: str
    data: dict[str, str]  # search, finetune, evaluate -> data spec
    stages: tuple[Stage, ...]
    device: str | None = None
    description: str = ""
    extra: dict = field(default_factory=dict)
    pack: bool = False  # windows joined from several documents (search, recovery, evaluation)
    holdout: Holdout | None = None


def _settings_of(cls: type, values: Any, where: str, label: str, checks=lambda settings: []):
    values = {} if values is None else values
    if not isinstance(values, dict):
        raise RopesearchError(f"{where}: settings of a {label} stage must be a mapping" if label in STAGES
                              else f"{where} must be a mapping")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise RopesearchError(f"{where}: unknown {label} setting {unknown[0]!r} (known: {', '.join(sorted(known))})")
    values = dict(values)
    for key in ("target", "length"):  # token counts may be written 32k, 1M
        if isinstance(values.get(key), (str, int)):  # ints too: bounded like the rest
            values[key] = parse_tokens(values[key], f"{where}: {key}")
    for key in ("lengths", "passkey_lengths"):
        if isinstance(values.get(key), list) and any(isinstance(v, str) for v in values[key]):
            values[key] = tuple(parse_token_list(values[key], f"{where}: {key}"))
    values = check_fields(cls, values, f"{where}:")
    try:
        settings = cls(**values)
    except TypeError as exc:
        raise RopesearchError(f"{where}: {exc}") from None
    problem = next((message for ok, message in checks(settings) if not ok), None)
    if problem:
        raise RopesearchError(f"{where}: {problem}")
    return settings


def _holdout_checks(h: Holdout) -> list[tuple[bool, str]]:
    return [(0 < h.fraction < 1, f"holdout.fraction must be a number strictly between 0 and 1, got {h.fraction}"),
            (h.seed >= 0, "holdout.seed must be >= 0")]


def plan_from_dict(data: Any, where: str = "plan") -> Plan:
    if not isinstance(data, dict):
        raise RopesearchError(f"{where} must be a YAML mapping")
    allowed = {"name", "model", "data", "stages", "device", "description", "pack", "holdout"}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise RopesearchError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(allowed))})")
    for key in ("name", "model", "stages"):
        if key not in data:
            raise RopesearchError(f"{where}: missing key {key!r}")
    for key in ("name", "model", "description", "device"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise RopesearchError(f"{where}: {key} must be a string, got {data[key]!r}")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", data["name"]):
        raise RopesearchError(f"{where}: name {data['name']!r} must be letters, digits, '.', '_' or '-' "
                              "(it names the run directory)")
    check_device(data.get("device"), flag=f"{where}: device")
    raw_data = data.get("data", "builtin")
    if isinstance(raw_data, str):
        sources = {"search": raw_data, "finetune": raw_data, "evaluate": raw_data}
    elif isinstance(raw_data, dict) and set(raw_data) <= {"search", "finetune", "evaluate"}:
        default = raw_data.get("search", "builtin")
        sources = {k: raw_data.get(k, default) for k in ("search", "finetune", "evaluate")}
    else:
        raise RopesearchError(f"{where}: data must be a data spec or a mapping of search/finetune/evaluate")
    for role, spec in sources.items():
        if not isinstance(spec, str) or not spec:
            raise RopesearchError(f"{where}: data.{role} must be a data spec (a folder, a file, builtin or a dataset "
                                  f"name), got {spec!r}")
    if not isinstance(data["stages"], list) or not data["stages"]:
        raise RopesearchError(f"{where}: stages must be a non-empty list")
    stages = []
    for number, entry in enumerate(data["stages"], 1):
        if not isinstance(entry, dict) or len(entry) != 1:
            raise RopesearchError(f"{where}: stage {number} must be one '{{kind: settings}}' mapping")
        kind, values = next(iter(entry.items()))
        if kind not in STAGES:
            raise RopesearchError(f"{where}: stage {number} has unknown kind {kind!r} (known: {', '.join(STAGES)})")
        settings = _settings_of(STAGES[kind].settings, values, f"{where}: stage {number} ({kind})", kind,
                                STAGES[kind].checks)
        stages.append(Stage(kind, f"{number:02d}-{kind}", settings))
    _check_order(stages, where)
    pack = data.get("pack", False)
    if not isinstance(pack, bool):
        raise RopesearchError(f"{where}: pack must be true or false, got {pack!r}")
    holdout = None
    if data.get("holdout") is not None:
        holdout = _settings_of(Holdout, data["holdout"], f"{where}: holdout", "holdout", _holdout_checks)
    return Plan(name=str(data["name"]), model=str(data["model"]), data=sources, stages=tuple(stages),
                device=data.get("device"), description=str(data.get("description", "")), pack=pack, holdout=holdout)


def _check_order(stages: list[Stage], where: str) -> None:
    have_factors = False
    for stage in stages:
        kind = STAGES[stage.kind]
        if kind.needs_factors(stage.settings) and not have_factors:
            raise RopesearchError(f"{where}: stage {stage.name} needs factors from an earlier search stage")
        have_factors = have_factors or kind.gives_factors


def load_plan(path: str | Path) -> Plan:
    """A plan by file path, or by the name of a shipped plan (pocket-quickstart, ...) from any directory."""
    data, where = resources.load_yaml(path, resources.PLANS)
    return plan_from_dict(data, where=f"plan {where}")
